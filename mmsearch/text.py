"""The one definition of a product's text as the models see it (training, indexing, evaluation, search)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

# Attribute keys whose values already appear in the category path or add noise to the text.
SKIPPED_ATTRIBUTES = {"year"}


def product_text(
    title: str,
    category: str | None = None,
    attributes: Mapping[str, object] | None = None,
    tags: Iterable[str] = (),
    captions: Iterable[str] = (),
) -> str:
    """'Title. Category > Path. key: value, key: value. tags. captions' with empty parts left out (captions: the
    accepted ones, each a sentence about what the product's image shows)."""
    parts = [title.strip()]
    if category:
        parts.append(" > ".join(p for p in category.split("/") if p))
    if attributes:
        attrs = ", ".join(
            f"{k.replace('_', ' ')}: {v}" for k, v in attributes.items() if k not in SKIPPED_ATTRIBUTES and v not in ("", None)
        )
        if attrs:
            parts.append(attrs)
    tags = [t for t in tags if t]
    if tags:
        parts.append(", ".join(tags))
    parts += [c.strip() for c in captions if c and c.strip()]
    return ". ".join(p for p in parts if p)
