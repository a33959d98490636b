"""The vector store: rows keyed by model_key in one table per item kind, an HNSW index per model_key.

pgvector indexes need a fixed dimension, so each model_key gets a partial expression index on
`vector::vector(dim)` (or `::halfvec(dim)`, the float16 storage) restricted to `model_key = '<key>'`. Queries
must use the same expression and predicate for the planner to pick the index; `distance_sql` builds it, and
the active model's `storage` says which of the two a search uses.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from django.db import connection, transaction

from mmsearch.adapter import id_array
from mmsearch.models import ActiveModel, ImageEmbedding, ProductTextEmbedding

TABLES = {"image": ImageEmbedding._meta.db_table, "product": ProductTextEmbedding._meta.db_table}
# How an index stores vectors: float32 ("vector") or float16 ("halfvec", about half the index size).
STORAGES = ("vector", "halfvec")
_SAFE_KEY = re.compile(r"^[\w:.\-/@+]+$")


def _check_kind(kind: str) -> str:
    if kind not in TABLES:
        raise ValueError(f"unknown vector kind {kind!r}; use one of {', '.join(TABLES)}")
    return TABLES[kind]


def check_storage(storage: str) -> str:
    if storage not in STORAGES:
        raise ValueError(f"unknown vector storage {storage!r}; use one of {', '.join(STORAGES)}")
    return storage


def index_name(kind: str, model_key: str, storage: str = "vector") -> str:
    digest = hashlib.sha1(model_key.encode()).hexdigest()[:12]
    return f"hnsw_{kind}_{digest}" if check_storage(storage) == "vector" else f"hnswh_{kind}_{digest}"


def vector_literal(vec: Sequence[float] | np.ndarray) -> str:
    return "[" + ",".join(f"{float(x):.7g}" for x in vec) + "]"


def cast_type(dim: int, halfvec: bool = False) -> str:
    return f"{'halfvec' if halfvec else 'vector'}({int(dim)})"


def ensure_index(kind: str, model_key: str, dim: int, *, halfvec: bool = False, storage: str | None = None,
                 m: int = 16, ef_construction: int = 64) -> str:
    """Create (if missing) the HNSW cosine index for one model_key in `storage` (or halfvec=True); its name."""
    table = _check_kind(kind)
    storage = check_storage(storage or ("halfvec" if halfvec else "vector"))
    half = storage == "halfvec"
    if not _SAFE_KEY.match(model_key):
        raise ValueError(f"model_key {model_key!r} has characters not allowed in an index predicate")
    name = index_name(kind, model_key, storage)
    opclass = "halfvec_cosine_ops" if half else "vector_cosine_ops"
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE INDEX IF NOT EXISTS {name} ON {table} USING hnsw ((vector::{cast_type(dim, half)}) {opclass}) "
            f"WITH (m = {int(m)}, ef_construction = {int(ef_construction)}) WHERE model_key = %s",
            [model_key],
        )
    return name


def index_storages(kind: str, model_key: str) -> list[str]:
    """The storages that have an HNSW index for this kind and model_key."""
    _check_kind(kind)
    names = {index_name(kind, model_key, s): s for s in STORAGES}
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname FROM pg_indexes WHERE indexname = ANY(%s)", [list(names)])
        return [names[row[0]] for row in cursor.fetchall()]


def index_bytes(kind: str, model_key: str, storage: str = "vector") -> int | None:
    """On-disk size of one HNSW index (None when it does not exist)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_relation_size(to_regclass(%s))", [index_name(kind, model_key, storage)])
        return cursor.fetchone()[0]


def drop_index(kind: str, model_key: str, storage: str | None = None) -> None:
    """Drop the HNSW index of one storage, or (storage None) of every storage."""
    _check_kind(kind)
    with connection.cursor() as cursor:
        for s in ([storage] if storage else STORAGES):
            cursor.execute(f"DROP INDEX IF EXISTS {index_name(kind, model_key, s)}")


def distance_sql(dim: int, halfvec: bool = False) -> str:
    """SQL for cosine distance between the stored vector and a %s query parameter, matching the index."""
    t = cast_type(dim, halfvec)
    return f"(vector::{t} <=> %s::{t})"


