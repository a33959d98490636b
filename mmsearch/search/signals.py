"""The search signals: each turns a query into a ranked candidate list restricted to the filtered products.

  lexical       websearch_to_tsquery over the products' full-text vector, ranked with ts_rank_cd (all words
                first, then some of them)
  trigram       pg_trgm word similarity of the query's unknown words to the title, for typos
  text_vector   kNN of the query's text_embedder vector over product-text vectors of the active key
  image_vector  kNN of the query's embedder vector (text-to-image, or photo-to-image) over image vectors of
                the active key; a product with several images counts once, by its best image
  understood    the products with every value the query's words name (query understanding), ranked by their
                text vector's similarity to the query
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from django.conf import settings
from django.core.cache import cache
from django.db import DEFAULT_DB_ALIAS, InterfaceError, OperationalError, connection, connections, transaction

from mmsearch.adapter import get_catalog
from mmsearch.plugins import PluginError, alias_role, get_model, model_settings
from mmsearch.search import vectors
from mmsearch.search.config import config
from mmsearch.search.fusion import Candidate
from mmsearch.search.params import SearchUnavailable

_WORD = re.compile(r"\w+", re.UNICODE)
logger = logging.getLogger(__name__)


def filter_sql(filters: dict[str, list[str]]) -> tuple[str, list]:
    """SQL selecting the ids of the filtered active products, and its parameters, for use in `id IN (...)`."""
    if not filters:
        return _all_products_sql()
    sql, params = get_catalog().products(filters).order_by().values("id").query.sql_with_params()
    return sql, list(params)


@lru_cache(maxsize=1)
def _all_products_sql() -> tuple[str, list]:
    sql, params = get_catalog().products({}).order_by().values("id").query.sql_with_params()
    return sql, list(params)


@dataclass
class Scope:
    """The products one request may return, and what a vector signal needs to choose its plan: whether any
    filter beyond the active test applies, how many products pass, their ids when they are few
    (<= EXACT_SCOPE_LIMIT) and their share of the catalog. Built once per request (scope_for)."""

    sql: str
    params: list
    filtered: bool = True
    count: int | None = None
    ids: list[int] | None = None
    share: float | None = None


def scope_for(filters: dict[str, list[str]], conf: dict) -> Scope:
    """The request's Scope: no query without filters; else one query counting the filtered products (and
    returning their ids when they are at most EXACT_SCOPE_LIMIT), beside the catalog's size estimate."""
    sql, params = filter_sql(filters)
    if not filters:
        return Scope(sql, params, filtered=False)
    table, _, _ = _columns()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), CASE WHEN count(*) <= %s THEN array_agg(f.id) END, "
            f"(SELECT reltuples FROM pg_class WHERE oid = %s::regclass) FROM ({sql}) f",
            [int(conf["EXACT_SCOPE_LIMIT"]), table, *params],
        )
        count, ids, estimate = cursor.fetchone()
    share = count / max(float(estimate or 0), float(count), 1.0)
    return Scope(sql, params, filtered=True, count=count, ids=list(ids or []) if ids is not None else None, share=share)


# --- running the signals' SQL side by side ----------------------------------------------------------------

# A request's independent queries (lexical, trigram, each vector signal, understood, facets) run here, each on
# this pool thread's own database connection and in its own transaction, so the request waits for its slowest
# query rather than for the sum. The threads keep their connections open between requests (at most
# SQL_THREADS per web process). Only sound when the request's own connection is in no transaction: then every
# connection sees the same committed catalog (see sql_work).
_SQL_POOL: ThreadPoolExecutor | None = None
_SQL_POOL_LOCK = threading.Lock()
_SQL_CONNECTIONS: list = []  # each pool thread's Django connection (close_sql_connections)


def _register_connection() -> None:
    _SQL_CONNECTIONS.append(connections[DEFAULT_DB_ALIAS])


def _sql_pool(threads: int) -> ThreadPoolExecutor:
    global _SQL_POOL
    with _SQL_POOL_LOCK:
        if _SQL_POOL is None:
            _SQL_POOL = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mmsearch-sql",
                                           initializer=_register_connection)
        return _SQL_POOL


