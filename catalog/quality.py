"""The data-quality report's operations on the catalog (admin, staff API and the engine's adapter share them):
store match scores, and the three bulk actions a reviewer takes on a selection of MatchScore rows."""

from __future__ import annotations

from collections.abc import Sequence

from django.db import transaction

from catalog.models import MatchScore, Product
from mmsearch.adapter import MatchRow

ACTIONS = ("mark_reviewed", "accept_caption", "deactivate")


def store_match_scores(rows: Sequence[MatchRow]) -> dict[str, int]:
    """Upsert one MatchScore per (product, model_key) for the rows whose sku exists and whose title is unchanged
    (a report of an older copy of the catalog must not score today's text). A score that changes clears the
    review mark; an unchanged one keeps it."""
    counts = {"stored": 0, "unknown_sku": 0, "title_changed": 0}
    products = {sku: (pk, title) for pk, sku, title in
                Product.objects.filter(sku__in=[r.sku for r in rows]).values_list("pk", "sku", "title")}
    with transaction.atomic():
        for r in rows:
            found = products.get(r.sku)
            if found is None:
                counts["unknown_sku"] += 1
                continue
            if found[1].strip() != r.title.strip():
                counts["title_changed"] += 1
                continue
            obj, created = MatchScore.objects.get_or_create(
                product_id=found[0], model_key=r.model_key,
                defaults={"score": r.score, "caption": r.caption, "caption_model_key": r.caption_model_key})
            if not created:
                if abs(obj.score - r.score) > 1e-6:
                    obj.reviewed = False
                obj.score, obj.caption, obj.caption_model_key = r.score, r.caption, r.caption_model_key
                obj.save(update_fields=["score", "caption", "caption_model_key", "reviewed", "updated_at"])
            counts["stored"] += 1
    return counts


def mark_reviewed(queryset) -> int:
    """Mark these scores reviewed; returns how many changed."""
    return queryset.filter(reviewed=False).update(reviewed=True)


def accept_caption(queryset) -> int:
    """Give each product the proposed caption as its title (the old title is kept on the score row), and mark
    the score reviewed; rows without a caption are left alone. Returns how many products changed. (Saving the
    product refreshes its full-text vector and queues its re-embedding: catalog.signals.)"""
    changed = 0
    with transaction.atomic():
        for ms in queryset.select_related("product").exclude(caption=""):
            product = ms.product
            if product.title == ms.caption:
                continue
            ms.previous_title, ms.reviewed = product.title, True
            product.title = ms.caption[: Product._meta.get_field("title").max_length]
            product.save()
            ms.save(update_fields=["previous_title", "reviewed", "updated_at"])
            changed += 1
    return changed


def deactivate(queryset) -> int:
    """Take these scores' products off sale (active = False) and mark the scores reviewed; returns how many
    products changed (search reads `active`, so nothing needs re-embedding)."""
    with transaction.atomic():
        ids = list(queryset.values_list("pk", flat=True))
        products = MatchScore.objects.filter(pk__in=ids).values("product_id")
        changed = Product.objects.filter(pk__in=products, active=True).update(active=False)
        MatchScore.objects.filter(pk__in=ids).update(reviewed=True)
    return changed


def apply_action(action: str, queryset) -> int:
    """Run one of ACTIONS on a MatchScore queryset."""
    if action not in ACTIONS:
        raise ValueError(f"action {action!r}: use one of {', '.join(ACTIONS)}")
    return {"mark_reviewed": mark_reviewed, "accept_caption": accept_caption, "deactivate": deactivate}[action](queryset)
