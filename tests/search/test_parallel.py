"""A request's queries side by side (signals.sql_work): the same answer as one after another, only where every
connection sees the same rows, and a pool connection the server dropped is replaced without failing a search."""

from __future__ import annotations

import pytest
from django.db import connection
from PIL import Image

from mmsearch.search import signals
from mmsearch.search.engine import search
from mmsearch.search.params import SearchQuery
from tests.search.conftest import COLOURS

QUERIES = {
    "hybrid": lambda: SearchQuery(text="red cotton kurta"),
    "filtered hybrid": lambda: SearchQuery(text="red cotton", filters={"attr.gender": ["women"], "category": ["Apparel"]}),
    "lexical": lambda: SearchQuery(text="cotton", mode="lexical", filters={"attr.gender": ["Men"]}),
    "semantic": lambda: SearchQuery(text="running shoes", mode="semantic"),
    "photo": lambda: SearchQuery(image=Image.new("RGB", (32, 32), COLOURS["green"]), filters={"attr.gender": ["Men"]}),
    "similar_to": lambda: SearchQuery(similar_to="kurta-red"),
}


def _answer(result) -> tuple:
    return ([(h.sku, h.score, sorted(h.parts)) for h in result.hits], result.total, result.facets, result.mode,
            [(u.span, u.filter, u.value) for u in result.understood])


@pytest.mark.django_db(transaction=True)  # the pool's connections see committed rows only
@pytest.mark.parametrize("name", list(QUERIES))
def test_side_by_side_gives_the_sequential_answer(shop, settings, name):
    parallel = search(QUERIES[name]())
    settings.MMSEARCH_SEARCH = {**getattr(settings, "MMSEARCH_SEARCH", {}), "SQL_THREADS": 0}
    sequential = search(QUERIES[name]())
    assert parallel.debug["parallel"] is True and sequential.debug["parallel"] is False
    assert parallel.hits, name
    assert _answer(parallel) == _answer(sequential)
    assert parallel.debug["signals"].keys() == sequential.debug["signals"].keys()


def test_inside_a_transaction_the_queries_stay_on_its_connection(shop):
    # The test's own transaction holds the shop: other connections cannot see it, so nothing may run there.
    assert connection.in_atomic_block
    result = search(QUERIES["filtered hybrid"]())
    assert result.debug["parallel"] is False
    assert [h.sku for h in result.hits][:1] == ["kurta-red"]


@pytest.mark.django_db(transaction=True)
def test_a_pool_connection_the_server_dropped_is_replaced(shop):
    first = search(QUERIES["hybrid"]())
    pids = [c.connection.info.backend_pid for c in signals._SQL_CONNECTIONS if c.connection is not None]
    assert pids, "the pool kept no connection"
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", [pids])
        assert cursor.fetchone()[0] == len(pids)
        cursor.execute("SELECT bool_and(pg_terminate_backend(pid)) FROM unnest(%s::int[]) pid", [pids])
        assert cursor.fetchone()[0] is True
    again = search(QUERIES["hybrid"]())
    assert _answer(again) == _answer(first)