def _in_own_transaction(fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    conn = connections[DEFAULT_DB_ALIAS]
    kept = conn.connection
    try:
        with transaction.atomic():  # SET LOCAL index options last for this query's transaction only
            return fn(*args, **kwargs)
    except (OperationalError, InterfaceError):
        # A kept connection the server has dropped (a restart, an idle timeout): the queries only read, so they
        # run again once, on a new connection.
        if kept is None or not kept.closed:
            raise
        if conn.connection is kept:
            conn.close()
    with transaction.atomic():
        return fn(*args, **kwargs)


class SqlWork:
    """Submit a request's independent queries: `submit(fn, *args)` returns a function that waits for and
    returns fn's result (raising what fn raised). Parallel: on the SQL pool; else at once, on the request's
    connection."""

    def __init__(self, threads: int = 0):
        self.pool = _sql_pool(threads) if threads > 0 else None

    @property
    def parallel(self) -> bool:
        return self.pool is not None

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[[], Any]:
        if self.pool is None:
            value = fn(*args, **kwargs)
            return lambda: value
        return self.pool.submit(_in_own_transaction, fn, args, kwargs).result


def sql_work(conf: dict) -> SqlWork:
    """SqlWork for one request: parallel with conf["SQL_THREADS"] threads, unless that is 0 or the caller's
    connection is inside a transaction (a test's, or a caller's atomic block), whose uncommitted rows other
    connections could not see; then sequential, on the caller's connection."""
    threads = int(conf.get("SQL_THREADS") or 0)
    return SqlWork(threads if threads > 0 and not connection.in_atomic_block else 0)


def close_sql_connections() -> None:
    """Close the SQL pool threads' connections (they reconnect on their next query): before a database they
    use is dropped, e.g. at the end of a test session."""
    for conn in list(_SQL_CONNECTIONS):
        conn.inc_thread_sharing()
        try:
            conn.close()
        finally:
            conn.dec_thread_sharing()


# --- query encoding -----------------------------------------------------------------------------------------

@dataclass
class Encoder:
    role: str
    model: Any
    model_key: str
    dim: int
    storage: str = "vector"  # the active index's storage (vectors.STORAGES)


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
            logger.exception("model alias %r cannot be built; it is left out of search", alias)
            continue
        # Query and stored vectors must come from the same model: never mix two keys in one search.
        if model.model_key == active.model_key:
            return Encoder(role, model, active.model_key, active.dim, active.storage)
    return None


def run_model(encoder: Encoder, fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args), a call into encoder's model; a model that fails is logged and answered as SearchUnavailable
    (503), so one broken plugin never takes the web process down or shows a traceback."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - any plugin failure is the server's condition, not the shopper's
        logger.exception("the %s model %s failed", encoder.role, encoder.model_key)
        raise SearchUnavailable(
            f"the {encoder.role} model {encoder.model_key} failed ({exc.__class__.__name__}: {exc}); "
            "search with it is unavailable until it is fixed (see the server log)"
        ) from exc


def encode_text(encoder: Encoder, text: str) -> np.ndarray:
    """The query vector for `text`, cached per (model_key, text) in the Django cache."""
    return encode_texts(encoder, [text])[0]


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


# Query encoders run here, beside each other and beside the request's lexical SQL: the model libraries release
# the GIL in their forward pass, so a request waits for its slowest encoder rather than for the sum.
_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="mmsearch-encode")


def start_encoding(encoder: Encoder, texts: list[str], spans: list[str] | None = None) -> Callable[[], tuple[np.ndarray, float]]:
    """Begin encode_texts(encoder, texts, spans) on the encoder pool; the returned function waits for it and
    gives (rows, ms of the encoding). A query whose vectors are all cached is answered at once."""
    t0 = time.perf_counter()
    keys = [_cache_key(encoder.model_key, _norm(t)) for t in texts]
    with _SPAN_LOCK:
        spans_cached = all((encoder.model_key, _norm(t)) in _SPAN_VECTORS for t in spans or [])
    if spans_cached and keys and len(cache.get_many(keys)) == len(set(keys)):
        rows = encode_texts(encoder, texts, spans)  # from the caches, no model call
        ms = (time.perf_counter() - t0) * 1000
        return lambda: (rows, ms)

    def work() -> tuple[np.ndarray, float]:
        t1 = time.perf_counter()
        rows = encode_texts(encoder, texts, spans)
        return rows, (time.perf_counter() - t1) * 1000

    future = _POOL.submit(work)
    return future.result


def _cache_key(model_key: str, norm: str) -> str:
    return "mmsearch:qvec:" + hashlib.sha256(f"{model_key}\0{norm}".encode()).hexdigest()


# Vectors of short spans (one or two words of a query, for query understanding), kept in the process: there
# are few distinct ones, and they recur across queries. Least recently used first out.
_SPAN_VECTORS: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
_SPAN_LOCK = threading.Lock()
SPAN_CACHE_SIZE = 50_000


