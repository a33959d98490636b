"""Deciding on tag suggestions in bulk: one UPDATE and one refresh of the products' texts, not one per row."""

from __future__ import annotations

from django.db import transaction

from catalog.models import ProductTag
from catalog.signals import text_changed


@transaction.atomic
def set_status(queryset, status: str) -> int:
    """Accept or reject these product tags; accepted tags become facets and filters and join the full-text
    vector and product texts at once (a rejected model suggestion is remembered: the same model_key never
    suggests it again). Returns rows changed."""
    if status not in (ProductTag.Status.ACCEPTED, ProductTag.Status.REJECTED):
        raise ValueError(f"status must be accepted or rejected, not {status!r}")
    rows = queryset.exclude(status=status)
    product_ids = sorted(set(rows.values_list("product_id", flat=True)))
    changed = ProductTag.objects.filter(pk__in=rows.values("pk")).update(status=status)
    if product_ids:
        text_changed(product_ids)
    return changed
