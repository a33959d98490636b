"""The engine's one boundary with the catalog: what it asks of the catalog, and the signal it listens to.

The engine (search, vector store, indexing, plugins, training) never imports catalog code. Everything it needs
from products and images goes through the object named by settings.MMSEARCH_CATALOG_ADAPTER, which provides
the methods of `CatalogAdapter` (the catalog's implementation is `catalog.adapter.CatalogAdapter`). The only
other link is by app label: the engine's vector tables reference the catalog's product and image tables by
foreign key (mmsearch/models.py), so deleting a product deletes its vectors.

The catalog tells the engine what changed by sending `catalog_changed` (ids only, after commit).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any, Protocol, runtime_checkable

from django.dispatch import Signal

# Sent by the catalog after a commit that created or changed rows. kwargs: product_ids, image_ids (lists of int).
catalog_changed = Signal()


@dataclass(frozen=True)
class ProductCard:
    """What a result list shows of one product."""

    product_id: int
    sku: str
    title: str
    price: Decimal | None
    currency: str
    category: str | None
    # (image id, URL) in the product's image order.
    images: tuple[tuple[int, str | None], ...]


@dataclass(frozen=True)
class ImageFile:
    """An image the engine embeds: its product and its name in the default storage."""

    image_id: int
    product_id: int
    name: str


@dataclass(frozen=True)
class TagRow:
    """One model suggestion for the catalog: a tag of a group on a product, with the key of what made it."""

    product_id: int
    group: str  # group slug
    tag: str  # tag slug
    score: float
    model_key: str
    accept: bool = False  # at or above the group's auto-accept threshold


@dataclass(frozen=True)
class MatchRow:
    """One image-text match score for the catalog's data-quality report (mmsearch.training.matching), for the
    product with this sku as long as its title is still `title`; with the caption proposed for its image."""

    sku: str
    title: str
    score: float
    model_key: str
    caption: str = ""
    caption_model_key: str = ""


@dataclass(frozen=True)
class CaptionRow:
    """One model caption for the catalog: a sentence about one product image, with the key of what wrote it."""

    product_id: int
    image_id: int
    text: str
    model_key: str
    score: float | None = None  # the embedder's image-text similarity


@runtime_checkable
class CatalogAdapter(Protocol):
    """What the engine asks of a catalog. Filters are {name: [values]} with the names of
    mmsearch.search.params (category, price_min, price_max, tag, attr.NAME); values arrive validated as to
    syntax, and the adapter raises mmsearch.search.params.FilterError for values it cannot apply (e.g. an
    unknown category)."""

    # Columns of the product table that the lexical signals read: the weighted full-text vector and the title.
    search_vector_column: str
    title_column: str

    def products(self, filters: dict[str, list[str]]) -> Any:
        """A queryset of the active products matching `filters` (all active products for {})."""

    def check_filters(self, filters: dict[str, list[str]]) -> None:
        """Raise FilterError when a filter value names nothing the catalog has (e.g. an unknown category)."""

    def cards(self, product_ids: Sequence[int]) -> dict[int, ProductCard]:
        """Cards of these products (missing ids are left out: deleted meanwhile)."""

    def facets(self, product_ids: Sequence[int], price_buckets: int) -> dict:
        """Facet counts over these products: {"category": [...], "attributes": {...}, "tags": {...}, "price": [...]}."""

    def product_ref(self, sku: str) -> tuple[int, str] | None:
        """(id, title) of the product with this sku, or None."""

    def product_texts(self, product_ids: Sequence[int]) -> dict[int, str]:
        """{product id: the text the models embed} (mmsearch.text.product_text of the product's fields)."""

    def image_files(self, image_ids: Sequence[int]) -> dict[int, ImageFile]:
        """The stored files of these images (missing ids are left out)."""

    # --- tagging --------------------------------------------------------------------------------------------
    def vocabulary(self) -> list[Any]:
        """The merchant's tag vocabulary: [mmsearch.plugins.base.VocabGroup, ...]."""

    def product_ids(self, filters: dict[str, list[str]], skus: Sequence[str] | None = None) -> list[int]:
        """Ids of the active products matching filters (and skus, when given), in id order."""

    def product_images(self, product_ids: Sequence[int]) -> dict[int, list[ImageFile]]:
        """{product id: its images in order} (products without images are left out)."""

    def tagged_products(self, product_ids: Sequence[int], model_keys: Sequence[str]) -> set[int]:
        """Which of these products have suggestions from every one of these model keys already."""

    def store_suggestions(self, rows: Sequence[TagRow]) -> int:
        """Store model suggestions (never overwriting a person's decision); returns rows created."""

    def store_match_scores(self, rows: Sequence[MatchRow]) -> dict[str, int]:
        """Store match scores (one per product and model_key, replaced when scored again; a person's review
        mark is kept while the score is unchanged); returns {"stored", "unknown_sku", "title_changed"}."""

    # --- captions -------------------------------------------------------------------------------------------
    def captioned_products(self, product_ids: Sequence[int], model_key: str) -> set[int]:
        """Which of these products have a caption (in any status) from this model key already."""

    def store_captions(self, rows: Sequence[CaptionRow]) -> int:
        """Store model captions as suggestions (never overwriting a person's decision); returns rows created."""

    # --- query understanding (mmsearch.search.understanding) -------------------------------------------------
    def search_vocabulary(self) -> list["VocabularyTerm"]:
        """Everything a shopper's words can name: attribute values, category names, tags (with their synonyms)
        and the merchant's search synonyms, as VocabularyTerm rows."""

    def search_vocabulary_version(self) -> str:
        """A cheap token that changes whenever the merchant's synonyms, the tags or the categories change (one
        small query: search calls it on every request). Attribute values are re-read on a timer instead."""

    def products_having(self, filters: dict[str, list[str]], values: dict[str, list[str]]) -> Any:
        """The active products matching `filters` that have, for each name of `values` (attr.NAME, category,
        tag), one of its values (as search_vocabulary spells them, matched as the same filter would match them,
        through an index): the understood spans' products."""

    def which_have(self, product_ids: Sequence[int], values: dict[str, list[str]]) -> dict[str, set[int]]:
        """{name of `values`: which of these products have one of its values} (spelled as in products_having),
        in one query over the products' own rows: the understood spans' boosts."""


def id_array(ids: Sequence[int]) -> str:
    """Ids as one Postgres array literal, for `= ANY(%s::bigint[])`: a single string parameter costs the driver
    far less than a list of thousands of ints, each quoted on its own (a filter's ids in one request)."""
    return "{" + ",".join(str(int(i)) for i in ids) + "}"


@lru_cache(maxsize=1)
def get_catalog() -> CatalogAdapter:
    """The configured adapter, built once per process (settings are fixed at start-up)."""
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured
    from django.utils.module_loading import import_string

    path = getattr(settings, "MMSEARCH_CATALOG_ADAPTER", "catalog.adapter.CatalogAdapter")
    try:
        adapter = import_string(path)()
    except ImportError as exc:
        raise ImproperlyConfigured(f"MMSEARCH_CATALOG_ADAPTER = {path!r} cannot be imported: {exc}") from exc
    if not isinstance(adapter, CatalogAdapter):
        raise ImproperlyConfigured(
            f"MMSEARCH_CATALOG_ADAPTER = {path!r} lacks methods of mmsearch.adapter.CatalogAdapter"
        )
    return adapter


@dataclass(frozen=True)
class VocabularyTerm:
    """One thing of the catalog a shopper's words can name, and the filter that selects it.

    filter + value are a search filter (`attr.colour` = `Grey`, `category` = `Apparel/Topwear`, `tag` =
    `colour:grey`); names are the catalog's own words for it, synonyms the tag vocabulary's, merchant the
    merchant's search synonyms (catalog.SearchSynonym); products counts the active products it selects."""

    filter: str
    value: str
    label: str
    names: tuple[str, ...]
    synonyms: tuple[str, ...] = ()
    merchant: tuple[str, ...] = ()
    products: int = 0
