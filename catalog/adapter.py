"""The catalog's side of the engine boundary (mmsearch.adapter.CatalogAdapter): filtering, result cards,
facets, and the product texts and image files the workers embed. Named in settings.MMSEARCH_CATALOG_ADAPTER."""

from __future__ import annotations

from collections.abc import Sequence

from catalog import facets
from catalog.filters import apply_filters, check_categories
from catalog.models import Product, ProductImage, ProductTag
from mmsearch.adapter import ImageFile, ProductCard
from mmsearch.text import product_text


class CatalogAdapter:
    """The engine's view of catalog.models."""

    search_vector_column = "search_vector"
    title_column = "title"

    def products(self, filters: dict[str, list[str]]):
        queryset = Product.objects.filter(active=True)
        return apply_filters(queryset, filters) if filters else queryset

    def check_filters(self, filters: dict[str, list[str]]) -> None:
        if "category" in filters:
            check_categories(filters["category"])
        apply_filters(Product.objects.none(), filters)  # attribute names and values raise here

    def cards(self, product_ids: Sequence[int]) -> dict[int, ProductCard]:
        products = Product.objects.filter(id__in=list(product_ids)).select_related("category").prefetch_related("images")
        return {
            p.id: ProductCard(
                product_id=p.id, sku=p.sku, title=p.title, price=p.price, currency=p.currency,
                category=p.category.path if p.category_id else None,
                images=tuple((im.id, im.file.url if im.file else None) for im in p.images.all()),
            )
            for p in products
        }

    def facets(self, product_ids: Sequence[int], price_buckets: int) -> dict:
        return facets.compute(product_ids, price_buckets)

    def product_ref(self, sku: str) -> tuple[int, str] | None:
        return Product.objects.filter(sku=sku).values_list("id", "title").first()

    def product_texts(self, product_ids: Sequence[int]) -> dict[int, str]:
        ids = list(product_ids)
        tags: dict[int, list[str]] = {}
        for pid, name in (
            ProductTag.objects.filter(product_id__in=ids, status=ProductTag.Status.ACCEPTED)
            .order_by("product_id", "tag__group__name", "tag__name")
            .values_list("product_id", "tag__name")
        ):
            tags.setdefault(pid, []).append(name)
        return {
            pid: product_text(title, path, attributes, tags.get(pid, ()))
            for pid, title, path, attributes in Product.objects.filter(pk__in=ids).values_list(
                "pk", "title", "category__path", "attributes"
            )
        }

    def image_files(self, image_ids: Sequence[int]) -> dict[int, ImageFile]:
        rows = ProductImage.objects.filter(pk__in=list(image_ids)).values_list("pk", "product_id", "file")
        return {pk: ImageFile(pk, product_id, name) for pk, product_id, name in rows}
