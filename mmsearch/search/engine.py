"""The search engine: lexical (full-text + trigram), semantic (vector kNN) and hybrid (RRF-fused) product search.

    result = search(SearchQuery(text="red kurta for women", filters={"attr.gender": ["Women"]}))

This module orchestrates one request: it checks the query (params), runs the signals its mode asks for
(signals), fuses their rankings (fusion), and fills one page of hits and the facets from the catalog
(mmsearch.adapter). Modes: lexical = lexical + trigram; semantic = the vector signals; hybrid = all, fused by
weighted RRF. A text query is first read for the catalog's vocabulary (understanding): each recognised span
adds the `understood` candidates and boosts the candidates with its value. Weights, boosts, the RRF constant
and limits come from config(): DEFAULTS, the fitted weights file, settings.MMSEARCH_SEARCH.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

import numpy as np
from django.db import transaction

from mmsearch.adapter import get_catalog
from mmsearch.search import photo, signals, understanding, vectors
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
    # What query understanding recognised in the text (understanding.Understood, applied or not).
    understood: list = field(default_factory=list)


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
            image_url=url, category=card.category, score=round(f.score, 6), model_key=model_key,
            parts={name: {**part, "score": round(part["score"], 6)} if "score" in part else part
                   for name, part in f.parts.items()},
        ))
    return hits


@dataclass
class Gathered:
    """Everything one query's fusion needs: each signal's ranked candidates, the understood spans, the values
    they boost and, once checked (check_boosts), which candidates have them. Weight fitting (manage.py
    fit_search_weights) gathers each labelled query once and checks every candidate."""

    mode: str
    ranked: dict[str, list[Candidate]]
    understood: list = field(default_factory=list)  # [understanding.Understood]
    # filter -> (its applied values, the highest confidence of its spans): what the boosts reward
    boosting: dict[str, tuple[list[str], float]] = field(default_factory=dict)
    # filter -> (the checked candidate ids with any of its values, that confidence)
    matches: dict[str, tuple[set[int], float]] = field(default_factory=dict)
    # filter -> candidate ids known to have its values without a check: the understood list's, for the filters
    # it required
    known: dict[str, set[int]] = field(default_factory=dict)
    debug: dict = field(default_factory=dict)


def boost_for(filter_name: str, boosts: dict) -> float:
    """BOOSTS[filter], else BOOSTS['attr'] for attribute filters, else BOOSTS['default']."""
    if filter_name in boosts:
        return float(boosts[filter_name])
    if filter_name.startswith("attr.") and "attr" in boosts:
        return float(boosts["attr"])
    return float(boosts.get("default", 0.0))


def check_boosts(gathered: Gathered, ids) -> None:
    """Record in gathered.matches which of `ids` have each boosted value: those gathered.known has for every
    filter at once, the others by one query for all the filters."""
    if not gathered.boosting:
        return
    ids = set(ids)
    names = list(gathered.boosting)
    for name in names:
        gathered.matches.setdefault(name, (set(), gathered.boosting[name][1]))
    unknown = {i for i in ids if any(i not in gathered.known.get(name, ()) for name in names)}
    for name in names:
        gathered.matches[name][0].update(ids - unknown)
    if not unknown:
        return
    t0 = time.perf_counter()
    wanted = {name: values for name, (values, _) in gathered.boosting.items()}
    for name, have in signals.having(sorted(unknown), wanted).items():
        gathered.matches[name][0].update(have)
    understand_ms = gathered.debug.setdefault("understand_ms", {})
    understand_ms["boost"] = round(understand_ms.get("boost", 0.0) + (time.perf_counter() - t0) * 1000, 2)
    gathered.debug["boost_checked"] = gathered.debug.get("boost_checked", 0) + len(unknown)


def boosted(fused: list[Fused], gathered: Gathered, boosts: dict, need: int | None = None) -> list[Fused]:
    """`fused` (best first) plus each understood value's boost on the candidates that have it (BOOSTS[filter] x
    its confidence), best first again.

    With `need`, only the candidates that can still reach the first `need` places are checked: first the
    `need` best, then those whose score plus every boost together reaches the need-th best score among the
    checked ones. A boost only raises a score, so every other candidate stays behind at least `need` others
    (the places past `need` are left in their unboosted order)."""
    bonus = {name: boost_for(name, boosts) * confidence for name, (_, confidence) in gathered.boosting.items()}
    bonus = {name: b for name, b in bonus.items() if b}
    if not bonus or not fused:
        return fused

    def apply(batch: list[Fused]) -> None:
        check_boosts(gathered, [f.item_id for f in batch])
        for f in batch:
            for name, b in bonus.items():
                if f.item_id in gathered.matches[name][0]:
                    f.score += b
                    part = f.parts.setdefault("understood_boost", {"score": 0.0, "filters": []})
                    part["score"] = round(part["score"] + b, 6)
                    part["filters"].append(name)

    if need is None or len(fused) <= need or min(bonus.values()) < 0:
        apply(fused)
    else:
        apply(fused[:need])
        floor = min(f.score for f in fused[:need]) - sum(bonus.values()) - 1e-12
        rest = fused[need:]
        apply([f for f in rest if f.score >= floor])  # a prefix of the rest: fused is sorted by score
    return sorted(fused, key=lambda f: (-f.score, f.item_id))


def _timed(fn, *args) -> tuple:
    t0 = time.perf_counter()
    return fn(*args), round((time.perf_counter() - t0) * 1000, 2)


def _understanding_on(query: SearchQuery, conf: dict) -> bool:
    return bool(query.understand and conf["UNDERSTAND"].get("ENABLED", True))


def gather(query: SearchQuery, conf: dict | None = None, work: signals.SqlWork | None = None) -> Gathered:
    """Validate a query and run its mode's signals (and query understanding, for text): the part of a search
    before fusion. With a parallel `work` (signals.sql_work) the signals' queries run side by side, each in a
    transaction of its own; else one after another on this connection, which must then be in a transaction
    (SET LOCAL index options)."""
    conf = conf or config()
    work = work or signals.SqlWork()
    if query.mode not in MODES:
        raise SearchError(f"mode must be one of {', '.join(MODES)}, not {query.mode!r}")
    _check_page(query, conf)
    given = [n for n, v in (("text", query.text), ("image", query.image), ("similar_to", query.similar_to)) if v is not None]
    if not given:
        raise SearchError("the query is empty; type what you are looking for or upload a photo")
    if len(given) > 1:
        raise SearchError(f"give one of a text query, a photo or similar_to, not {' and '.join(given)}")
    filters = query.filters if query.checked() else check_filters(query.filters)
    k = max(int(conf["CANDIDATES"]), query.page * query.limit)
    pending: dict[str, Callable[[], tuple]] = {}
    debug: dict = {"signals": {}, "parallel": work.parallel}
    mode = query.mode
    understood: list = []
    boosting: dict[str, tuple[list[str], float]] = {}
    known: dict[str, set[int]] = {}

    def timed(name: str, fn, *args, **kwargs) -> tuple:
        t0 = time.perf_counter()
        info: dict = {}
        wants_debug = name.endswith("_vector") or name == "understood"
        found = fn(*args, **kwargs, debug=info) if wants_debug else fn(*args, **kwargs)
        return found, {"candidates": len(found), "ms": round((time.perf_counter() - t0) * 1000, 2), **info}

    def run(name: str, fn, *args, **kwargs) -> None:
        pending[name] = work.submit(timed, name, fn, *args, **kwargs)

    def collect() -> dict[str, list[Candidate]]:
        ranked: dict[str, list[Candidate]] = {}
        for name, wait in pending.items():
            ranked[name], debug["signals"][name] = wait()
        pending.clear()
        return ranked

    def scope_of() -> signals.Scope:
        t0 = time.perf_counter()
        scope = signals.scope_for(filters, conf)
        if scope.filtered:
            debug["scope"] = {"products": scope.count, "exact": scope.ids is not None,
                              "ms": round((time.perf_counter() - t0) * 1000, 2)}
        return scope

    ranked: dict[str, list[Candidate]] = {}
    if query.text is not None:
        text = check_text(query.text)
        understand = _understanding_on(query, conf)
        words = signals.analyse_words(text) if (mode in ("hybrid", "lexical") or understand) else None
        plan = None
        if understand:
            t0 = time.perf_counter()
            plan = understanding.prepare(understanding.current_vocabulary(), text, words.unknown if words else None,
                                         words.rare if words else None)
            debug["understand_ms"] = {"match": round((time.perf_counter() - t0) * 1000, 2)}
        # Lexical mode loads no model: understanding then has its exact and typo stages only.
        text_enc = signals.active_encoder("text_embedder") if mode in ("hybrid", "semantic") else None
        text_qvec = span_vecs = None
        encoding = []
        if mode in ("hybrid", "semantic"):
            encoders = [("product", text_enc), ("image", signals.active_encoder("embedder"))]
            encoders = [(kind, enc) for kind, enc in encoders if enc is not None]
            if not encoders and mode == "semantic":
                raise SearchUnavailable("semantic search is not available: no embedding model is active yet")
            # Both encoders start now and run beside each other and beside the lexical SQL below. The text
            # encoder also embeds the spans understanding asks about, in the same forward pass.
            spans = plan.pending_texts() if plan is not None else []
            encoding = [(kind, enc, signals.start_encoding(enc, [text], spans if kind == "product" else None))
                        for kind, enc in encoders]
        if mode in ("hybrid", "lexical"):
            run("lexical", signals.lexical_candidates, text, filters, k, words, query.page * query.limit)
            run("trigram", signals.trigram_candidates, text, filters, k, float(conf["TRIGRAM_THRESHOLD"]), words)
        scope = scope_of() if encoding else None
        for kind, enc, wait in encoding:
            vecs, ms = wait()
            debug.setdefault("encode_ms", {})[enc.role] = round(ms, 2)
            qvec = vecs[0]
            if kind == "product":
                text_qvec, span_vecs = qvec, vecs[1:]
            name = "text_vector" if kind == "product" else "image_vector"
            run(name, signals.vector_candidates, kind, enc, qvec, scope, [], k)
        named: dict = {}
        if plan is not None:
            t0 = time.perf_counter()
            embed = (lambda texts: signals.run_model(text_enc, text_enc.model.embed_texts, texts)) if text_enc else None
            if span_vecs is not None and len(span_vecs):  # rows: plan.runs
                span_vecs = span_vecs / np.maximum(np.linalg.norm(span_vecs, axis=1, keepdims=True), 1e-12)
            understood = understanding.resolve(plan, span_vecs, text_enc.model_key if text_enc else None, embed)
            understanding.apply_choices(understood, filters, query.ignore)
            named = understanding.groups(understood)
            debug["understand_ms"]["resolve"] = round((time.perf_counter() - t0) * 1000, 2)
            if named:
                run("understood", signals.understood_candidates, text, filters, named, k,
                    text_enc if text_qvec is not None else None, text_qvec, words=words)
        ranked = collect()
        if "lexical" in ranked:
            # Partial matches rank as their own, lighter signal (WEIGHTS["lexical_partial"]).
            full, partial = [], []
            for c in ranked["lexical"]:
                (partial if c.extra.pop("partial", False) else full).append(c)
            ranked["lexical"], ranked["lexical_partial"] = full, partial
        boosting = {f: (list(dict.fromkeys(u.value for u in spans)), max(u.confidence for u in spans))
                    for f, spans in named.items()}
        if ranked.get("understood"):
            listed = {c.item_id for c in ranked["understood"]}
            known = {f: listed for f in debug["signals"]["understood"].get("filters", [])}
    elif query.image is not None:
        mode = "semantic"
        enc = signals.active_encoder("embedder")
        if enc is None:
            raise SearchUnavailable("search by photo is not available: no image embedding model is active yet")
        t0 = time.perf_counter()
        views = photo.PhotoViews.from_config(conf)
        # The filter's scope is counted while the photo goes through the model.
        scope_wait = work.submit(scope_of)
        per_view = signals.run_model(enc, photo.embed_views, enc.model, [query.image], views)
        qvec = photo.query_vectors(per_view)[0]
        debug["encode_ms"] = {"embedder": round((time.perf_counter() - t0) * 1000, 2)}
        debug["photo_views"] = views.count
        debug["encode_ms_per_view"] = round(debug["encode_ms"]["embedder"] / views.count, 2)
        run("image_vector", signals.vector_candidates, "image", enc, qvec, scope_wait(), [], k)
        ranked = collect()
    else:
        mode = "semantic"
        ref = get_catalog().product_ref(query.similar_to)
        if ref is None:
            raise SearchError(f"unknown product {query.similar_to!r}")
        product_id, title = ref
        scope = scope_of()
        for kind, role, name in (("image", "embedder", "image_vector"), ("product", "text_embedder", "text_vector")):
            enc = signals.active_encoder(role)
            qvec = vectors.product_vector(kind, enc.model_key, product_id) if enc else None
            if qvec is not None:
                run(name, signals.vector_candidates, kind, enc, qvec, scope, [], k, exclude=product_id)
        ranked = collect()
        if not ranked:
            # No vectors yet: fall back to products whose text is like this product's title.
            mode = "lexical"
            run("lexical", signals.lexical_candidates, title, filters, k + 1)
            ranked = collect()
            ranked["lexical"] = [c for c in ranked["lexical"] if c.item_id != product_id]
    return Gathered(mode, ranked, understood, boosting, known=known, debug=debug)


# Signals whose every candidate matches the query in the shopper's sense: the words (all of them, some of them,
# or a likely typo of one) or every value the words name. A vector candidate matches when its similarity
# reaches SIMILARITY_FLOOR.
MATCHING_SIGNALS = ("lexical", "lexical_partial", "trigram", "understood")


def matching(fused: list[Fused], floors: dict, source: str) -> list[Fused]:
    """The fused candidates a shopper can trust as matches, in order: found by a lexical or understood signal,
    or by a vector signal with cosine similarity at least its floor (SIMILARITY_FLOOR: `text_vector` and
    `image_vector` for text queries, `photo` for the image signal of a photo or more-like-this query)."""
    image_floor = float(floors.get("photo" if source != "text" else "image_vector", 0.0))
    text_floor = float(floors.get("text_vector", 0.0))
    out = []
    for f in fused:
        parts = f.parts
        if any(name in parts for name in MATCHING_SIGNALS):
            out.append(f)
        elif "text_vector" in parts and parts["text_vector"]["score"] >= text_floor:
            out.append(f)
        elif "image_vector" in parts and parts["image_vector"]["score"] >= image_floor:
            out.append(f)
    return out


def search(query: SearchQuery) -> SearchResult:
    """Run a text, photo or more-like-this search with filters; returns one page of hits plus facets.

    `total`, the facets and the pages cover the matching candidates (`matching`), not every candidate fetched."""
    started = time.perf_counter()
    conf = config()
    work = signals.sql_work(conf)
    with transaction.atomic():  # SET LOCAL settings last for this transaction only
        gathered = gather(query, conf, work)
    fused = rrf(gathered.ranked, conf["WEIGHTS"], float(conf["RRF_K"]))
    source = "text" if query.text is not None else "photo"
    # Only the matching candidates are ever shown, so only they are boosted (those that can reach this page).
    found = boosted(matching(fused, conf["SIMILARITY_FLOOR"], source), gathered, conf["BOOSTS"],
                    query.page * query.limit)
    gathered.debug["fused"] = len(fused)
    start = (query.page - 1) * query.limit
    page = found[start:start + query.limit]
    image_hits = {f.item_id: f.parts["image_vector"]["image_id"] for f in page if "image_id" in f.parts.get("image_vector", {})}
    t0 = time.perf_counter()
    facets_wait = work.submit(_timed, get_catalog().facets, [f.item_id for f in found], int(conf["PRICE_BUCKETS"]))
    hits = _hits(page, image_hits)  # beside the facets' query
    gathered.debug["hydrate_ms"] = round((time.perf_counter() - t0) * 1000, 2)
    facets, gathered.debug["facets_ms"] = facets_wait()
    return SearchResult(
        hits=hits, total=len(found), page=query.page, limit=query.limit, facets=facets, mode=gathered.mode,
        took_ms=round((time.perf_counter() - started) * 1000, 2), debug=gathered.debug, understood=gathered.understood,
    )


def browse(query: SearchQuery) -> SearchResult:
    """One page of the products matching `query.filters` (no text, photo or similar_to), sorted by title.

    A shopper who follows a category link asks no question: this lists the filtered products with the same
    filters and facets as search, so the results page renders both the same way."""
    started = time.perf_counter()
    conf = config()
    _check_page(query, conf)
    filters = query.filters if query.checked() else check_filters(query.filters)
    catalog = get_catalog()
    ids = list(catalog.products(filters).order_by(catalog.title_column, "id").values_list("id", flat=True))
    start = (query.page - 1) * query.limit
    page = [Fused(pid, 0.0, {}) for pid in ids[start:start + query.limit]]
    return SearchResult(
        hits=_hits(page, {}), total=len(ids), page=query.page, limit=query.limit,
        facets=catalog.facets(ids, int(conf["PRICE_BUCKETS"])), mode="browse",
        took_ms=round((time.perf_counter() - started) * 1000, 2),
    )
