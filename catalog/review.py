"""Deciding on model suggestions (product tags, captions) in bulk: one UPDATE and one refresh of the products'
texts, not one per row."""

from __future__ import annotations

from django.db import transaction

from catalog.models import ReviewStatus
from catalog.signals import text_changed


@transaction.atomic
def set_status(queryset, status: str) -> int:
    """Accept or reject these suggestions (a queryset of ProductTag or Caption rows); what is accepted joins the
    full-text vector and the product texts at once, and a rejected one is remembered (the same model_key never
    suggests it again). Returns rows changed."""
    if status not in (ReviewStatus.ACCEPTED, ReviewStatus.REJECTED):
        raise ValueError(f"status must be accepted or rejected, not {status!r}")
    rows = queryset.exclude(status=status)
    product_ids = sorted(set(rows.values_list("product_id", flat=True)))
    changed = queryset.model.objects.filter(pk__in=rows.values("pk")).update(status=status)
    if product_ids:
        text_changed(product_ids)
    return changed
