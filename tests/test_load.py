"""A short load run in the suite: bench/load.py's runner against the site under gunicorn, over loopback.

A slice of demo/grocery (real product photos) is imported with the catalog importer and indexed with the hashing
models, committed (gunicorn's workers are other processes and see only committed rows). The server runs with the
deployment's environment (DEBUG=0, a random SECRET_KEY, throttles off) and the same hashing MMSEARCH_MODELS,
through the settings overlay bench/load.py writes; 4 clients send every request kind for about 5 seconds.
Every request must succeed and every kind must have been sent, questions to a test answerer included.
"""

from __future__ import annotations

import json
import shutil

import pytest
from django.conf import settings
from django.db import connection

from bench import load
from catalog.importer import CatalogImporter
from catalog.models import Product
from mmsearch import plugins
from tests.qa.conftest import COLOURMETER
from tests.search.conftest import MODELS, index_products

DEMO = settings.BASE_DIR / "demo" / "grocery"
SLICE = 30  # products of the demo catalog

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def grocery(tmp_path, settings):
    """The first SLICE demo products with their images, imported and indexed with the hashing models."""
    from django.core.cache import cache

    settings.MMSEARCH_MODELS = MODELS
    plugins.reset()
    cache.clear()
    folder = tmp_path / "grocery"
    (folder / "images").mkdir(parents=True)
    lines = (DEMO / "products.jsonl").read_text().splitlines()[:SLICE]
    for line in lines:  # image paths stay relative to the JSONL file's folder, as the importer wants them
        for rel in json.loads(line).get("images", []):
            shutil.copyfile(DEMO / rel, folder / rel)
    path = folder / "products.jsonl"
    path.write_text("\n".join(lines) + "\n")
    report = CatalogImporter(path).run()
    assert report.created == SLICE and not report.rejected
    index_products(Product.objects.prefetch_related("images"))
    yield
    plugins.reset()


def test_load_run_under_gunicorn(grocery, settings, tmp_path):
    plan = load.build_plan(sample=SLICE, n_images=8)
    assert plan.filters and plan.images and plan.queries
    server = load.Server(
        workers=2,
        settings_module="mmsearch.settings",
        overrides={"MMSEARCH_MODELS": {**MODELS, "answerer": COLOURMETER}},
        env={"MMSEARCH_DB_NAME": connection.settings_dict["NAME"], "MEDIA_ROOT": str(settings.MEDIA_ROOT)},
        log_path=tmp_path / "gunicorn.log",
    )
    with server:
        assert server.env_shown["DEBUG"] == "0"
        report = load.measure(plan, clients=4, duration=5, max_requests=3000, server=server, warmup_per_worker=1,
                              request_timeout=30)

    load.print_report(report)  # shown when the test fails
    assert report["error_count"] == 0, "\n".join(load.error_lines(report)) + "\n" + server.log_tail()
    expected = [k for k in load.KINDS if k not in report["not_measured"]]
    assert list(report["kinds"]) == expected
    assert all(report["kinds"][k]["count"] > 0 for k in expected)
    assert report["not_measured"] == {}  # every kind, questions to the test answerer included
    # The queries and filters come from the catalog: hybrid, filtered, photo and similar searches find products.
    assert all(report["kinds"][k]["empty_results"] == 0 for k in ("text", "filtered", "photo", "similar"))
    assert report["total"]["count"] == sum(s["count"] for s in report["kinds"].values())
    assert report["elapsed_s"] < 5 + 30 + 5
    assert report["catalog"]["active_products"] == SLICE
    assert report["server"]["log"]["tracebacks"] == 0

    # The report is what bench/load.py writes: JSON and a plot.
    (tmp_path / "load.json").write_text(json.dumps(report))
    load.plot(report, tmp_path / "load.png")
    assert (tmp_path / "load.png").stat().st_size > 1000