def upsert_image_vectors(model_key: str, rows: Iterable[tuple[int, int, np.ndarray]]) -> int:
    """Insert or replace (image_id, product_id, vector) rows for model_key; returns rows written."""
    rows = list(rows)
    if not rows:
        return 0
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.executemany(
            f"INSERT INTO {TABLES['image']} (image_id, product_id, model_key, vector, created_at) "
            "VALUES (%s, %s, %s, %s::vector, now()) "
            "ON CONFLICT (image_id, model_key) DO UPDATE SET vector = EXCLUDED.vector, product_id = EXCLUDED.product_id",
            [(image_id, product_id, model_key, vector_literal(vec)) for image_id, product_id, vec in rows],
        )
    return len(rows)


def upsert_product_vectors(model_key: str, rows: Iterable[tuple[int, str, np.ndarray]]) -> int:
    """Insert or replace (product_id, text_sha256, vector) rows for model_key; returns rows written."""
    rows = list(rows)
    if not rows:
        return 0
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.executemany(
            f"INSERT INTO {TABLES['product']} (product_id, model_key, vector, text_sha256, created_at, updated_at) "
            "VALUES (%s, %s, %s::vector, %s, now(), now()) "
            "ON CONFLICT (product_id, model_key) DO UPDATE SET vector = EXCLUDED.vector, "
            "text_sha256 = EXCLUDED.text_sha256, updated_at = now()",
            [(product_id, model_key, vector_literal(vec), sha) for product_id, sha, vec in rows],
        )
    return len(rows)


def active_model(alias: str) -> ActiveModel | None:
    """The model_key currently answering searches for `alias` (None before the first activation)."""
    return ActiveModel.objects.filter(alias=alias).first()


def activate(alias: str, model_key: str, dim: int, storage: str = "vector") -> ActiveModel:
    """Point `alias` at `model_key` (searched through its `storage` index) in one statement (the blue/green
    switch)."""
    obj, _ = ActiveModel.objects.update_or_create(
        alias=alias, defaults={"model_key": model_key, "dim": dim, "storage": check_storage(storage)}
    )
    return obj


def use_storage(slot: str, kinds: Sequence[str], model_key: str, dim: int, storage: str) -> ActiveModel:
    """Search `slot`'s model_key through `storage` indexes: build them, switch the slot in one statement, then
    drop the other storage's indexes (a later switch back rebuilds them)."""
    check_storage(storage)
    for kind in kinds:
        ensure_index(kind, model_key, dim, storage=storage)
    active = activate(slot, model_key, dim, storage)
    in_use = set(ActiveModel.objects.filter(model_key=model_key).values_list("storage", flat=True))
    for kind in kinds:
        for other in STORAGES:
            if other not in in_use:
                drop_index(kind, model_key, other)
    return active


# --- pipeline and blue/green helpers ------------------------------------------------------------------------

def catalog_model(kind: str):
    """The catalog model whose rows `kind` vectors describe (the target of the vector table's foreign key)."""
    _check_kind(kind)
    return ImageEmbedding._meta.get_field("image").related_model if kind == "image" else (
        ProductTextEmbedding._meta.get_field("product").related_model
    )


def embedded_ids(kind: str, model_key: str, ids: Iterable[int] | None = None) -> set[int]:
    """Ids of the items (images or products) that already have a vector for model_key."""
    model = ImageEmbedding if kind == "image" else ProductTextEmbedding
    _check_kind(kind)
    field = "image_id" if kind == "image" else "product_id"
    qs = model.objects.filter(model_key=model_key)
    if ids is not None:
        qs = qs.filter(**{f"{field}__in": list(ids)})
    return set(qs.values_list(field, flat=True))


def image_vectors(model_key: str, image_ids: Iterable[int]) -> dict[int, np.ndarray]:
    """{image_id: its stored vector} for model_key (images without one are left out)."""
    with connection.cursor() as cursor:
        # As real[]: a raw cursor has no pgvector type adapter.
        cursor.execute(
            f"SELECT image_id, vector::real[] FROM {TABLES['image']} WHERE model_key = %s AND image_id = ANY(%s)",
            [model_key, list(image_ids)],
        )
        return {image_id: np.asarray(vec, dtype=np.float32) for image_id, vec in cursor.fetchall()}


def text_hashes(model_key: str, product_ids: Iterable[int]) -> dict[int, str]:
    """{product_id: text_sha256} of the stored product-text vectors for model_key."""
    return dict(
        ProductTextEmbedding.objects.filter(model_key=model_key, product_id__in=list(product_ids)).values_list(
            "product_id", "text_sha256"
        )
    )


@dataclass(frozen=True)
class Coverage:
    kind: str
    total: int
    embedded: int
    failed: int

    @property
    def missing(self) -> int:
        return max(0, self.total - self.embedded - self.failed)

    @property
    def complete(self) -> bool:
        return self.missing == 0

    def __str__(self) -> str:
        return f"{self.kind}s: {self.embedded}/{self.total} embedded, {self.failed} failed, {self.missing} missing"


