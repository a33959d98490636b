"""Captions in the catalog: storing a caption job's suggestions, and a person's decisions on them.

Only accepted captions feed search (the full-text vector and the embedded product text, through
catalog.signals.text_changed); bulk accept / reject is catalog.review.set_status, shared with product tags.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.db import transaction

from catalog.models import Caption, ProductImage
from catalog.review import set_status
from mmsearch.adapter import CaptionRow
from mmsearch.validation import clean_text

__all__ = ["CAPTION_MAX", "clean_caption", "edit", "set_status", "store_suggestions"]

CAPTION_MAX = Caption._meta.get_field("text").max_length


def clean_caption(text) -> str:
    """The caption text as stored (one line, whitespace collapsed), or mmsearch.validation.BadText saying why not."""
    return " ".join(clean_text(text, name="text", max_length=CAPTION_MAX).split())


def store_suggestions(rows: Sequence[CaptionRow]) -> int:
    """Store model captions as suggestions; a caption already there for (image, model_key), whatever its status
    (a person may have rejected or edited it), is left as it is. Images deleted meanwhile are skipped."""
    images = dict(ProductImage.objects.filter(pk__in={r.image_id for r in rows}).values_list("pk", "product_id"))
    existing = set(
        Caption.objects.filter(image_id__in=list(images), model_key__in={r.model_key for r in rows})
        .values_list("image_id", "model_key")
    )
    new = [
        Caption(product_id=images[r.image_id], image_id=r.image_id, text=" ".join(r.text.split())[:CAPTION_MAX],
                model_key=r.model_key, score=r.score)
        for r in rows if r.image_id in images and r.text.strip() and (r.image_id, r.model_key) not in existing
    ]
    # ignore_conflicts: a concurrent delivery of the same batch that got there first wins.
    Caption.objects.bulk_create(new, ignore_conflicts=True)
    return len(new)


@transaction.atomic
def edit(caption: Caption, text) -> Caption:
    """A person's wording: the caption is accepted with this text, keeps its model_key and is marked edited
    (raises BadText for text that cannot be a caption). Saving re-indexes the product (catalog.signals)."""
    caption.text = clean_caption(text)
    caption.status, caption.edited = Caption.Status.ACCEPTED, True
    caption.save()
    return caption