def encode_texts(encoder: Encoder, texts: list[str], spans: list[str] | None = None) -> np.ndarray:
    """Vectors of texts + spans (rows in that order), embedding the ones not cached in one call (a query and its
    spans cost about one short forward pass). Texts are cached like encode_text (Django cache); spans in the
    process (_SPAN_VECTORS)."""
    spans = spans or []
    norms = [_norm(t) for t in texts]
    span_norms = [_norm(t) for t in spans]
    keys = {n: _cache_key(encoder.model_key, n) for n in norms}
    hits = cache.get_many(list(keys.values())) if keys else {}
    found = {n: np.frombuffer(hits[key], dtype=np.float32) for n, key in keys.items() if key in hits}
    found_spans: dict[str, np.ndarray] = {}
    with _SPAN_LOCK:
        for n in span_norms:
            vec = _SPAN_VECTORS.get((encoder.model_key, n))
            if vec is not None:
                _SPAN_VECTORS.move_to_end((encoder.model_key, n))
                found_spans[n] = vec
    missing = [n for n in dict.fromkeys(norms) if n not in found]
    missing_spans = [n for n in dict.fromkeys(span_norms) if n not in found_spans and n not in missing]
    if missing or missing_spans:
        batch = missing + missing_spans
        vecs = np.asarray(run_model(encoder, encoder.model.embed_texts, batch), dtype=np.float32)
        seconds = config()["QUERY_CACHE_SECONDS"]
        for n, vec in zip(missing, vecs):
            found[n] = vec
            cache.set(keys[n], vec.tobytes(), seconds)
        with _SPAN_LOCK:
            for n, vec in zip(batch[len(missing):], vecs[len(missing):]):
                found_spans[n] = vec
                _SPAN_VECTORS[(encoder.model_key, n)] = vec
            while len(_SPAN_VECTORS) > SPAN_CACHE_SIZE:
                _SPAN_VECTORS.popitem(last=False)
    rows = [found[n] for n in norms] + [found_spans.get(n, found.get(n)) for n in span_norms]
    return np.stack(rows) if rows else np.zeros((0, encoder.dim), dtype=np.float32)


# --- lexical ------------------------------------------------------------------------------------------------

@dataclass
class QueryWords:
    """The query's words as the full-text configuration sees them."""

    lexemes: list[str]  # tsquery literals of the words that are not stop words, e.g. "'kurta'"
    known: list[str]  # those that occur in some active product's full-text vector
    unknown: list[str]  # words (as typed) that occur nowhere: likely typos, left to the trigram signal
    plain: bool  # no quotes or negation: the query may be relaxed to some of its words
    # words (as typed) that occur in at most UNDERSTAND["TYPO_RARE"] products, with that count: a catalog's own
    # misspellings make a shopper's typo "known" ("wmens" in one title); understanding may still correct them
    rare: dict[str, int] = field(default_factory=dict)


@lru_cache(maxsize=1)
def _columns() -> tuple[str, str, str]:
    """(product table, full-text vector column, title column), quoted for SQL (fixed per process)."""
    catalog = get_catalog()
    table = catalog.products({}).model._meta.db_table
    return f'"{table}"', f'"{table}"."{catalog.search_vector_column}"', f'"{table}"."{catalog.title_column}"'


