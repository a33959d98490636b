"""Table names of the catalog models the engine reads, resolved from settings (never by importing catalog)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from django.apps import apps
from django.conf import settings


@dataclass(frozen=True)
class Tables:
    product: str
    image: str
    category: str
    tag: str
    tag_group: str
    product_tag: str


@lru_cache(maxsize=1)
def tables() -> Tables:
    """Resolve once per process; the models are fixed at start-up."""
    product = apps.get_model(settings.MMSEARCH_PRODUCT_MODEL)
    image = apps.get_model(settings.MMSEARCH_IMAGE_MODEL)
    category = product._meta.get_field("category").related_model
    product_tag = product._meta.get_field("product_tags").related_model
    tag = product_tag._meta.get_field("tag").related_model
    tag_group = tag._meta.get_field("group").related_model
    return Tables(
        product=product._meta.db_table,
        image=image._meta.db_table,
        category=category._meta.db_table,
        tag=tag._meta.db_table,
        tag_group=tag_group._meta.db_table,
        product_tag=product_tag._meta.db_table,
    )
