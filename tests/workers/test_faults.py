"""Faults survived with the real services: Redis stopped while the site runs, PostgreSQL restarted under a job.

These stop and start the embedded servers the suite shares, so they run one at a time like the rest of the
suite; each leaves both servers running.
"""

from __future__ import annotations

import time

import pytest
from django.db import connections
from django.test import Client

from catalog.models import Category, Product
from catalog.storage import add_image
from mmsearch import indexing as jobs
from mmsearch import services
from mmsearch.images import check_image
from mmsearch.models import ImageEmbedding, IndexJobBatch, IndexOutbox, ProductTextEmbedding
from tests.conftest import make_image
from tests.workers.conftest import import_demo, wait_for, wait_job

KEY = "hashing:64:0"
SLOW_KEY = "slow-hashing:16:7"

pytestmark = pytest.mark.skipif(services.embedded_wanted() != (True, True), reason="needs the embedded services")


def _reconnect() -> None:
    """The test process's own connections died with the server; drop them (Django opens new ones)."""
    for conn in connections.all():
        conn.close()


def test_redis_down_site_answers_writes_commit_and_indexing_catches_up(worker_factory, settings, tmp_path):
    settings.MMSEARCH_AUTO_INDEX = True
    import_demo(limit=3, tmp_path=tmp_path)  # Redis up: queued as usual
    client = Client()
    services.stop_redis()
    try:
        # Catalog writes commit, fast, and leave what they imply in the outbox.
        started = time.monotonic()
        product = Product.objects.create(sku="outage-1", title="Outage Lantern", category=Category.objects.get_or_create_path("Home/Lights"))
        image, _ = add_image(product, check_image(make_image(size=(32, 32), color=(250, 200, 10))))
        assert time.monotonic() - started < 10
        assert set(IndexOutbox.objects.values_list("kind", "item_id")) >= {("product", product.pk), ("image", image.pk)}
        # Shoppers keep searching and browsing.
        assert client.get("/api/v1/search", {"q": "lantern"}).json()["results"][0]["sku"] == "outage-1"
        assert client.get("/search", {"q": "lantern"}).status_code == 200
        assert client.get("/p/outage-1").status_code == 200
        assert client.get("/healthz").status_code == 200
    finally:
        services.start_redis()

    worker = worker_factory()
    from mmsearch.celery import app

    app.send_task("workers.tasks.drain_index_outbox")  # what Celery beat sends every minute
    wait_for(lambda: ImageEmbedding.objects.filter(image=image, model_key=KEY).exists()
             and ProductTextEmbedding.objects.filter(product=product, model_key=KEY).exists(),
             60, what="the outage's product embedded", log=worker.log)
    wait_for(lambda: not IndexOutbox.objects.exists(), 30, what="an empty outbox", log=worker.log)
    keys = list(ImageEmbedding.objects.filter(image=image).values_list("model_key", flat=True))
    assert KEY in keys and len(keys) == len(set(keys))  # once per index alias's key (the worker indexes them all)
    assert jobs.drain_outbox() == 0


def test_postgres_restart_web_and_worker_recover_and_the_job_completes(worker_factory, settings, tmp_path):
    settings.MMSEARCH_EMBED_BATCH_SIZE = 8
    settings.MMSEARCH_EMBED_BATCHES_PER_TASK = 2
    import_demo(limit=40, tmp_path=tmp_path)
    worker = worker_factory()
    job = jobs.start_job("slow", kind="images")
    wait_for(lambda: IndexJobBatch.objects.filter(job=job).exists(), 60, interval=0.05, what="the first batch", log=worker.log)

    services.stop_postgres()  # a task is mid-batch: its write fails and the task retries
    client = Client()
    try:
        down = client.get("/healthz")
        assert down.status_code == 503 and down.json()["ok"] is False
        time.sleep(1.5)
    finally:
        services.start_postgres()
    _reconnect()

    assert client.get("/healthz").status_code == 200  # the web side reconnects by itself
    assert client.get("/api/v1/search", {"q": "apple", "mode": "lexical"}).status_code == 200
    job = wait_job(job.pk, 120, log=worker.log)  # the same worker process, never restarted
    assert (job.status, job.done, job.failed, job.total) == ("done", 40, 0, 40)
    rows = ImageEmbedding.objects.filter(model_key=SLOW_KEY)
    assert rows.count() == 40 and rows.values("image_id").distinct().count() == 40
    assert "Retry in" in worker.log() or "OperationalError" in worker.log()
