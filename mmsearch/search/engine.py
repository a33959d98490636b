"""The search engine: lexical (full-text + trigram), semantic (vector kNN) and hybrid (RRF-fused) product search.

    result = search(SearchQuery(text="red kurta for women", filters={"attr.gender": ["Women"]}))

Signals, each a ranked candidate list restricted to the filtered products:
  lexical       websearch_to_tsquery over Product.search_vector, ranked with ts_rank_cd (all words first,
                then any word)
  trigram       pg_trgm word similarity of the query to the title, for typos
  text_vector   kNN of the query's text_embedder vector over product-text vectors of the active key
  image_vector  kNN of the query's embedder vector (text-to-image, or photo-to-image) over image vectors of
                the active key; a product with several images counts once, by its best image
Modes: lexical = lexical + trigram; semantic = the vector signals; hybrid = all, fused by weighted RRF.
Weights, the RRF constant and limits come from settings.MMSEARCH_SEARCH (see DEFAULTS).
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

import numpy as np
from django.apps import apps
from django.conf import settings
from django.core.cache import cache
from django.db import connection, transaction
from django.db.models import Q

from mmsearch.plugins import PluginError, alias_role, get_model, model_settings
from mmsearch.search import facets as facets_mod
from mmsearch.search import photo
from mmsearch.search import vectors
from mmsearch.search.fusion import Candidate, rrf
from mmsearch.search.sql import tables

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

DEFAULTS: dict[str, Any] = {
    # Reciprocal rank fusion: score = sum(weight / (RRF_K + rank)) over the signals that found the product.
    "RRF_K": 60,
    # lexical_partial: products with only some of the query's words (weak evidence, e.g. a synonym missed).
    "WEIGHTS": {"lexical": 1.0, "lexical_partial": 0.3, "trigram": 0.3, "text_vector": 1.0, "image_vector": 0.5},
    # Candidates each signal contributes before fusion (at least page * limit).
    "CANDIDATES": 200,
    "MAX_LIMIT": 100,
    "DEFAULT_LIMIT": 24,
    "MAX_PAGE": 100,
    # page * limit may not go past this: each signal fetches that many candidates.
    "MAX_RESULTS": 1000,
    "MAX_QUERY_CHARS": 200,
    # HNSW search breadth (pgvector hnsw.ef_search, at most 1000) and the iterative-scan budget for filtered
    # searches (hnsw.max_scan_tuples); beyond it the exact search over the filtered rows takes over.
    "EF_SEARCH": 100,
    "MAX_SCAN_TUPLES": 20000,
    # Images fetched per wanted product from the image index, so products with several images still fill k.
    "IMAGE_OVERFETCH": 3,
    # pg_trgm.word_similarity_threshold for the typo signal.
    "TRIGRAM_THRESHOLD": 0.5,
    "QUERY_CACHE_SECONDS": 3600,
    "PRICE_BUCKETS": 5,
    # Search by photo embeds the photo as the mean of these views: centre crops keeping each scale of its
    # width and height, each also mirrored (mmsearch.search.photo). (1.0,) and False = the whole photo only.
    "PHOTO_QUERY_SCALES": photo.DEFAULT_SCALES,
    "PHOTO_QUERY_MIRROR": photo.DEFAULT_MIRROR,
}

MODES = ("hybrid", "semantic", "lexical")
FILTER_NAMES = ("category", "price_min", "price_max", "tag")
CONTROL_NAMES = ("q", "mode", "page", "limit", "similar_to", "format")
ATTR_PREFIX = "attr."
_WORD = re.compile(r"\w+", re.UNICODE)


class SearchError(ValueError):
    """The query cannot be answered as asked; the message is shown to the user (HTTP 400)."""


class SearchUnavailable(SearchError):
    """The query is valid but the engine cannot answer it now (no active model for a vector search)."""


@dataclass
class SearchQuery:
    text: str | None = None
    image: "Image.Image | None" = None
    similar_to: str | None = None  # a product sku: "more like this"
    mode: str = "hybrid"
    # category, price_min, price_max, tag, attr.NAME -> values (the products API's filter names)
    filters: dict[str, list[str]] = field(default_factory=dict)
    page: int = 1
    limit: int = 24


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


def config() -> dict[str, Any]:
    """DEFAULTS overlaid with settings.MMSEARCH_SEARCH (WEIGHTS merged key by key)."""
    user = getattr(settings, "MMSEARCH_SEARCH", {}) or {}
    conf = {**DEFAULTS, **user}
    conf["WEIGHTS"] = {**DEFAULTS["WEIGHTS"], **(user.get("WEIGHTS") or {})}
    return conf


# --- parameters ---------------------------------------------------------------------------------------------

def _getlist(params, key: str) -> list[str]:
    if hasattr(params, "getlist"):
        return [str(v) for v in params.getlist(key)]
    value = params[key]
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def _int(name: str, raw: str, low: int, high: int) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise SearchError(f"{name} must be a whole number, not {raw!r}") from None
    if not low <= value <= high:
        raise SearchError(f"{name} must be between {low} and {high}, not {value}")
    return value


def _price(name: str, raw: str) -> Decimal:
    try:
        value = Decimal(raw.strip())
    except InvalidOperation:
        raise SearchError(f"{name} must be a number, not {raw!r}") from None
    if not value.is_finite() or value < 0:
        raise SearchError(f"{name} must be a non-negative number, not {raw!r}")
    return value


def check_text(text: str) -> str:
    """Strip and validate a text query (not empty, not over MAX_QUERY_CHARS)."""
    text = " ".join(text.split())
    if not text:
        raise SearchError("the query is empty; type what you are looking for")
    limit = config()["MAX_QUERY_CHARS"]
    if len(text) > limit:
        raise SearchError(f"the query is {len(text)} characters long; the limit is {limit}")
    return text


def parse_params(params) -> SearchQuery:
    """Build a SearchQuery from request parameters (QueryDict or dict); raises SearchError on bad input."""
    conf = config()
    unknown = sorted(k for k in params if k not in CONTROL_NAMES and k not in FILTER_NAMES and not k.startswith(ATTR_PREFIX))
    if unknown:
        raise SearchError(
            f"unknown parameter(s): {', '.join(unknown)}; allowed: {', '.join(CONTROL_NAMES + FILTER_NAMES)}, attr.NAME"
        )
    query = SearchQuery(limit=conf["DEFAULT_LIMIT"])
    if "q" in params:
        query.text = check_text(_getlist(params, "q")[-1])
    if "similar_to" in params:
        query.similar_to = _getlist(params, "similar_to")[-1].strip() or None
    if "mode" in params:
        mode = _getlist(params, "mode")[-1].strip().lower()
        if mode not in MODES:
            raise SearchError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        query.mode = mode
    if "page" in params:
        query.page = _int("page", _getlist(params, "page")[-1], 1, conf["MAX_PAGE"])
    if "limit" in params:
        query.limit = _int("limit", _getlist(params, "limit")[-1], 1, conf["MAX_LIMIT"])
    filters: dict[str, list[str]] = {}
    for key in params:
        if key in FILTER_NAMES or key.startswith(ATTR_PREFIX):
            values = [v.strip() for v in _getlist(params, key) if v.strip()]
            if not values:
                raise SearchError(f"filter {key} has no value")
            filters[key] = values
    check_filters(filters)
    query.filters = filters
    return query


def check_filters(filters: dict[str, list[str]]) -> None:
    """Validate filter names and values without running the search (raises SearchError)."""
    prices = {}
    for key, values in filters.items():
        if key in ("price_min", "price_max"):
            if len(values) != 1:
                raise SearchError(f"{key} takes one value")
            prices[key] = _price(key, values[0])
        elif key == "category":
            t = tables()
            paths = [v.strip().strip("/") for v in values]
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT path FROM {t.category} WHERE path = ANY(%s)", [paths])
                known = {row[0] for row in cursor.fetchall()}
            missing = [p for p in paths if p not in known]
            if missing:
                raise SearchError(f"unknown category {missing[0]!r}")
        elif key == "tag" or key.startswith(ATTR_PREFIX):
            pass
        else:
            raise SearchError(f"unknown filter {key!r}; use {', '.join(FILTER_NAMES)} or attr.NAME")
    if "price_min" in prices and "price_max" in prices and prices["price_min"] > prices["price_max"]:
        raise SearchError("price_min is above price_max")
    # The attribute filter validates its own names and values; run it on an empty queryset to surface errors.
    _attribute_filter(_product_model().objects.none(), filters)


# --- filters ------------------------------------------------------------------------------------------------

def _product_model():
    return apps.get_model(settings.MMSEARCH_PRODUCT_MODEL)


def _validation_message(exc) -> str:
    detail = getattr(exc, "detail", exc)
    if isinstance(detail, dict):
        key, value = next(iter(detail.items()))
        value = value[0] if isinstance(value, list) and value else value
        return f"{key}: {value}" if key != "detail" else str(value)
    if isinstance(detail, list) and detail:
        return str(detail[0])
    return str(detail)


def _attribute_filter(queryset, filters: dict[str, list[str]]):
    from django.http import QueryDict
    from rest_framework.exceptions import ValidationError

    from catalog.filters import filter_attributes  # the products API's attribute filter, reused as is

    attrs = QueryDict(mutable=True)
    for key, values in filters.items():
        if key.startswith(ATTR_PREFIX):
            attrs.setlist(key, values)
    if not attrs:
        return queryset
    try:
        return filter_attributes(queryset, attrs)
    except ValidationError as exc:
        raise SearchError(_validation_message(exc)) from None


def filtered_products(filters: dict[str, list[str]]):
    """The active products matching `filters`, as a queryset (the same semantics as the products API)."""
    from catalog.filters import category_q, split_tag

    Product = _product_model()
    queryset = Product.objects.filter(active=True)
    if "category" in filters:
        q = Q()
        for path in filters["category"]:
            q |= category_q(path)
        queryset = queryset.filter(q)
    if "price_min" in filters:
        queryset = queryset.filter(price__gte=_price("price_min", filters["price_min"][0]))
    if "price_max" in filters:
        queryset = queryset.filter(price__lte=_price("price_max", filters["price_max"][0]))
    if "tag" in filters:
        tag_model = Product._meta.get_field("product_tags").related_model
        for part in [v.strip() for raw in filters["tag"] for v in raw.split(",") if v.strip()]:
            queryset = queryset.filter(
                pk__in=tag_model.objects.filter(split_tag(part), status="accepted").values("product_id")
            )
    return _attribute_filter(queryset, filters)


def _all_active_sql() -> str:
    return f"SELECT id FROM {tables().product} WHERE active"


def filter_sql(filters: dict[str, list[str]]) -> tuple[str, list]:
    """SQL selecting the ids of the filtered products, and its parameters, for use in `id IN (...)`."""
    if not filters:
        return _all_active_sql(), []
    sql, params = filtered_products(filters).values("id").query.sql_with_params()
    return sql, list(params)


# --- query encoding -----------------------------------------------------------------------------------------

@dataclass
class Encoder:
    role: str
    model: Any
    model_key: str
    dim: int


def active_encoder(role: str) -> Encoder | None:
    """The configured plugin whose model_key is the active key for `role` (None if there is none)."""
    active = vectors.active_model(role)
    if active is None:
        return None
    for alias in model_settings():
        try:
            if alias_role(alias) != role:
                continue
            model = get_model(alias)
        except PluginError:
            continue
        # Query and stored vectors must come from the same model: never mix two keys in one search.
        if model.model_key == active.model_key:
            return Encoder(role, model, active.model_key, active.dim)
    return None


def encode_text(encoder: Encoder, text: str) -> np.ndarray:
    """The query vector for `text`, cached per (model_key, text) in the Django cache."""
    norm = " ".join(text.lower().split())
    key = "mmsearch:qvec:" + hashlib.sha256(f"{encoder.model_key}\0{norm}".encode()).hexdigest()
    cached = cache.get(key)
    if cached is not None:
        return np.frombuffer(cached, dtype=np.float32)
    vec = np.asarray(encoder.model.embed_texts([norm])[0], dtype=np.float32)
    cache.set(key, vec.tobytes(), config()["QUERY_CACHE_SECONDS"])
    return vec


# --- signals ------------------------------------------------------------------------------------------------

@dataclass
class QueryWords:
    """The query's words as the full-text configuration sees them."""

    lexemes: list[str]  # tsquery literals of the words that are not stop words, e.g. "'kurta'"
    known: list[str]  # those that occur in some active product's full-text vector
    unknown: list[str]  # words (as typed) that occur nowhere: likely typos, left to the trigram signal
    plain: bool  # no quotes or negation: the query may be relaxed to some of its words