def coverage(kind: str, model_key: str) -> Coverage:
    """How many catalog items of `kind` have a vector (or a recorded permanent failure) for model_key."""
    from mmsearch.models import EmbeddingFailure

    table = _check_kind(kind)
    item = "image_id" if kind == "image" else "product_id"
    catalog_table = catalog_model(kind)._meta.db_table
    with connection.cursor() as cursor:
        # Counted against the catalog so rows of deleted items (cascade-deleted anyway) never inflate coverage.
        cursor.execute(
            f"SELECT (SELECT count(*) FROM {catalog_table}), "
            f"(SELECT count(*) FROM {table} e JOIN {catalog_table} c ON c.id = e.{item} WHERE e.model_key = %s)",
            [model_key],
        )
        total, embedded = cursor.fetchone()
    failed = EmbeddingFailure.objects.filter(kind=kind, model_key=model_key).count()
    return Coverage(kind, total, embedded, failed)


def stored_keys() -> dict[str, dict[str, int]]:
    """{model_key: {"image": rows, "product": rows}} for every key in the store."""
    out: dict[str, dict[str, int]] = {}
    with connection.cursor() as cursor:
        for kind, table in TABLES.items():
            cursor.execute(f"SELECT model_key, count(*) FROM {table} GROUP BY model_key")
            for key, count in cursor.fetchall():
                out.setdefault(key, {"image": 0, "product": 0})[kind] = count
    return out


def rename_model_key(old: str, new: str, dim: int) -> dict[str, int]:
    """Move every vector, failure and search slot of `old` to `new` in one transaction, and rebuild the HNSW
    indexes under the new key (their predicate names the key); returns rows moved per kind."""
    from mmsearch.models import EmbeddingFailure, IndexJob

    if not _SAFE_KEY.match(new):
        raise ValueError(f"model_key {new!r} has characters not allowed in an index predicate")
    moved = {}
    with transaction.atomic():
        for kind, table in TABLES.items():
            storages = index_storages(kind, old) or ["vector"]
            with connection.cursor() as cursor:
                cursor.execute(f"UPDATE {table} SET model_key = %s WHERE model_key = %s", [new, old])
                moved[kind] = cursor.rowcount
            drop_index(kind, old)
            if moved[kind]:
                for storage in storages:
                    ensure_index(kind, new, dim, storage=storage)
        EmbeddingFailure.objects.filter(model_key=old).update(model_key=new)
        ActiveModel.objects.filter(model_key=old).update(model_key=new)
        IndexJob.objects.filter(model_key=old).update(model_key=new)
    return moved


def delete_model_key(model_key: str) -> dict[str, int]:
    """Delete every vector and failure row of model_key and its HNSW indexes; returns rows deleted per kind."""
    from mmsearch.models import EmbeddingFailure

    deleted = {}
    with transaction.atomic():
        for kind, table in TABLES.items():
            with connection.cursor() as cursor:
                cursor.execute(f"DELETE FROM {table} WHERE model_key = %s", [model_key])
                deleted[kind] = cursor.rowcount
            drop_index(kind, model_key)
        EmbeddingFailure.objects.filter(model_key=model_key).delete()
    return deleted


# --- queries ------------------------------------------------------------------------------------------------

PLANS = ("index", "post", "ids", "exact")