def analyse_words(text: str) -> QueryWords:
    """One round trip: each word's lexeme and how many active products have it, counted up to
    UNDERSTAND["TYPO_RARE"] + 1 (a GIN lookup per word)."""
    words = list(dict.fromkeys(w.lower() for w in _WORD.findall(text)))
    plain = '"' not in text and not re.search(r"(^|\s)-\w", text)
    if not words:
        return QueryWords([], [], [], plain)
    from django.db.models import BooleanField
    from django.db.models.expressions import RawSQL

    _, sv, _ = _columns()
    rare_max = max(int(config()["UNDERSTAND"].get("TYPO_RARE", 0)), 0)
    # A correlated subquery on the active products; `q` is the outer query's tsquery of one word. It counts
    # at most rare_max + 1 of them.
    has_word = get_catalog().products({}).filter(RawSQL(f"{sv} @@ q", [], output_field=BooleanField())).order_by()
    some_sql, some_params = has_word.values("id")[: rare_max + 1].query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT w, q::text, CASE WHEN q::text <> '' THEN (SELECT count(*) FROM ({some_sql}) AS found) ELSE 0 END "
            "FROM unnest(%s::text[]) WITH ORDINALITY AS u(w, n), plainto_tsquery(%s::regconfig, w) AS q ORDER BY n",
            [*some_params, words, settings.MMSEARCH_FTS_CONFIG],
        )
        rows = cursor.fetchall()
    lexemes = [lx for _, lx, _ in rows if lx]
    known = list(dict.fromkeys(lx for _, lx, count in rows if count))
    typo_like = lambda w: len(w) >= 3 and not w.isdigit()  # noqa: E731
    unknown = [w for w, lx, count in rows if lx and not count and typo_like(w)]
    rare = {w: int(count) for w, lx, count in rows if lx and 0 < count <= rare_max and typo_like(w)}
    return QueryWords(lexemes, known, unknown, plain, rare)


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

    queryset = get_catalog().products(filters).filter(RawSQL(match[0], match[1], output_field=BooleanField()))
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
    _, sv, _ = _columns()
    strict = (f"{sv} @@ websearch_to_tsquery(%s::regconfig, %s)", [cfg, text])
    found = _ranked(filters, (f"1.0 + ts_rank_cd({sv}, websearch_to_tsquery(%s::regconfig, %s))", [cfg, text]), strict, k)
    stages = []
    any_of = " | ".join(f"({lx})" for lx in words.known[:8])
    if words.plain and words.known and len(words.lexemes) > 1:
        stages.append((need, _some_of(words.known[:8])))
        if len(words.known) >= 3:
            # Still (almost) nothing: any one of the words, so the shopper sees the nearest matches.
            stages.append((10, any_of))
    for wanted, tsquery in stages:
        if len(found) >= wanted:
            break
        # Ranked by ts_rank over any of the words (more of them, in heavier fields, rank higher): a relaxed
        # stage matches thousands of rows for common words, and ts_rank_cd of the pairs query cost ~40 us a row
        # (190 ms for 5,000 matches) against ~2 us.
        partial = _ranked(
            filters, (f"ts_rank({sv}, %s::tsquery)", [any_of]), (f"{sv} @@ %s::tsquery", [tsquery]),
            k - len(found), exclude=[c.item_id for c in found],
        )
        for cand in partial:
            cand.extra["partial"] = True
        found += partial
    return found


def trigram_candidates(text: str, filters: dict[str, list[str]], k: int, threshold: float,
                       words: QueryWords | None = None) -> list[Candidate]:
    """Titles containing something like the query's unknown words (pg_trgm <%, GIN index on the title).

    Only words that match no product are looked up: they are the likely typos, and a short trigram query
    keeps the index lookup cheap."""
    words = words or analyse_words(text)
    if not words.unknown:
        return []
    typed = " ".join(words.unknown)
    _, _, title = _columns()
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('pg_trgm.word_similarity_threshold', %s, true)", [str(threshold)])
    return _ranked(filters, (f"word_similarity(%s, {title})", [typed]), (f"%s <%% {title}", [typed]), k)


# --- vectors ------------------------------------------------------------------------------------------------

