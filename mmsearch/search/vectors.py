"""The vector store: rows keyed by model_key in one table per item kind, an HNSW index per model_key.

pgvector indexes need a fixed dimension, so each model_key gets a partial expression index on
`vector::vector(dim)` (or `::halfvec(dim)`) restricted to `model_key = '<key>'`. Queries must use the same
expression and predicate for the planner to pick the index; `distance_sql` builds it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence

import numpy as np
from django.db import connection, transaction

from mmsearch.models import ActiveModel, ImageEmbedding, ProductTextEmbedding

TABLES = {"image": ImageEmbedding._meta.db_table, "product": ProductTextEmbedding._meta.db_table}
_SAFE_KEY = re.compile(r"^[\w:.\-/@+]+$")


def _check_kind(kind: str) -> str:
    if kind not in TABLES:
        raise ValueError(f"unknown vector kind {kind!r}; use one of {', '.join(TABLES)}")
    return TABLES[kind]


def index_name(kind: str, model_key: str) -> str:
    digest = hashlib.sha1(model_key.encode()).hexdigest()[:12]
    return f"hnsw_{kind}_{digest}"


def vector_literal(vec: Sequence[float] | np.ndarray) -> str:
    return "[" + ",".join(f"{float(x):.7g}" for x in vec) + "]"


def cast_type(dim: int, halfvec: bool = False) -> str:
    return f"{'halfvec' if halfvec else 'vector'}({int(dim)})"


def ensure_index(kind: str, model_key: str, dim: int, *, halfvec: bool = False, m: int = 16, ef_construction: int = 64) -> str:
    """Create (if missing) the HNSW cosine index for one model_key; returns its name."""
    table = _check_kind(kind)
    if not _SAFE_KEY.match(model_key):
        raise ValueError(f"model_key {model_key!r} has characters not allowed in an index predicate")
    name = index_name(kind, model_key)
    opclass = "halfvec_cosine_ops" if halfvec else "vector_cosine_ops"
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE INDEX IF NOT EXISTS {name} ON {table} USING hnsw ((vector::{cast_type(dim, halfvec)}) {opclass}) "
            f"WITH (m = {int(m)}, ef_construction = {int(ef_construction)}) WHERE model_key = %s",
            [model_key],
        )
    return name


def drop_index(kind: str, model_key: str) -> None:
    _check_kind(kind)
    with connection.cursor() as cursor:
        cursor.execute(f"DROP INDEX IF EXISTS {index_name(kind, model_key)}")


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


def activate(alias: str, model_key: str, dim: int) -> ActiveModel:
    """Point `alias` at `model_key` in one statement (the blue/green switch)."""
    obj, _ = ActiveModel.objects.update_or_create(alias=alias, defaults={"model_key": model_key, "dim": dim})
    return obj
