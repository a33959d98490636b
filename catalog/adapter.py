"""The catalog's side of the engine boundary (mmsearch.adapter.CatalogAdapter): filtering, result cards,
facets, and the product texts and image files the workers embed. Named in settings.MMSEARCH_CATALOG_ADAPTER."""

from __future__ import annotations

from collections.abc import Sequence

from catalog import facets, vocabulary
from catalog.filters import apply_filters, attribute_term_list, attribute_terms, category_ids, check_categories
from catalog.models import Caption, Product, ProductImage, ProductTag, Tag
from mmsearch.adapter import CaptionRow, ImageFile, ProductCard, TagRow, id_array
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
        from django.contrib.postgres.expressions import ArraySubquery
        from django.db.models import F, OuterRef
        from django.db.models.functions import JSONObject

        ids = list(product_ids)
        if not ids:
            return {}
        # One query: each product's row, its category's path and its images in order.
        images = ProductImage.objects.filter(product_id=OuterRef("pk")).order_by("position", "id").values(
            row=JSONObject(id="id", file="file")
        )
        storage = ProductImage._meta.get_field("file").storage
        rows = Product.objects.filter(id__in=ids).order_by().values_list(
            "id", "sku", "title", "price", "currency", F("category__path"), ArraySubquery(images)
        )
        return {
            pid: ProductCard(
                product_id=pid, sku=sku, title=title, price=price, currency=currency, category=path,
                images=tuple((im["id"], storage.url(im["file"]) if im["file"] else None) for im in images or ()),
            )
            for pid, sku, title, price, currency, path, images in rows
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
        captions: dict[int, list[str]] = {}
        for pid, text in (
            Caption.objects.filter(product_id__in=ids, status=Caption.Status.ACCEPTED)
            .order_by("product_id", "image__position", "image_id", "id").values_list("product_id", "text")
        ):
            captions.setdefault(pid, []).append(text)
        return {
            pid: product_text(title, path, attributes, tags.get(pid, ()), captions.get(pid, ()))
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

    def store_match_scores(self, rows):
        from catalog.quality import store_match_scores

        return store_match_scores(rows)

    # --- captions -------------------------------------------------------------------------------------------
    def captioned_products(self, product_ids: Sequence[int], model_key: str) -> set[int]:
        return set(
            Caption.objects.filter(product_id__in=list(product_ids), model_key=model_key)
            .values_list("product_id", flat=True).distinct()
        )

    def store_captions(self, rows: Sequence[CaptionRow]) -> int:
        from catalog.captions import store_suggestions

        return store_suggestions(rows)

    # --- query understanding --------------------------------------------------------------------------------
    # Attributes with more distinct values than this are identifiers (or free text), not a vocabulary.
    VOCABULARY_MAX_VALUES = 200

    def search_vocabulary(self):
        from django.db import connection
        from django.db.models import Count
        from django.utils.text import slugify

        from catalog.models import Category, SearchSynonym, TagGroup
        from mmsearch.adapter import VocabularyTerm

        table = Product._meta.db_table
        with connection.cursor() as cursor:
            # String values only: numbers (a year) are not words a shopper uses to name products.
            cursor.execute(
                f"SELECT kv.key, kv.value #>> '{{}}', count(*) FROM {table} p, "
                "jsonb_each(CASE WHEN jsonb_typeof(p.attributes) = 'object' THEN p.attributes ELSE '{}'::jsonb END) kv "
                "WHERE p.active AND jsonb_typeof(kv.value) = 'string' AND kv.value #>> '{}' <> '' GROUP BY 1, 2"
            )
            rows = cursor.fetchall()
        values: dict[str, dict[str, int]] = {}
        for key, value, count in rows:
            values.setdefault(key, {})[value] = count
        terms: dict[tuple[str, str], dict] = {}
        for key, found in values.items():
            if not 2 <= len(found) <= self.VOCABULARY_MAX_VALUES:
                continue
            for value, count in found.items():
                terms[(f"attr.{key}", value.upper())] = {
                    "filter": f"attr.{key}", "value": value, "label": value, "names": [value], "synonyms": [],
                    "merchant": [], "products": count,
                }
        # Categories: each node by its own name, counting the active products of its subtree.
        counts: dict[str, int] = {}
        for path, count in (
            Product.objects.filter(active=True, category__isnull=False).values_list("category__path")
            .annotate(n=Count("id")).values_list("category__path", "n")
        ):
            parts = path.split("/")
            for depth in range(1, len(parts) + 1):
                sub = "/".join(parts[:depth])
                counts[sub] = counts.get(sub, 0) + count
        for path, name in Category.objects.values_list("path", "name"):
            if counts.get(path):
                terms[("category", path)] = {
                    "filter": "category", "value": path, "label": name, "names": [name], "synonyms": [],
                    "merchant": [], "products": counts[path],
                }
        # Tags: a group made from an attribute (catalog.vocabulary.create_from_catalog) names the same values,
        # so its tags' synonyms join that attribute's terms instead of repeating them.
        accepted = dict(
            ProductTag.objects.filter(status=ProductTag.Status.ACCEPTED, product__active=True)
            .values_list("tag_id").annotate(n=Count("id")).values_list("tag_id", "n")
        )
        attribute_by_slug = {slugify(key): key for key in values}
        for group in TagGroup.objects.prefetch_related("tags"):
            for tag in group.tags.all():
                synonyms = [s for s in tag.synonyms if s and s.strip()]
                twin = terms.get((f"attr.{attribute_by_slug.get(group.slug, '')}", tag.name.upper()))
                if twin is not None:
                    twin["synonyms"] += synonyms
                    continue
                terms[("tag", f"{group.slug}:{tag.slug}")] = {
                    "filter": "tag", "value": f"{group.slug}:{tag.slug}", "label": tag.name, "names": [tag.name],
                    "synonyms": synonyms, "merchant": [], "products": accepted.get(tag.id, 0),
                }
        for phrase, field, value in SearchSynonym.objects.filter(active=True).values_list("phrase", "field", "value"):
            key = (field, value.upper()) if field.startswith("attr.") else (field, value)
            if key not in terms and field == "tag" and ":" not in value:  # a bare tag slug: the first group's
                key = next((k for k in terms if k[0] == "tag" and k[1].endswith(f":{value}")), key)
            if key in terms:
                terms[key]["merchant"].append(phrase)
        return [
            VocabularyTerm(
                filter=t["filter"], value=t["value"], label=t["label"], names=tuple(t["names"]),
                synonyms=tuple(dict.fromkeys(t["synonyms"])), merchant=tuple(dict.fromkeys(t["merchant"])),
                products=t["products"],
            )
            for _, t in sorted(terms.items())
        ]

    def search_vocabulary_version(self) -> str:
        from django.db import connection

        # Bumped by triggers on the synonym, tag, tag group and category tables (migration 0007).
        with connection.cursor() as cursor:
            cursor.execute("SELECT n FROM catalog_vocabulary_version WHERE id = 1")
            return str(cursor.fetchone()[0])

    def products_having(self, filters: dict[str, list[str]], values: dict[str, list[str]]):
        queryset = self.products(filters)
        for name, wanted in values.items():
            if name.startswith("attr."):
                # Any of the values, as an attribute filter matches them (the GIN-indexed attribute_terms).
                queryset = queryset.filter(attribute_terms__overlap=attribute_terms(name[5:], wanted))
            elif name in ("category", "tag"):
                queryset = apply_filters(queryset, {name: wanted})
            else:
                return queryset.none()
        return queryset

    def which_have(self, product_ids, values: dict[str, list[str]]) -> dict[str, set[int]]:
        from django.db import connection

        ids = list(product_ids)
        names = list(values)
        out: dict[str, set[int]] = {name: set() for name in names}
        if not ids or not names:
            return out
        # One pass over the candidates' rows (by primary key), each test evaluated on a row already read:
        # attribute values as the attr filter tests them (attribute_terms), categories by their subtrees' ids
        # (as the category filter), tags by the tag filter's own query. Written as SQL: this runs on every
        # search that understood something.
        tests, params = [], []
        for name in names:
            if name.startswith("attr."):
                terms = attribute_term_list(name[5:], values[name])
                tests.append(f"p.attribute_terms && ARRAY[{', '.join(['lower(%s)'] * len(terms))}]::text[]")
                params += terms
            elif name == "category":
                tests.append("p.category_id = ANY(%s::bigint[])")
                params.append(id_array(category_ids(values[name])))
            elif name == "tag":
                sql, sql_params = apply_filters(Product.objects.order_by(), {name: values[name]}).values("id").query.sql_with_params()
                tests.append(f"p.id IN ({sql})")
                params += sql_params
            else:
                tests.append("false")
        with connection.cursor() as cursor:
            cursor.execute(
                f'SELECT p.id, {", ".join(tests)} FROM "{Product._meta.db_table}" p WHERE p.id = ANY(%s::bigint[])',
                [*params, id_array(ids)],
            )
            for row in cursor.fetchall():
                for i, name in enumerate(names):
                    if row[i + 1]:
                        out[name].add(row[0])
        return out
