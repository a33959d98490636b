"""Browsing without a query: the products of a category (or other filters) in title order, with facets.

The engine answers questions (text, photo, more like this) and refuses an empty query; a shopper who follows a
category link asks no question, so this lists the filtered products with the engine's own filter and facet
code, and returns the engine's SearchResult so the results page renders both the same way.
"""

from __future__ import annotations

import time

from mmsearch.search import facets as facets_mod
from mmsearch.search.engine import SearchHit, SearchQuery, SearchResult, check_filters, config, filtered_products


def browse(query: SearchQuery) -> SearchResult:
    """One page of the products matching `query.filters` (no text, photo or similar_to), sorted by title."""
    started = time.perf_counter()
    check_filters(query.filters)
    ids = list(filtered_products(query.filters).order_by("title", "id").values_list("id", flat=True))
    start = (query.page - 1) * query.limit
    page_ids = ids[start:start + query.limit]
    products = {
        p.id: p
        for p in filtered_products(query.filters).filter(id__in=page_ids)
        .select_related("category").prefetch_related("images")
    }
    hits = []
    for pid in page_ids:
        p = products[pid]
        images = list(p.images.all())
        hits.append(SearchHit(
            product_id=p.id, sku=p.sku, title=p.title, price=p.price, currency=p.currency,
            image_url=images[0].file.url if images and images[0].file else None,
            category=p.category.path if p.category_id else None, score=0.0, parts={}, model_key=None,
        ))
    return SearchResult(
        hits=hits, total=len(ids), page=query.page, limit=query.limit,
        facets=facets_mod.compute(ids, int(config()["PRICE_BUCKETS"])), mode="browse",
        took_ms=round((time.perf_counter() - started) * 1000, 2),
    )