def vector_candidates(kind: str, encoder: Encoder, qvec: np.ndarray, fsql: str | Scope, fparams: list, k: int,
                      debug: dict, *, exclude: int | None = None) -> list[Candidate]:
    """kNN of qvec among the allowed products, by the cheapest plan that is sound for the scope.

    `fsql` is a Scope (scope_for; the engine's requests) or the SQL of the allowed ids (then: the index plan).
    No filter, or a broad one: the bare index scan with its rows tested afterwards (`post`); a small filtered
    set: an exact search over its ids (`ids`); otherwise, or when `post` comes back short, the HNSW walk with
    the filter on the scan (`index`); if that still returns fewer than k products, an exact search over the
    filtered rows (debug: plan, exact)."""
    conf = config()
    if qvec.shape[0] != encoder.dim:
        raise SearchUnavailable(
            f"the {encoder.role} model {encoder.model_key} makes {qvec.shape[0]}-d vectors but the active index is "
            f"{encoder.dim}-d; re-activate the model"
        )
    scope = fsql if isinstance(fsql, Scope) else Scope(fsql, list(fparams))
    # Image rows read per wanted product: up to IMAGE_OVERFETCH (products with several images still fill k);
    # an unfiltered search first reads only the catalog's mean images per product, and more if that is short.
    fetch = k * (int(conf["IMAGE_OVERFETCH"]) if kind == "image" else 1)
    half = encoder.storage == "halfvec"
    plans: list[tuple[str, int, dict]] = []  # (plan, rows fetched, options)
    if scope.ids is not None:
        plans.append(("ids", fetch, {"ids": scope.ids}))
    else:
        if not scope.filtered:
            # Inactive products are rare: a tenth more rows than needed almost always fills k.
            mean = math.ceil(k * vectors.images_per_product(encoder.model_key)) if kind == "image" else fetch
            for rows_wanted in dict.fromkeys((min(mean, fetch), fetch)):
                plans.append(("post", rows_wanted, {"over": rows_wanted + rows_wanted // 10 + 10}))
        elif scope.share and scope.share >= float(conf["POST_FILTER_SHARE"]):
            plans.append(("post", fetch, {"over": min(int(fetch * 1.3 / scope.share) + 10, int(conf["MAX_SCAN_TUPLES"]))}))
        plans += [("index", fetch, {}), ("exact", fetch, {})]
    with connection.cursor() as cursor:
        if scope.ids is None:  # the exact search over ids reads no index
            vectors.set_index_options(cursor, conf, k)
        for plan, rows_wanted, options in plans:
            sql, params = vectors.knn_sql(kind, encoder.dim, encoder.model_key, qvec, scope.sql, scope.params, k,
                                          rows_wanted, exclude=exclude, plan=plan, halfvec=half, **options)
            cursor.execute(sql, params)
            rows = cursor.fetchall()
            if len(rows) >= k or plan in ("ids", "exact"):
                break
    debug["plan"] = plan
    debug["exact"] = plan in ("ids", "exact")
    out = []
    for pid, image_id, distance in rows:
        extra: dict = {"model_key": encoder.model_key}
        if image_id is not None:
            extra["image_id"] = image_id
        out.append(Candidate(pid, 1.0 - float(distance), extra))  # cosine similarity
    return out


# --- understood ---------------------------------------------------------------------------------------------

def understood_candidates(text: str, filters: dict[str, list[str]], named: dict[str, list], k: int,
                          encoder: Encoder | None, qvec: np.ndarray | None, debug: dict,
                          words: QueryWords | None = None) -> list[Candidate]:
    """The filtered products that have every value the query names ({filter: [Understood, ...]}: any of a
    filter's values), ranked by their text vector's similarity to the query (exactly when there are at most
    UNDERSTAND["EXACT_LIMIT"], else through the index), or by full-text rank when no text model is active.
    When no product has them all, the least confident filter is dropped until some do."""
    conf = config()
    limit = int(conf["UNDERSTAND"]["EXACT_LIMIT"])
    order = sorted(named, key=lambda f: (max(u.confidence for u in named[f]), f), reverse=True)
    catalog = get_catalog()
    while order:
        wanted = {f: list(dict.fromkeys(u.value for u in named[f])) for f in order}
        ids = list(catalog.products_having(filters, wanted).order_by().values_list("id", flat=True)[: limit + 1])
        if ids:
            break
        order = order[:-1]
    else:
        debug["filters"] = []
        return []
    debug["filters"] = order
    debug["matching"] = len(ids) if len(ids) <= limit else f">{limit}"
    if encoder is not None and qvec is not None:
        if len(ids) <= limit:
            scope = Scope("", [], ids=ids)  # the exact plan over these ids needs no filter SQL
        else:
            fsql, fparams = catalog.products_having(filters, wanted).values("id").query.sql_with_params()
            scope = Scope(fsql, list(fparams))
        return vector_candidates("product", encoder, qvec, scope, [], k, debug)
    # No text model: the products with the values, by full-text rank of the query's words (any of them).
    words = words or analyse_words(text)
    _, sv, _ = _columns()
    tsquery = " | ".join(f"({lx})" for lx in words.known[:8])
    score = (f"ts_rank_cd({sv}, %s::tsquery)", [tsquery]) if tsquery else ("0", [])
    from django.db.models import FloatField
    from django.db.models.expressions import RawSQL

    rows = (
        catalog.products_having(filters, wanted).annotate(_score=RawSQL(score[0], score[1], output_field=FloatField()))
        .order_by("-_score", "id").values_list("id", "_score")[:k]
    )
    return [Candidate(pid, float(value)) for pid, value in rows]


def having(ids: list[int], wanted: dict[str, list[str]]) -> dict[str, set[int]]:
    """{filter: which of these products have any of its values} for each filter of `wanted` (the boosts' check)."""
    return get_catalog().which_have(ids, wanted)
