"""The product full-text vector: one SQL statement computes it from the product, its category, its accepted tags
and its accepted captions."""

from __future__ import annotations

from collections.abc import Iterable

from django.conf import settings
from django.db import connection

_REFRESH_SQL = """
UPDATE catalog_product AS p
SET search_vector =
      setweight(to_tsvector(%(cfg)s::regconfig, coalesce(p.title, '')), 'A')
   || setweight(to_tsvector(%(cfg)s::regconfig,
          coalesce(replace(c.path, '/', ' '), '') || ' ' || coalesce((
              SELECT string_agg(t.name || ' ' || array_to_string(t.synonyms, ' '), ' ')
              FROM catalog_producttag pt JOIN catalog_tag t ON t.id = pt.tag_id
              WHERE pt.product_id = p.id AND pt.status = 'accepted'), '') || ' ' || coalesce((
              SELECT string_agg(cap.text, ' ') FROM catalog_caption cap
              WHERE cap.product_id = p.id AND cap.status = 'accepted'), '')), 'B')
   || setweight(to_tsvector(%(cfg)s::regconfig,
          coalesce(p.brand, '') || ' ' || coalesce((
              SELECT string_agg(kv.value, ' ') FROM jsonb_each_text(
                  CASE WHEN jsonb_typeof(p.attributes) = 'object' THEN p.attributes ELSE '{}'::jsonb END) AS kv), '')), 'C')
   || setweight(to_tsvector(%(cfg)s::regconfig, coalesce(p.description, '')), 'D')
FROM catalog_product AS p2 LEFT JOIN catalog_category AS c ON c.id = p2.category_id
WHERE p2.id = p.id {where}
"""


def refresh_search_vectors(product_ids: Iterable[int] | None = None) -> int:
    """Recompute the full-text vector of these products (all when None); returns rows updated."""
    params: dict = {"cfg": settings.MMSEARCH_FTS_CONFIG}
    where = ""
    if product_ids is not None:
        ids = list(product_ids)
        if not ids:
            return 0
        params["ids"] = ids
        where = "AND p.id = ANY(%(ids)s)"
    with connection.cursor() as cursor:
        cursor.execute(_REFRESH_SQL.replace("{where}", where), params)
        return cursor.rowcount
