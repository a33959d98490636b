"""Facet counts over a result set (product ids): categories (with ancestors), attribute values, tags, prices."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal

from django.db import connection

from catalog.models import Category, Product, ProductTag, Tag, TagGroup
from mmsearch.adapter import id_array

# Attribute values per attribute name returned in facets (the most frequent first).
MAX_VALUES = 30


def compute(product_ids: Sequence[int], price_buckets: int = 5) -> dict:
    """Facets of the products `product_ids`, in one query; an empty input gives empty facets."""
    facets: dict = {"category": [], "attributes": {}, "tags": {}, "price": []}
    ids = list(product_ids)
    if not ids:
        return facets
    product, category = Product._meta.db_table, Category._meta.db_table
    product_tag, tag, group = ProductTag._meta.db_table, Tag._meta.db_table, TagGroup._meta.db_table
    with connection.cursor() as cursor:
        # The products' rows are read once (the CTE), and each facet is a GROUP BY over them.
        cursor.execute(
            f"WITH p AS MATERIALIZED (SELECT id, category_id, attributes, price FROM {product} WHERE id = ANY(%s::bigint[])) "
            f"SELECT 'c', c.path, NULL, NULL, count(*) FROM p JOIN {category} c ON c.id = p.category_id GROUP BY c.path "
            "UNION ALL SELECT 'a', kv.key, kv.value, NULL, count(*) FROM p, jsonb_each_text(CASE WHEN "
            "jsonb_typeof(p.attributes) = 'object' THEN p.attributes ELSE '{}'::jsonb END) kv GROUP BY 2, 3 "
            f"UNION ALL SELECT 't', g.slug, t.slug, t.name, count(DISTINCT pt.product_id) FROM {product_tag} pt "
            f"JOIN p ON p.id = pt.product_id JOIN {tag} t ON t.id = pt.tag_id JOIN {group} g ON g.id = t.group_id "
            "WHERE pt.status = %s GROUP BY 2, 3, 4 "
            "UNION ALL SELECT 'p', price::text, NULL, NULL, count(*) FROM p WHERE price IS NOT NULL GROUP BY price",
            [id_array(ids), ProductTag.Status.ACCEPTED.value],
        )
        rows = cursor.fetchall()
    # A category's count includes its subcategories, as the category filter does.
    counts: Counter[str] = Counter()
    attribute_rows, tag_rows, prices = [], [], []
    for kind, a, b, c, n in rows:
        if kind == "c":
            parts = a.split("/")
            for depth in range(1, len(parts) + 1):
                counts["/".join(parts[:depth])] += n
        elif kind == "a":
            attribute_rows.append((a, b, n))
        elif kind == "t":
            tag_rows.append((a, b, c, n))
        else:
            prices += [Decimal(a)] * n
    facets["category"] = [{"value": v, "count": n} for v, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    attributes: dict[str, list[dict]] = {}
    for name, value, n in sorted(attribute_rows, key=lambda r: (r[0], -r[2], r[1])):
        values = attributes.setdefault(name, [])
        if len(values) < MAX_VALUES:
            values.append({"value": value, "count": n})
    facets["attributes"] = attributes
    tags: dict[str, list[dict]] = {}
    for group_slug, slug, name, n in sorted(tag_rows, key=lambda r: (r[0], -r[3], r[1])):
        tags.setdefault(group_slug, []).append({"value": slug, "name": name, "count": n})
    facets["tags"] = tags
    facets["price"] = price_facets(prices, price_buckets)
    return facets


def _nice_step(span: float, buckets: int) -> float:
    """A round bucket width (1, 2, 2.5 or 5 times a power of ten) covering `span` in about `buckets` steps."""
    raw = span / max(buckets, 1)
    if raw <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 2.5, 5, 10):
        if raw <= mult * power:
            return mult * power
    return 10 * power


def price_facets(prices: Sequence[Decimal], buckets: int = 5) -> list[dict]:
    """Equal-width buckets with round edges; each {"min", "max", "count"} is min <= price < max."""
    if not prices:
        return []
    low, high = float(min(prices)), float(max(prices))
    step = _nice_step(high - low, buckets)
    start = math.floor(low / step) * step
    edges: list[float] = [start]
    while edges[-1] <= high:
        edges.append(edges[-1] + step)
    out = []
    for a, b in zip(edges, edges[1:]):
        n = sum(1 for p in prices if a <= float(p) < b)
        if n:
            out.append({"min": _num(a), "max": _num(b), "count": n})
    return out


def _num(x: float) -> str:
    return str(Decimal(str(round(x, 2))).normalize().quantize(Decimal("0.01")))