def analyse_words(text: str) -> QueryWords:
    """One round trip: each word's lexeme and whether any active product has it (a GIN lookup per word)."""
    words = list(dict.fromkeys(w.lower() for w in _WORD.findall(text)))
    plain = '"' not in text and not re.search(r"(^|\s)-\w", text)
    if not words:
        return QueryWords([], [], [], plain)
    cfg = settings.MMSEARCH_FTS_CONFIG
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT w, q::text, (q::text <> '' AND EXISTS (SELECT 1 FROM "
            f"{tables().product} p WHERE p.search_vector @@ q AND p.active)) "
            "FROM unnest(%s::text[]) WITH ORDINALITY AS u(w, n), plainto_tsquery(%s::regconfig, w) AS q ORDER BY n",
            [words, cfg],
        )
        rows = cursor.fetchall()
    lexemes = [lx for _, lx, _ in rows if lx]
    known = list(dict.fromkeys(lx for _, lx, found in rows if found))
    unknown = [w for w, lx, found in rows if lx and not found and len(w) >= 3 and not w.isdigit()]
    return QueryWords(lexemes, known, unknown, plain)


def _some_of(lexemes: list[str]) -> str:
    """A tsquery matching at least two of the lexemes (any one when there are fewer than three)."""
    if len(lexemes) < 3:
        return " | ".join(f"({lx})" for lx in lexemes)
    pairs = [f"(({a}) & ({b}))" for i, a in enumerate(lexemes) for b in lexemes[i + 1:]]
    return " | ".join(pairs)


def _ranked(filters: dict[str, list[str]], score: tuple[str, list], match: tuple[str, list], k: int,
            exclude: list[int] | None = None) -> list[Candidate]:
    """The k filtered products with the highest `score` among those where `match` holds.

    Built on the filtered queryset itself, so the filter is a condition on the same rows the GIN index finds
    (no semi-join that would read every product to evaluate the filter first)."""
    from django.db.models import BooleanField, FloatField
    from django.db.models.expressions import RawSQL

    queryset = filtered_products(filters) if filters else _product_model().objects.filter(active=True)
    queryset = queryset.filter(RawSQL(match[0], match[1], output_field=BooleanField()))
    if exclude:
        queryset = queryset.exclude(id__in=exclude)
    rows = (
        queryset.annotate(_score=RawSQL(score[0], score[1], output_field=FloatField()))
        .order_by("-_score", "id").values_list("id", "_score")[:k]
    )
    return [Candidate(pid, float(value)) for pid, value in rows]


def lexical_candidates(text: str, filters: dict[str, list[str]], k: int, words: QueryWords | None = None,
                       need: int | None = None) -> list[Candidate]:
    """Full-text matches ranked by ts_rank_cd: products with all the words (websearch syntax) first; when those
    do not fill the `need` results asked for, products with at least two of the words (one for short queries).

    The relaxed stages rank every row they match (thousands for common words), so they run only when the
    strict matches leave the page short."""
    need = min(k, need or k)
    cfg = settings.MMSEARCH_FTS_CONFIG
    words = words or analyse_words(text)
    sv = f'"{tables().product}"."search_vector"'
    strict = (f"{sv} @@ websearch_to_tsquery(%s::regconfig, %s)", [cfg, text])
    found = _ranked(filters, (f"1.0 + ts_rank_cd({sv}, websearch_to_tsquery(%s::regconfig, %s))", [cfg, text]), strict, k)
    stages = []
    if words.plain and words.known and len(words.lexemes) > 1:
        stages.append((need, _some_of(words.known[:8])))
        if len(words.known) >= 3:
            # Still (almost) nothing: any one of the words, so the shopper sees the nearest matches.
            stages.append((10, " | ".join(f"({lx})" for lx in words.known[:8])))
    for wanted, tsquery in stages:
        if len(found) >= wanted:
            break
        partial = _ranked(
            filters, (f"ts_rank_cd({sv}, %s::tsquery)", [tsquery]), (f"{sv} @@ %s::tsquery", [tsquery]),
            k - len(found), exclude=[c.item_id for c in found],
        )
        for cand in partial:
            cand.extra["partial"] = True
        found += partial
    return found


def trigram_candidates(text: str, filters: dict[str, list[str]], k: int, threshold: float,
                       words: QueryWords | None = None) -> list[Candidate]:
    """Titles containing something like the query's unknown words (pg_trgm <%, GIN index product_title_trgm).

    Only words that match no product are looked up: they are the likely typos, and a short trigram query
    keeps the index lookup cheap."""
    words = words or analyse_words(text)
    if not words.unknown:
        return []
    typed = " ".join(words.unknown)
    title = f'"{tables().product}"."title"'
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('pg_trgm.word_similarity_threshold', %s, true)", [str(threshold)])
    return _ranked(filters, (f"word_similarity(%s, {title})", [typed]), (f"%s <%% {title}", [typed]), k)


def knn_sql(kind: str, dim: int, model_key: str, qvec: np.ndarray, fsql: str, fparams: list, k: int,
            *, exact: bool = False, exclude: int | None = None) -> tuple[str, list]:
    """SQL for the k nearest products (best vector per product) among the filtered ones, and its params.

    Index path: the ORDER BY matches the per-model HNSW partial index, so pgvector walks the graph and,
    with iterative scans on, keeps walking until enough rows pass the filter. Exact path: the filtered rows
    are scanned and sorted (the `+ 0` keeps the planner off the index), for when the walk ends early.
    """
    table = vectors.TABLES[kind]
    dist = vectors.distance_sql(dim).replace("vector::", "e.vector::", 1)
    image_col = "e.image_id" if kind == "image" else "NULL::bigint"
    literal = vectors.vector_literal(qvec)
    fetch = k * (config()["IMAGE_OVERFETCH"] if kind == "image" else 1)
    not_self = "AND e.product_id <> %s " if exclude is not None else ""
    extra = [exclude] if exclude is not None else []
    if exact:
        inner = (
            f"SELECT e.product_id, {image_col} AS image_id, {dist} + 0 AS distance FROM {table} e "
            f"JOIN ({fsql}) f ON f.id = e.product_id WHERE e.model_key = %s {not_self}"
            "ORDER BY distance LIMIT %s"
        )
        params = [literal, *fparams, model_key, *extra, 1_000_000]
    else:
        inner = (
            f"SELECT e.product_id, {image_col} AS image_id, {dist} AS distance FROM {table} e "
            # `IN (...) IS TRUE` keeps the filter a hashed per-row test on the index scan: Postgres cannot turn
            # it into a join the planner could drive from the filtered side, so the plan stays index-first.
            f"WHERE e.model_key = %s {not_self}AND (e.product_id IN ({fsql})) IS TRUE ORDER BY distance LIMIT %s"
        )
        params = [literal, model_key, *extra, *fparams, fetch]
    sql = (
        "SELECT product_id, image_id, distance FROM (SELECT DISTINCT ON (product_id) product_id, image_id, distance "
        f"FROM ({inner}) s ORDER BY product_id, distance) b ORDER BY distance, product_id LIMIT %s"
    )
    return sql, [*params, k]


def set_index_options(cursor, conf: dict, k: int) -> None:
    """Per-transaction pgvector settings: iterative scans for filtered queries and the search breadth."""
    cursor.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
    cursor.execute("SELECT set_config('hnsw.ef_search', %s, true)", [str(min(1000, max(conf["EF_SEARCH"], k)))])
    cursor.execute("SELECT set_config('hnsw.max_scan_tuples', %s, true)", [str(int(conf["MAX_SCAN_TUPLES"]))])


def vector_candidates(kind: str, encoder: Encoder, qvec: np.ndarray, fsql: str, fparams: list, k: int,
                      debug: dict, *, exclude: int | None = None) -> list[Candidate]:
    """kNN through the HNSW index; if it returns fewer than k products, an exact search over the filtered rows."""
    conf = config()
    if qvec.shape[0] != encoder.dim:
        raise SearchUnavailable(
            f"the {encoder.role} model {encoder.model_key} makes {qvec.shape[0]}-d vectors but the active index is "
            f"{encoder.dim}-d; re-activate the model"
        )
    with connection.cursor() as cursor:
        set_index_options(cursor, conf, k)
        sql, params = knn_sql(kind, encoder.dim, encoder.model_key, qvec, fsql, fparams, k, exclude=exclude)
        cursor.execute(sql, params)
        rows = cursor.fetchall()
        debug["exact"] = False
        if len(rows) < k:
            sql, params = knn_sql(kind, encoder.dim, encoder.model_key, qvec, fsql, fparams, k, exact=True, exclude=exclude)
            cursor.execute(sql, params)
            rows = cursor.fetchall()
            debug["exact"] = True
    out = []
    for pid, image_id, distance in rows:
        extra: dict = {"model_key": encoder.model_key}
        if image_id is not None:
            extra["image_id"] = image_id
        out.append(Candidate(pid, 1.0 - float(distance), extra))  # cosine similarity
    return out


# --- search -------------------------------------------------------------------------------------------------

def _product_vector(kind: str, model_key: str, product_id: int) -> np.ndarray | None:
    """The stored vector(s) of one product for model_key, averaged over its images and re-normalised."""
    table = vectors.TABLES[kind]
    with connection.cursor() as cursor:
        # As real[]: a raw cursor has no pgvector type adapter, so the vector column would arrive as text.
        cursor.execute(f"SELECT vector::real[] FROM {table} WHERE model_key = %s AND product_id = %s", [model_key, product_id])
        rows = [np.asarray(r[0], dtype=np.float32) for r in cursor.fetchall()]
    if not rows:
        return None
    vec = np.mean(rows, axis=0)
    return vec / max(float(np.linalg.norm(vec)), 1e-12)


def _hydrate(fused, image_hits: dict[int, int]) -> list[SearchHit]:
    Product = _product_model()
    ids = [f.item_id for f in fused]
    products = {
        p.id: p for p in Product.objects.filter(id__in=ids).select_related("category").prefetch_related("images")
    }
    hits = []
    for f in fused:
        p = products.get(f.item_id)
        if p is None:  # deleted between the candidate query and now
            continue
        images = list(p.images.all())
        best = next((im for im in images if im.id == image_hits.get(p.id)), images[0] if images else None)
        model_key = (f.parts.get("image_vector") or f.parts.get("text_vector") or {}).get("model_key")
        hits.append(SearchHit(
            product_id=p.id, sku=p.sku, title=p.title, price=p.price, currency=p.currency,
            image_url=best.file.url if best and best.file else None,
            category=p.category.path if p.category_id else None,
            score=round(f.score, 6), parts=f.parts, model_key=model_key,
        ))
    return hits


def search(query: SearchQuery) -> SearchResult:
    """Run a text, photo or more-like-this search with filters; returns one page of hits plus facets."""
    started = time.perf_counter()
    conf = config()
    if query.mode not in MODES:
        raise SearchError(f"mode must be one of {', '.join(MODES)}, not {query.mode!r}")
    if not 1 <= query.limit <= conf["MAX_LIMIT"]:
        raise SearchError(f"limit must be between 1 and {conf['MAX_LIMIT']}, not {query.limit}")
    if not 1 <= query.page <= conf["MAX_PAGE"]:
        raise SearchError(f"page must be between 1 and {conf['MAX_PAGE']}, not {query.page}")
    if query.page * query.limit > conf["MAX_RESULTS"]:
        raise SearchError(f"only the first {conf['MAX_RESULTS']} results can be paged through; narrow the search")
    given = [n for n, v in (("text", query.text), ("image", query.image), ("similar_to", query.similar_to)) if v is not None]
    if not given:
        raise SearchError("the query is empty; type what you are looking for or upload a photo")
    if len(given) > 1:
        raise SearchError(f"give one of a text query, a photo or similar_to, not {' and '.join(given)}")
    check_filters(query.filters)
    k = max(int(conf["CANDIDATES"]), query.page * query.limit)
    fsql, fparams = filter_sql(query.filters)
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
                words = analyse_words(text)
                run("lexical", lexical_candidates, text, query.filters, k, words, query.page * query.limit)
                # Partial matches rank as their own, lighter signal (WEIGHTS["lexical_partial"]).
                ranked["lexical_partial"] = [c for c in ranked["lexical"] if c.extra.pop("partial", False)]
                ranked["lexical"] = [c for c in ranked["lexical"] if c not in ranked["lexical_partial"]]
                run("trigram", trigram_candidates, text, query.filters, k, float(conf["TRIGRAM_THRESHOLD"]), words)
            if mode in ("hybrid", "semantic"):
                encoders = [(kind, active_encoder(role)) for kind, role in (("product", "text_embedder"), ("image", "embedder"))]
                encoders = [(kind, enc) for kind, enc in encoders if enc is not None]
                if not encoders and mode == "semantic":
                    raise SearchUnavailable("semantic search is not available: no embedding model is active yet")
                for kind, enc in encoders:
                    t0 = time.perf_counter()
                    qvec = encode_text(enc, text)
                    debug.setdefault("encode_ms", {})[enc.role] = round((time.perf_counter() - t0) * 1000, 2)
                    name = "text_vector" if kind == "product" else "image_vector"
                    run(name, vector_candidates, kind, enc, qvec, fsql, fparams, k)
        elif query.image is not None:
            mode = "semantic"
            enc = active_encoder("embedder")
            if enc is None:
                raise SearchUnavailable("search by photo is not available: no image embedding model is active yet")
            t0 = time.perf_counter()
            views = photo.PhotoViews.from_config(conf)
            qvec = photo.query_vectors(photo.embed_views(enc.model, [query.image], views))[0]
            debug["encode_ms"] = {"embedder": round((time.perf_counter() - t0) * 1000, 2)}
            debug["photo_views"] = views.count
            run("image_vector", vector_candidates, "image", enc, qvec, fsql, fparams, k)
        else:
            mode = "semantic"
            product = _product_model().objects.filter(sku=query.similar_to).first()
            if product is None:
                raise SearchError(f"unknown product {query.similar_to!r}")
            for kind, role, name in (("image", "embedder", "image_vector"), ("product", "text_embedder", "text_vector")):
                enc = active_encoder(role)
                qvec = _product_vector(kind, enc.model_key, product.id) if enc else None
                if qvec is not None:
                    run(name, vector_candidates, kind, enc, qvec, fsql, fparams, k, exclude=product.id)
            if not ranked:
                # No vectors yet: fall back to products whose text is like this product's title.
                mode = "lexical"
                run("lexical", lexical_candidates, product.title, query.filters, k + 1)
                ranked["lexical"] = [c for c in ranked["lexical"] if c.item_id != product.id]

    fused = rrf(ranked, conf["WEIGHTS"], float(conf["RRF_K"]))
    total = len(fused)
    start = (query.page - 1) * query.limit
    page = fused[start:start + query.limit]
    image_hits = {f.item_id: f.parts["image_vector"]["image_id"] for f in page if "image_id" in f.parts.get("image_vector", {})}
    hits = _hydrate(page, image_hits)
    facet_data = facets_mod.compute([f.item_id for f in fused], int(conf["PRICE_BUCKETS"]))
    return SearchResult(
        hits=hits, total=total, page=query.page, limit=query.limit, facets=facet_data, mode=mode,
        took_ms=round((time.perf_counter() - started) * 1000, 2), debug=debug,
    )
