"""The request path's plans and counts: halfvec storage through activation and search, the vector plan chosen by
the filter's size (each one's answer checked against the exact one), matching-only totals and facets, filters
checked once, the query-vector cache's size and cost, one query for facets and one for the cards."""

from __future__ import annotations

import io

import numpy as np
import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from catalog.models import Product
from mmsearch.adapter import get_catalog
from mmsearch.models import ActiveModel
from mmsearch.search import signals, vectors
from mmsearch.search.config import config
from mmsearch.search.engine import matching, search
from mmsearch.search.fusion import Fused
from mmsearch.search.params import SearchQuery, parse_params


def _index_exists(name: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_indexes WHERE indexname = %s", [name])
        return cursor.fetchone()[0] == 1


@pytest.mark.django_db(transaction=True)  # CREATE INDEX after the shop's writes
def test_activate_with_halfvec_storage_searches_through_the_halfvec_index(shop):
    key = ActiveModel.objects.get(alias="text_embedder").model_key
    out = io.StringIO()
    call_command("activate_model", "text_embedder", "--storage", "halfvec", stdout=out)
    assert "(halfvec)" in out.getvalue()
    active = ActiveModel.objects.get(alias="text_embedder")
    assert active.storage == "halfvec"
    assert _index_exists(vectors.index_name("product", key, "halfvec"))
    assert not _index_exists(vectors.index_name("product", key, "vector"))

    enc = signals.active_encoder("text_embedder")
    assert enc.storage == "halfvec"
    qvec = signals.encode_text(enc, "red kurta")
    fsql, fparams = signals.filter_sql({})
    with transaction.atomic(), connection.cursor() as cursor:
        vectors.set_index_options(cursor, config(), 5)
        sql, params = vectors.knn_sql("product", enc.dim, key, qvec, fsql, fparams, 5, 5, halfvec=True)
        # Off: a scan or the (model_key, product) index plus a sort (the tiny table's cheapest plans, chosen by
        # whatever statistics earlier tests left), so the plan shows whether the halfvec index matches.
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_sort = off")
        cursor.execute("EXPLAIN " + sql, params)
        plan = "\n".join(r[0] for r in cursor.fetchall())
    assert vectors.index_name("product", key, "halfvec") in plan
    result = search(SearchQuery(text="red kurta", mode="semantic"))
    assert result.hits and result.hits[0].sku in {"kurta-red", "tee-red"}

    call_command("activate_model", "text_embedder", stdout=io.StringIO())  # back to float32
    assert ActiveModel.objects.get(alias="text_embedder").storage == "vector"
    assert _index_exists(vectors.index_name("product", key, "vector"))
    assert not _index_exists(vectors.index_name("product", key, "halfvec"))


def test_unknown_storage_is_refused():
    with pytest.raises(ValueError, match="unknown vector storage 'float8'"):
        vectors.index_name("image", "k", "float8")


def _exact(kind, enc, qvec, filters, k):
    fsql, fparams = signals.filter_sql(filters)
    with connection.cursor() as cursor:
        sql, params = vectors.knn_sql(kind, enc.dim, enc.model_key, qvec, fsql, fparams, k, k * 3, exact=True)
        cursor.execute(sql, params)
        return [row[0] for row in cursor.fetchall()]


@pytest.mark.parametrize("filters, plan", [
    ({}, "post"),  # no filter: the bare index scan, its rows tested afterwards
    ({"attr.gender": ["Women"]}, "ids"),  # a small filtered set: exact over its ids
])
def test_each_plan_returns_the_exact_answer_on_the_shop(shop, filters, plan):
    enc = signals.active_encoder("embedder")
    qvec = signals.encode_text(enc, "red")
    scope = signals.scope_for(filters, config())
    debug: dict = {}
    with transaction.atomic():
        got = signals.vector_candidates("image", enc, qvec, scope, [], 3, debug)
    assert debug["plan"] == plan
    assert [c.item_id for c in got] == _exact("image", enc, qvec, filters, 3)
    assert Product.objects.get(sku="kurta-old").id not in [c.item_id for c in got]  # inactive: never


def test_post_plan_falls_back_when_inactive_products_crowd_the_top(shop):
    """30 discontinued copies of the query's product sit nearest: the post-filtered scan comes back short,
    and the filtered walk (or the exact search) answers with active products only."""
    from mmsearch import plugins
    from mmsearch.text import product_text

    model = plugins.get_model("text_embedder")
    copies = [Product.objects.create(sku=f"old-{i}", title="Red Cotton Kurta", active=False) for i in range(30)]
    vectors.upsert_product_vectors(model.model_key, [
        (p.id, "sha", model.embed_texts([product_text(p.title, None, {})])[0]) for p in copies
    ])
    enc = signals.active_encoder("text_embedder")
    qvec = signals.encode_text(enc, product_text("Red Cotton Kurta", None, {}))
    debug: dict = {}
    with transaction.atomic():
        got = signals.vector_candidates("product", enc, qvec, signals.scope_for({}, config()), [], 2, debug)
    assert debug["plan"] in ("index", "exact")
    assert [c.item_id for c in got] == _exact("product", enc, qvec, {}, 2)
    assert not {c.item_id for c in got} & {p.id for p in copies}


def test_image_scan_reads_the_mean_images_per_product_and_more_when_that_is_short(shop):
    """An unfiltered image kNN first reads about k x the catalog's mean images per product; when one product's
    many images crowd those rows (here: a mean read before they were added), it reads more, and the answer is
    still the exact one."""
    import time

    from PIL import Image

    from catalog.storage import add_image
    from mmsearch import plugins
    from mmsearch.images import check_image
    from tests.conftest import make_image

    enc = signals.active_encoder("embedder")
    vectors._IMAGES_PER_PRODUCT.clear()
    assert vectors.images_per_product(enc.model_key) == pytest.approx(9 / 8)  # 9 images, 8 products (1 inactive)
    model = plugins.get_model("embedder")
    kurta = shop["kurta-red"]
    rows = []
    for shade in range(30):
        image, created = add_image(kurta, check_image(make_image(size=(32, 32), color=(200 + shade, 30, 30))))
        if not created:  # the kurta's own red, or a shade whose JPEG bytes are another's
            continue
        with image.file.open("rb") as fh:
            rows.append((image.id, kurta.id, model.embed_images([Image.open(fh).convert("RGB")])[0]))
    assert len(rows) >= 10
    vectors.upsert_image_vectors(enc.model_key, rows)
    vectors._IMAGES_PER_PRODUCT[enc.model_key] = (time.monotonic(), 1.0)  # stale: read before the 30 images
    qvec = model.embed_images([Image.new("RGB", (32, 32), (215, 30, 30))])[0]
    debug: dict = {}
    with transaction.atomic():
        got = signals.vector_candidates("image", enc, qvec, signals.scope_for({}, config()), [], 3, debug)
    assert [c.item_id for c in got] == _exact("image", enc, qvec, {}, 3)
    assert len(got) == 3 and got[0].item_id == kurta.id
    vectors._IMAGES_PER_PRODUCT.clear()
    assert vectors.images_per_product(enc.model_key) == pytest.approx((9 + len(rows)) / 8)


def test_scope_counts_the_filtered_products_and_keeps_small_sets(shop, settings):
    scope = signals.scope_for({"attr.gender": ["Women"]}, config())
    women = Product.objects.filter(active=True, attributes__gender="Women").count()
    assert (scope.filtered, scope.count, sorted(scope.ids)) == (
        True, women, sorted(Product.objects.filter(active=True, attributes__gender="Women").values_list("id", flat=True))
    )
    settings.MMSEARCH_SEARCH = {"EXACT_SCOPE_LIMIT": 1}
    big = signals.scope_for({"attr.gender": ["Women"]}, config())
    assert big.ids is None and big.count == women and 0 < big.share <= 1
    assert not signals.scope_for({}, config()).filtered


def test_total_and_facets_count_matching_candidates_only(shop, settings):
    # The hashing text vectors put every product somewhere near "kurta"; only one product has the word.
    settings.MMSEARCH_SEARCH = {"SIMILARITY_FLOOR": {"text_vector": 0.99, "image_vector": 0.99, "photo": 0.0}}
    result = search(SearchQuery(text="kurta"))
    assert result.debug["fused"] > result.total
    assert result.total == 1 and [h.sku for h in result.hits] == ["kurta-red"]
    assert result.facets["category"][0] == {"value": "Apparel", "count": 1}
    settings.MMSEARCH_SEARCH = {"SIMILARITY_FLOOR": {"text_vector": -1.0, "image_vector": -1.0, "photo": 0.0}}
    everything = search(SearchQuery(text="kurta"))
    assert everything.total == everything.debug["fused"] == Product.objects.filter(active=True).count()


def test_matching_keeps_lexical_and_understood_and_vector_hits_above_the_floor():
    fused = [
        Fused(1, 0.5, {"lexical": {"rank": 1, "score": 1.2}}),
        Fused(2, 0.4, {"text_vector": {"rank": 1, "score": 0.8}}),
        Fused(3, 0.3, {"text_vector": {"rank": 2, "score": 0.1}}),
        Fused(4, 0.2, {"image_vector": {"rank": 1, "score": 0.3}}),
        Fused(5, 0.1, {"understood": {"rank": 1, "score": 0.2}}),
    ]
    floors = {"text_vector": 0.5, "image_vector": 0.25, "photo": 0.9}
    assert [f.item_id for f in matching(fused, floors, "text")] == [1, 2, 4, 5]
    assert [f.item_id for f in matching(fused, floors, "photo")] == [1, 2, 5]


def test_parse_params_checks_filters_once(shop):
    query = parse_params({"q": "kurta", "category": "Apparel"})
    assert query.checked()
    with CaptureQueriesContext(connection) as ctx:
        search(query)
    assert not [q for q in ctx.captured_queries if "catalog_category" in q["sql"] and '"path" IN' in q["sql"]]
    query.filters = {"category": ["Nowhere"]}  # changed after parsing: checked again
    assert not query.checked()
    from mmsearch.search.params import SearchError

    with pytest.raises(SearchError, match="unknown category"):
        search(query)


def test_facets_and_cards_are_one_query_each(shop):
    ids = list(Product.objects.filter(active=True).values_list("id", flat=True))
    with CaptureQueriesContext(connection) as ctx:
        facets = get_catalog().facets(ids, 5)
    assert len(ctx.captured_queries) == 1
    assert {"value": "Apparel", "count": 5} in facets["category"]
    assert facets["tags"]["occasion"] == [{"value": "festive", "name": "Festive", "count": 1}]
    assert sum(b["count"] for b in facets["price"]) == len(ids)
    with CaptureQueriesContext(connection) as ctx:
        cards = get_catalog().cards(ids)
    assert len(ctx.captured_queries) == 1
    shoes = cards[Product.objects.get(sku="shoes-green").id]
    assert len(shoes.images) == 2 and all(url.startswith("/") or "://" in url for _, url in shoes.images)
    assert [i for i, _ in shoes.images] == list(Product.objects.get(sku="shoes-green").images.values_list("id", flat=True))


def test_query_vector_cache_holds_thousands_of_queries(settings, shop):
    from django.conf import settings as conf

    assert conf.CACHES["default"].get("OPTIONS", {}).get("MAX_ENTRIES", 300) >= 10_000
    enc = signals.active_encoder("text_embedder")
    texts = [f"query number {i}" for i in range(1000)]
    first = [signals.encode_text(enc, t) for t in texts]
    calls = []
    original = enc.model.embed_texts
    enc.model.embed_texts = lambda batch: calls.append(batch) or original(batch)
    try:
        again = [signals.encode_text(enc, t) for t in texts]
    finally:
        enc.model.embed_texts = original
    assert not calls  # every one from the cache
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    cache.clear()
