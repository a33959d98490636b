"""The search engine: lexical (full-text + trigram), semantic (vector kNN) and hybrid (RRF-fused) product search.

    result = search(SearchQuery(text="red kurta for women", filters={"attr.gender": ["Women"]}))

This module orchestrates one request: it checks the query (params), runs the signals its mode asks for
(signals), fuses their rankings (fusion), and fills one page of hits and the facets from the catalog
(mmsearch.adapter). Modes: lexical = lexical + trigram; semantic = the vector signals; hybrid = all, fused by
weighted RRF. Weights, the RRF constant and limits come from settings.MMSEARCH_SEARCH (config.DEFAULTS).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import Decimal

from django.db import transaction

from mmsearch.adapter import get_catalog
from mmsearch.search import photo, signals, vectors
from mmsearch.search.config import config
from mmsearch.search.fusion import Candidate, Fused, rrf
from mmsearch.search.params import (
    MODES, SearchError, SearchQuery, SearchUnavailable, check_filters, check_text,
)


@dataclass
class SearchHit:
    product_id: int
    sku: str
    title: str
    price: Decimal | None
    currency: str
    image_url: str | None
    category: str | None
    score: float
    parts: dict
    model_key: str | None


@dataclass
class SearchResult:
    hits: list[SearchHit]
    total: int
    page: int
    limit: int
    facets: dict
    mode: str
    took_ms: float
    # Per-signal candidate counts, timings and whether an exact vector search replaced the index scan.
    debug: dict = field(default_factory=dict)


def _check_page(query: SearchQuery, conf: dict) -> None:
    if not 1 <= query.limit <= conf["MAX_LIMIT"]:
        raise SearchError(f"limit must be between 1 and {conf['MAX_LIMIT']}, not {query.limit}")
    if not 1 <= query.page <= conf["MAX_PAGE"]:
        raise SearchError(f"page must be between 1 and {conf['MAX_PAGE']}, not {query.page}")
    if query.page * query.limit > conf["MAX_RESULTS"]:
        raise SearchError(f"only the first {conf['MAX_RESULTS']} results can be paged through; narrow the search")


def _hits(scored: list[Fused], image_hits: dict[int, int]) -> list[SearchHit]:
    """Hits in the order of `scored`, from the catalog's cards; the best-matching image first where known."""
    cards = get_catalog().cards([f.item_id for f in scored])
    hits = []
    for f in scored:
        card = cards.get(f.item_id)
        if card is None:  # deleted between the candidate query and now
            continue
        url = next((u for image_id, u in card.images if image_id == image_hits.get(f.item_id)), None)
        if url is None and card.images:
            url = card.images[0][1]
        model_key = (f.parts.get("image_vector") or f.parts.get("text_vector") or {}).get("model_key")
        hits.append(SearchHit(
            product_id=card.product_id, sku=card.sku, title=card.title, price=card.price, currency=card.currency,
            image_url=url, category=card.category, score=round(f.score, 6), parts=f.parts, model_key=model_key,
        ))
    return hits