def knn_sql(kind: str, dim: int, model_key: str, qvec: np.ndarray, fsql: str, fparams: list, k: int, fetch: int,
            *, exact: bool = False, exclude: int | None = None, plan: str | None = None, over: int | None = None,
            ids: Sequence[int] | None = None, halfvec: bool = False) -> tuple[str, list]:
    """SQL for the k nearest products (best vector per product) among the allowed ones, and its params.

    `fsql` selects the ids of the products allowed; `fetch` rows are read (more than k for images, so products
    with several images still fill k). Plans:
      index  the ORDER BY matches the per-model HNSW partial index and the filter is a per-row test on the
             index scan, so with iterative scans on pgvector keeps walking until enough rows pass it; the test
             is a hashed subplan over every allowed product, built once per query.
      post   the bare index scan for `over` rows, then the filter tested on those rows only, one primary-key
             probe each: the cheap plan when most products pass (no filter, or a broad one); it may return
             fewer than k, and the caller then falls back.
      ids    an exact search over the vectors of `ids` (a small filtered set, through the (model_key, product)
             index): every match, sorted.
      exact  an exact search over the filtered rows (the `+ 0` keeps the planner off the index), for when the
             walk ends early.
    """
    table = _check_kind(kind)
    plan = plan or ("exact" if exact else "index")
    if plan not in PLANS:
        raise ValueError(f"unknown plan {plan!r}; use one of {', '.join(PLANS)}")
    dist = distance_sql(dim, halfvec).replace("vector::", "e.vector::", 1)
    image_col = "e.image_id" if kind == "image" else "NULL::bigint"
    literal = vector_literal(qvec)
    not_self = "AND e.product_id <> %s " if exclude is not None else ""
    extra = [exclude] if exclude is not None else []
    # The exact plans read every matching row; a product has one text vector per model_key (a unique
    # constraint), so for texts the first `fetch` rows are already k products: a top-N sort instead of a full one.
    every = max(k, fetch) if kind == "product" else 1_000_000
    if plan == "exact":
        inner = (
            f"SELECT e.product_id, {image_col} AS image_id, {dist} + 0 AS distance FROM {table} e "
            f"JOIN ({fsql}) f ON f.id = e.product_id WHERE e.model_key = %s {not_self}"
            "ORDER BY distance LIMIT %s"
        )
        params = [literal, *fparams, model_key, *extra, every]
    elif plan == "ids":
        inner = (
            f"SELECT e.product_id, {image_col} AS image_id, {dist} + 0 AS distance FROM {table} e "
            f"WHERE e.model_key = %s AND e.product_id = ANY(%s::bigint[]) {not_self}ORDER BY distance LIMIT %s"
        )
        params = [literal, model_key, id_array(ids or []), *extra, every]
    elif plan == "post":
        # LATERAL ... LIMIT 1 cannot be flattened into a join, so the filter runs per fetched row (a primary
        # key probe), never over the whole catalog.
        inner = (
            f"SELECT s.* FROM (SELECT e.product_id, {image_col} AS image_id, {dist} AS distance FROM {table} e "
            f"WHERE e.model_key = %s {not_self}ORDER BY distance LIMIT %s) s "
            f"CROSS JOIN LATERAL (SELECT 1 FROM ({fsql}) f WHERE f.id = s.product_id LIMIT 1) allowed"
        )
        params = [literal, model_key, *extra, int(over or fetch), *fparams]
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


_IMAGES_PER_PRODUCT: dict[str, tuple[float, float]] = {}  # model_key -> (read at, mean images per product)
_IMAGES_LOCK = threading.Lock()
IMAGES_PER_PRODUCT_TTL = 600.0


def images_per_product(model_key: str) -> float:
    """The mean number of image vectors per product of `model_key` (at least 1), re-read every
    IMAGES_PER_PRODUCT_TTL seconds: how many image rows a kNN must read to fill k products."""
    now = time.monotonic()
    with _IMAGES_LOCK:
        cached = _IMAGES_PER_PRODUCT.get(model_key)
    if cached and now - cached[0] < IMAGES_PER_PRODUCT_TTL:
        return cached[1]
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*), count(DISTINCT product_id) FROM {TABLES['image']} WHERE model_key = %s",
                       [model_key])
        rows, products = cursor.fetchone()
    mean = max(1.0, rows / products) if products else 1.0
    with _IMAGES_LOCK:
        _IMAGES_PER_PRODUCT[model_key] = (now, mean)
    return mean


def set_index_options(cursor, conf: dict, k: int) -> None:
    """Per-transaction pgvector settings: iterative scans for filtered queries and the search breadth."""
    cursor.execute(
        "SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true), set_config('hnsw.ef_search', %s, true), "
        "set_config('hnsw.max_scan_tuples', %s, true)",
        [str(min(1000, max(conf["EF_SEARCH"], k))), str(int(conf["MAX_SCAN_TUPLES"]))],
    )


def product_vector(kind: str, model_key: str, product_id: int) -> np.ndarray | None:
    """The stored vector(s) of one product for model_key, averaged over its images and re-normalised."""
    table = _check_kind(kind)
    with connection.cursor() as cursor:
        # As real[]: a raw cursor has no pgvector type adapter, so the vector column would arrive as text.
        cursor.execute(f"SELECT vector::real[] FROM {table} WHERE model_key = %s AND product_id = %s", [model_key, product_id])
        rows = [np.asarray(r[0], dtype=np.float32) for r in cursor.fetchall()]
    if not rows:
        return None
    vec = np.mean(rows, axis=0)
    return vec / max(float(np.linalg.norm(vec)), 1e-12)
