"""Facet counts over a result set (product ids): categories (with ancestors), attribute values, tags, prices."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal

from django.db import connection

from catalog.models import Category, Product, ProductTag, Tag, TagGroup

# Attribute values per attribute name returned in facets (the most frequent first).
MAX_VALUES = 30


def compute(product_ids: Sequence[int], price_buckets: int = 5) -> dict:
    """Facets of the products `product_ids`; an empty input gives empty facets."""
    facets: dict = {"category": [], "attributes": {}, "tags": {}, "price": []}
    ids = list(product_ids)
    if not ids:
        return facets
    product, category = Product._meta.db_table, Category._meta.db_table
    product_tag, tag, group = ProductTag._meta.db_table, Tag._meta.db_table, TagGroup._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT c.path, count(*) FROM {product} p JOIN {category} c ON c.id = p.category_id "
            "WHERE p.id = ANY(%s) GROUP BY c.path",
            [ids],
        )
        # A category's count includes its subcategories, as the category filter does.
        counts: Counter[str] = Counter()
        for path, n in cursor.fetchall():
            parts = path.split("/")
            for depth in range(1, len(parts) + 1):
                counts["/".join(parts[:depth])] += n
        facets["category"] = [{"value": v, "count": n} for v, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]

        cursor.execute(
            f"SELECT kv.key, kv.value, count(*) FROM {product} p, "
            "jsonb_each_text(CASE WHEN jsonb_typeof(p.attributes) = 'object' THEN p.attributes ELSE '{}'::jsonb END) kv "
            "WHERE p.id = ANY(%s) GROUP BY 1, 2 ORDER BY 1, 3 DESC, 2",
            [ids],
        )
        attributes: dict[str, list[dict]] = {}
        for name, value, n in cursor.fetchall():
            values = attributes.setdefault(name, [])
            if len(values) < MAX_VALUES:
                values.append({"value": value, "count": n})
        facets["attributes"] = attributes

        cursor.execute(
            f"SELECT g.slug, t.slug, t.name, count(DISTINCT pt.product_id) FROM {product_tag} pt "
            f"JOIN {tag} t ON t.id = pt.tag_id JOIN {group} g ON g.id = t.group_id "
            "WHERE pt.product_id = ANY(%s) AND pt.status = %s GROUP BY 1, 2, 3 ORDER BY 1, 4 DESC, 2",
            [ids, ProductTag.Status.ACCEPTED.value],
        )
        tags: dict[str, list[dict]] = {}
        for group, slug, name, n in cursor.fetchall():
            tags.setdefault(group, []).append({"value": slug, "name": name, "count": n})
        facets["tags"] = tags

        cursor.execute(f"SELECT price FROM {product} WHERE id = ANY(%s) AND price IS NOT NULL", [ids])
        prices = [row[0] for row in cursor.fetchall()]
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
