"""The catalog's side of the engine boundary (mmsearch.adapter.CatalogAdapter): filtering, result cards,
facets, and the product texts and image files the workers embed. Named in settings.MMSEARCH_CATALOG_ADAPTER."""

from __future__ import annotations

from collections.abc import Sequence

from catalog import facets, vocabulary
from catalog.filters import apply_filters, check_categories
from catalog.models import Product, ProductImage, ProductTag, Tag
from mmsearch.adapter import ImageFile, ProductCard, TagRow
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

    # --- tagging --------------------------------------------------------------------------------------------
    def vocabulary(self):
        return vocabulary.vocabulary()

    def product_ids(self, filters: dict[str, list[str]], skus: Sequence[str] | None = None) -> list[int]:
        queryset = self.products(filters)
        if skus is not None:
            queryset = queryset.filter(sku__in=list(skus))
        return list(queryset.order_by("id").values_list("id", flat=True))

    def product_images(self, product_ids: Sequence[int]) -> dict[int, list[ImageFile]]:
        out: dict[int, list[ImageFile]] = {}
        for pk, product_id, name in (
            ProductImage.objects.filter(product_id__in=list(product_ids)).order_by("product_id", "position", "id")
            .values_list("pk", "product_id", "file")
        ):
            out.setdefault(product_id, []).append(ImageFile(pk, product_id, name))
        return out

    def tagged_products(self, product_ids: Sequence[int], model_keys: Sequence[str]) -> set[int]:
        keys = set(model_keys)
        seen: dict[int, set[str]] = {}
        for pid, key in (
            ProductTag.objects.filter(product_id__in=list(product_ids), model_key__in=keys)
            .values_list("product_id", "model_key").distinct()
        ):
            seen.setdefault(pid, set()).add(key)
        return {pid for pid, found in seen.items() if found >= keys}

    def store_suggestions(self, rows: Sequence[TagRow]) -> int:
        from catalog.signals import text_changed

        tags = {
            (g, s): pk for pk, g, s in Tag.objects.filter(group__slug__in={r.group for r in rows})
            .values_list("pk", "group__slug", "slug")
        }
        wanted = [(r, tags[(r.group, r.tag)]) for r in rows if (r.group, r.tag) in tags]
        existing = set(
            ProductTag.objects.filter(product_id__in={r.product_id for r, _ in wanted}, model_key__in={r.model_key for r, _ in wanted})
            .values_list("product_id", "tag_id", "model_key")
        )
        new = [
            ProductTag(
                product_id=r.product_id, tag_id=tag_id, source=ProductTag.Source.MODEL, score=r.score,
                model_key=r.model_key, status=ProductTag.Status.ACCEPTED if r.accept else ProductTag.Status.SUGGESTED,
            )
            for r, tag_id in wanted if (r.product_id, tag_id, r.model_key) not in existing
        ]
        # A suggestion already there (even one a person rejected) is left as it is.
        ProductTag.objects.bulk_create(new, ignore_conflicts=True)
        accepted = {pt.product_id for pt in new if pt.status == ProductTag.Status.ACCEPTED}
        if accepted:
            text_changed(sorted(accepted))  # auto-accepted tags join the full text, facets and product texts
        return len(new)