def search(query: SearchQuery) -> SearchResult:
    """Run a text, photo or more-like-this search with filters; returns one page of hits plus facets."""
    started = time.perf_counter()
    conf = config()
    if query.mode not in MODES:
        raise SearchError(f"mode must be one of {', '.join(MODES)}, not {query.mode!r}")
    _check_page(query, conf)
    given = [n for n, v in (("text", query.text), ("image", query.image), ("similar_to", query.similar_to)) if v is not None]
    if not given:
        raise SearchError("the query is empty; type what you are looking for or upload a photo")
    if len(given) > 1:
        raise SearchError(f"give one of a text query, a photo or similar_to, not {' and '.join(given)}")
    filters = check_filters(query.filters)
    k = max(int(conf["CANDIDATES"]), query.page * query.limit)
    fsql, fparams = signals.filter_sql(filters)
    ranked: dict[str, list[Candidate]] = {}
    debug: dict = {"signals": {}}
    mode = query.mode

    def run(name: str, fn, *args, **kwargs) -> None:
        t0 = time.perf_counter()
        info: dict = {}
        ranked[name] = fn(*args, **kwargs, debug=info) if name.endswith("_vector") else fn(*args, **kwargs)
        debug["signals"][name] = {"candidates": len(ranked[name]), "ms": round((time.perf_counter() - t0) * 1000, 2), **info}

    with transaction.atomic():  # SET LOCAL settings last for this transaction only
        if query.text is not None:
            text = check_text(query.text)
            if mode in ("hybrid", "lexical"):
                words = signals.analyse_words(text)
                run("lexical", signals.lexical_candidates, text, filters, k, words, query.page * query.limit)
                # Partial matches rank as their own, lighter signal (WEIGHTS["lexical_partial"]).
                ranked["lexical_partial"] = [c for c in ranked["lexical"] if c.extra.pop("partial", False)]
                ranked["lexical"] = [c for c in ranked["lexical"] if c not in ranked["lexical_partial"]]
                run("trigram", signals.trigram_candidates, text, filters, k, float(conf["TRIGRAM_THRESHOLD"]), words)
            if mode in ("hybrid", "semantic"):
                encoders = [(kind, signals.active_encoder(role)) for kind, role in (("product", "text_embedder"), ("image", "embedder"))]
                encoders = [(kind, enc) for kind, enc in encoders if enc is not None]
                if not encoders and mode == "semantic":
                    raise SearchUnavailable("semantic search is not available: no embedding model is active yet")
                for kind, enc in encoders:
                    t0 = time.perf_counter()
                    qvec = signals.encode_text(enc, text)
                    debug.setdefault("encode_ms", {})[enc.role] = round((time.perf_counter() - t0) * 1000, 2)
                    name = "text_vector" if kind == "product" else "image_vector"
                    run(name, signals.vector_candidates, kind, enc, qvec, fsql, fparams, k)
        elif query.image is not None:
            mode = "semantic"
            enc = signals.active_encoder("embedder")
            if enc is None:
                raise SearchUnavailable("search by photo is not available: no image embedding model is active yet")
            t0 = time.perf_counter()
            views = photo.PhotoViews.from_config(conf)
            per_view = signals.run_model(enc, photo.embed_views, enc.model, [query.image], views)
            qvec = photo.query_vectors(per_view)[0]
            debug["encode_ms"] = {"embedder": round((time.perf_counter() - t0) * 1000, 2)}
            debug["photo_views"] = views.count
            run("image_vector", signals.vector_candidates, "image", enc, qvec, fsql, fparams, k)
        else:
            mode = "semantic"
            ref = get_catalog().product_ref(query.similar_to)
            if ref is None:
                raise SearchError(f"unknown product {query.similar_to!r}")
            product_id, title = ref
            for kind, role, name in (("image", "embedder", "image_vector"), ("product", "text_embedder", "text_vector")):
                enc = signals.active_encoder(role)
                qvec = vectors.product_vector(kind, enc.model_key, product_id) if enc else None
                if qvec is not None:
                    run(name, signals.vector_candidates, kind, enc, qvec, fsql, fparams, k, exclude=product_id)
            if not ranked:
                # No vectors yet: fall back to products whose text is like this product's title.
                mode = "lexical"
                run("lexical", signals.lexical_candidates, title, filters, k + 1)
                ranked["lexical"] = [c for c in ranked["lexical"] if c.item_id != product_id]

    fused = rrf(ranked, conf["WEIGHTS"], float(conf["RRF_K"]))
    start = (query.page - 1) * query.limit
    page = fused[start:start + query.limit]
    image_hits = {f.item_id: f.parts["image_vector"]["image_id"] for f in page if "image_id" in f.parts.get("image_vector", {})}
    return SearchResult(
        hits=_hits(page, image_hits), total=len(fused), page=query.page, limit=query.limit,
        facets=get_catalog().facets([f.item_id for f in fused], int(conf["PRICE_BUCKETS"])), mode=mode,
        took_ms=round((time.perf_counter() - started) * 1000, 2), debug=debug,
    )


def browse(query: SearchQuery) -> SearchResult:
    """One page of the products matching `query.filters` (no text, photo or similar_to), sorted by title.

    A shopper who follows a category link asks no question: this lists the filtered products with the same
    filters and facets as search, so the results page renders both the same way."""
    started = time.perf_counter()
    conf = config()
    _check_page(query, conf)
    filters = check_filters(query.filters)
    catalog = get_catalog()
    ids = list(catalog.products(filters).order_by(catalog.title_column, "id").values_list("id", flat=True))
    start = (query.page - 1) * query.limit
    page = [Fused(pid, 0.0, {}) for pid in ids[start:start + query.limit]]
    return SearchResult(
        hits=_hits(page, {}), total=len(ids), page=query.page, limit=query.limit,
        facets=catalog.facets(ids, int(conf["PRICE_BUCKETS"])), mode="browse",
        took_ms=round((time.perf_counter() - started) * 1000, 2),
    )
