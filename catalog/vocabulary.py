"""The merchant's tag vocabulary as the tagger sees it, and a starting vocabulary made from a catalog's own data.

    vocabulary()                         # [VocabGroup, ...] of every TagGroup, its tags and synonyms
    create_from_catalog(["colour"], [1]) # TagGroups + Tags from attribute values and category levels

A group's `version` (a hash of its name, templates, tags and synonyms) changes with any edit that changes the
tagger's scores, so suggestions made before an edit keep the version they were made with.
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from django.db import transaction
from django.utils.text import slugify

from catalog.models import Product, Tag, TagGroup
from mmsearch.plugins.base import DEFAULT_TAG_TEMPLATES, VocabGroup, VocabTag

# Attributes and category levels with more distinct values than this are identifiers, not a vocabulary.
MAX_VALUES = 200


def template_problem(template: str) -> str | None:
    """What is wrong with a tag template, or None: it must name {tag} and may name {group}, nothing else."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        return f"template {template!r} is not a format string: {exc}"
    if "tag" not in fields:
        return f"template {template!r} must contain {{tag}}"
    if fields - {"tag", "group"}:
        return f"template {template!r} may use only {{tag}} and {{group}}, not {', '.join(sorted(fields - {'tag', 'group'}))}"
    return None


def vocabulary(group_slugs: Iterable[str] | None = None) -> list[VocabGroup]:
    """Every tag group (or those named) with its tags, ordered by slug, as the tagger's contract types."""
    groups = TagGroup.objects.order_by("slug").prefetch_related("tags")
    if group_slugs is not None:
        groups = groups.filter(slug__in=list(group_slugs))
    out = []
    for group in groups:
        tags = tuple(
            VocabTag(t.slug, t.name, tuple(s for s in t.synonyms if s)) for t in sorted(group.tags.all(), key=lambda t: t.slug)
        )
        if len(tags) >= 2:  # one softmax per group: a single tag would always score 1
            out.append(VocabGroup(group.slug, group.name, tags, tuple(group.templates) or DEFAULT_TAG_TEMPLATES))
    return out


@dataclass
class Created:
    groups: int = 0
    tags: int = 0
    skipped: list[str] | None = None


def attribute_values(keys: Sequence[str] | None = None) -> dict[str, list[str]]:
    """{attribute: its distinct values} over the active products (every attribute when keys is None)."""
    found: dict[str, Counter] = {}
    for attrs in Product.objects.filter(active=True).values_list("attributes", flat=True).iterator(chunk_size=2000):
        if isinstance(attrs, dict):
            for key, value in attrs.items():
                if (keys is None or key in keys) and value not in (None, "") and not isinstance(value, (dict, list)):
                    found.setdefault(key, Counter())[str(value)] += 1
    return {key: sorted(counter) for key, counter in sorted(found.items())}


def category_level_values(levels: Sequence[int]) -> dict[int, list[str]]:
    """{level (1 = top): the distinct category names at that depth} over the active products."""
    paths = Product.objects.filter(active=True, category__isnull=False).values_list("category__path", flat=True).distinct()
    out: dict[int, set[str]] = {level: set() for level in levels}
    for path in paths:
        parts = path.split("/")
        for level in levels:
            if level <= len(parts):
                out[level].add(parts[level - 1])
    return {level: sorted(values) for level, values in out.items()}


@transaction.atomic
def create_from_catalog(attributes: Sequence[str] | None = None, category_levels: Sequence[int] = (),
                        max_values: int = MAX_VALUES) -> Created:
    """Groups and tags from the catalog's attribute values (slug = the attribute key, name = the key in words)
    and category levels (slug category-level-N); existing groups gain missing tags, nothing is removed.

    Values whose slugs collide (e.g. 'Navy Blue' and 'Navy-Blue') become one tag named by the first spelling
    in sorted order, the others kept as its synonyms."""
    created = Created(skipped=[])
    sources: list[tuple[str, str, list[str]]] = []
    for key, values in attribute_values(attributes).items():
        sources.append((key, key.replace("_", " "), values))
    for level, values in category_level_values(category_levels).items():
        sources.append((f"category-level-{level}", f"category level {level}", values))
    for slug, name, values in sources:
        if not 2 <= len(values) <= max_values:
            created.skipped.append(f"{slug} ({len(values)} values)")
            continue
        group, made = TagGroup.objects.get_or_create(slug=slugify(slug) or slug, defaults={"name": name})
        created.groups += made
        by_slug: dict[str, list[str]] = {}
        for value in values:
            by_slug.setdefault(slugify(value) or value.lower(), []).append(value)
        existing = set(group.tags.values_list("slug", flat=True))
        for tag_slug, spellings in sorted(by_slug.items()):
            if tag_slug in existing:
                continue
            Tag.objects.create(group=group, slug=tag_slug, name=spellings[0], synonyms=spellings[1:])
            created.tags += 1
    return created
