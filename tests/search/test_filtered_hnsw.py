"""Filtered vector search on a catalog big enough for the planner to choose the HNSW index by itself."""

from __future__ import annotations

import pytest
from django.db import connection, transaction

from catalog.models import Category, Product
from mmsearch.search import signals, vectors
from mmsearch.search.config import config
from tests.search.conftest import random_unit

N = 20_000
DIM = 32
KEY = "random:32"


@pytest.fixture(scope="module")
def big_catalog(django_db_setup, django_db_blocker):
    """20k products in 100 buckets (attr.bucket = i % 100, so one bucket is 1% of the catalog), one vector each.

    Built once for the module (outside the per-test transactions) and removed afterwards."""
    with django_db_blocker.unblock():
        category = Category.objects.get_or_create_path("Things/Widgets")
        Product.objects.bulk_create(
            [Product(sku=f"w{i}", title=f"Widget {i}", category=category, attributes={"bucket": str(i % 100)}) for i in range(N)],
            batch_size=5000,
        )
        ids = list(Product.objects.filter(category=category).order_by("id").values_list("id", flat=True))
        vecs = random_unit(N, DIM, seed=1)
        vectors.upsert_product_vectors(KEY, [(pid, "x", vecs[i]) for i, pid in enumerate(ids)])
        vectors.ensure_index("product", KEY, DIM)
        with connection.cursor() as cursor:
            # Fresh statistics, as autovacuum would have after a real import: the planner sees 20k rows.
            cursor.execute(f"ANALYZE {Product._meta.db_table}")
            cursor.execute(f"ANALYZE {vectors.TABLES['product']}")
        yield ids
        vectors.drop_index("product", KEY)
        Product.objects.filter(category=category).delete()
        category.delete()
        Category.objects.filter(path="Things").delete()


def _explain(sql: str, params: list) -> str:
    with connection.cursor() as cursor:
        vectors.set_index_options(cursor, config(), 24)
        cursor.execute("EXPLAIN " + sql, params)
        return "\n".join(row[0] for row in cursor.fetchall())


@pytest.mark.django_db
def test_one_percent_filter_uses_hnsw_and_fills_the_page(big_catalog):
    query = random_unit(1, DIM, seed=7)[0]
    enc = signals.Encoder("text_embedder", None, KEY, DIM)
    filters = {"attr.bucket": ["7"]}
    fsql, fparams = signals.filter_sql(filters)
    with transaction.atomic():
        sql, params = vectors.knn_sql("product", DIM, KEY, query, fsql, fparams, 24, 24)
        plan = _explain(sql, params)
        assert vectors.index_name("product", KEY) in plan, plan  # the planner picked the HNSW index itself
        debug: dict = {}
        got = signals.vector_candidates("product", enc, query, fsql, fparams, 24, debug)
    assert len(got) == 24
    assert debug["exact"] is False  # the iterative index scan alone filled the page
    # Every hit is in the bucket, and the hits are the true 24 nearest of the bucket (exact ground truth).
    in_bucket = set(Product.objects.filter(attributes__bucket="7").values_list("id", flat=True))
    assert {c.item_id for c in got} <= in_bucket
    vecs = random_unit(N, DIM, seed=1)
    pos = {pid: i for i, pid in enumerate(big_catalog)}
    truth = sorted(in_bucket, key=lambda pid: -float(vecs[pos[pid]] @ query))[:24]
    recall = len({c.item_id for c in got} & set(truth)) / 24
    assert recall >= 0.9, recall


@pytest.mark.django_db
def test_exact_search_takes_over_when_the_index_walk_ends_early(big_catalog, settings):
    # A scan budget far below what a 1% filter needs: the index returns too few, the exact path fills the page.
    settings.MMSEARCH_SEARCH = {**settings.MMSEARCH_SEARCH, "MAX_SCAN_TUPLES": 50, "EF_SEARCH": 10}
    query = random_unit(1, DIM, seed=8)[0]
    enc = signals.Encoder("text_embedder", None, KEY, DIM)
    fsql, fparams = signals.filter_sql({"attr.bucket": ["3"]})
    with transaction.atomic():
        debug: dict = {}
        got = signals.vector_candidates("product", enc, query, fsql, fparams, 24, debug)
    assert debug["exact"] is True
    assert len(got) == 24
    in_bucket = set(Product.objects.filter(attributes__bucket="3").values_list("id", flat=True))
    vecs = random_unit(N, DIM, seed=1)
    pos = {pid: i for i, pid in enumerate(big_catalog)}
    truth = sorted(in_bucket, key=lambda pid: -float(vecs[pos[pid]] @ query))[:24]
    assert [c.item_id for c in got] == truth  # exact means exact
