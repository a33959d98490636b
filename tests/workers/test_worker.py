"""The pipeline end to end: real Celery worker subprocesses, the embedded Redis broker, the test database."""

from __future__ import annotations

import re

import numpy as np
import pytest
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from catalog.models import Product, ProductImage
from mmsearch.models import ActiveModel, EmbeddingFailure, ImageEmbedding, IndexJob, IndexJobBatch, ProductTextEmbedding
from mmsearch.plugins import get_model
from mmsearch.search import vectors
from mmsearch import indexing as jobs
from tests.workers.conftest import import_demo, nearest_images, wait_for, wait_job
from workers import tasks

pytestmark = pytest.mark.django_db(transaction=True)

KEY = "hashing:64:0"
KEY_V2 = "hashing:32:1"
SLOW_KEY = "slow-hashing:16:7"


def snapshot(model_key: str) -> list[tuple]:
    """Every stored row for model_key with its vector and timestamps, to prove a re-run changed nothing."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT 'i', image_id, vector::text, created_at, created_at FROM mmsearch_imageembedding WHERE model_key = %s "
            "UNION ALL SELECT 'p', product_id, vector::text, created_at, updated_at FROM mmsearch_producttextembedding "
            "WHERE model_key = %s ORDER BY 1, 2",
            [model_key, model_key],
        )
        return cursor.fetchall()


def test_demo_catalog_embedded_on_import_and_reindex_changes_nothing(worker_factory, settings):
    settings.MMSEARCH_AUTO_INDEX = True  # the import itself queues the work (catalog_changed after commit)
    worker = worker_factory()
    report = import_demo()
    assert report.created == 81 and report.images_added == 81

    def all_embedded():
        return (
            ImageEmbedding.objects.filter(model_key=KEY).count() == 81
            and ProductTextEmbedding.objects.filter(model_key=KEY).count() == 81
        )

    wait_for(all_embedded, 60, what="81 image and 81 text vectors", log=worker.log)
    assert ImageEmbedding.objects.filter(model_key=KEY).count() == ProductImage.objects.count() == 81
    assert ProductTextEmbedding.objects.filter(model_key=KEY).count() == Product.objects.count() == 81
    assert not EmbeddingFailure.objects.exists()
    before = snapshot(KEY)

    call_command("reindex", "--wait", "--timeout", "60")
    job = IndexJob.objects.get()
    assert (job.status, job.total, job.done, job.skipped, job.failed) == ("done", 162, 162, 162, 0)
    assert snapshot(KEY) == before

    # An edit re-embeds that product's text only, through the same after-commit hook.
    product = Product.objects.order_by("pk").first()
    product.title = "Apple Golden Delicious, organic"
    product.save()
    row = ProductTextEmbedding.objects.get(product=product, model_key=KEY)
    wait_for(lambda: ProductTextEmbedding.objects.get(pk=row.pk).updated_at > row.updated_at, 30,
             what="the edited product's text vector", log=worker.log)
    after = snapshot(KEY)
    assert [r for r in after if r[:2] != ("p", product.pk)] == [r for r in before if r[:2] != ("p", product.pk)]


def test_worker_killed_mid_batch_every_item_embedded_exactly_once(worker_factory, settings):
    settings.MMSEARCH_EMBED_BATCH_SIZE = 8
    settings.MMSEARCH_EMBED_BATCHES_PER_TASK = 3  # tasks of 24 images; 81 images -> 4 tasks, 11 batches
    import_demo()
    # A short visibility timeout so the restarted worker gets the killed worker's unacked task back quickly.
    env = {"TEST_VISIBILITY_TIMEOUT": "6"}
    worker = worker_factory(**env)
    job = jobs.start_job("slow", kind="images")
    assert (job.total, job.batches) == (81, 11)

    # A batch is committed, so the worker is inside a later batch's forward pass (0.8 s): kill it there.
    wait_for(lambda: IndexJobBatch.objects.filter(job=job).exists(), 60, interval=0.02, what="the first batch", log=worker.log)
    worker.kill()
    job.refresh_from_db()
    recorded = IndexJobBatch.objects.filter(job=job).count()
    assert job.status == "running" and 1 <= recorded < 11
    # The partial state is consistent: vectors, ledger and counters agree batch for batch.
    assert ImageEmbedding.objects.filter(model_key=SLOW_KEY).count() == job.done == 8 * recorded

    worker = worker_factory(**env)
    job = wait_job(job.pk, 90, log=worker.log)
    assert (job.status, job.done, job.failed, job.total) == ("done", 81, 0, 81)
    assert IndexJobBatch.objects.filter(job=job).count() == 11
    rows = ImageEmbedding.objects.filter(model_key=SLOW_KEY)
    assert rows.count() == 81
    assert rows.values("image_id").distinct().count() == 81
    # The redelivered task skipped the batches its first delivery had committed.
    assert any(int(n) >= 1 for n in re.findall(r"'duplicate_batches': (\d+)", worker.log())), worker.log()


def test_corrupt_image_fails_alone_in_its_batch(worker_factory):
    import_demo()
    images = list(ProductImage.objects.order_by("pk"))
    corrupt, missing = images[10], images[20]
    path = default_storage.path(corrupt.file.name)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 3])
    default_storage.delete(missing.file.name)
    worker = worker_factory()

    call_command("reindex", "--kind", "images", "--wait", "--timeout", "60")
    job = IndexJob.objects.get()
    assert (job.status, job.done, job.failed) == ("done", 79, 2)
    embedded = set(ImageEmbedding.objects.filter(model_key=KEY).values_list("image_id", flat=True))
    assert embedded == {i.pk for i in images} - {corrupt.pk, missing.pk}
    reasons = dict(EmbeddingFailure.objects.filter(model_key=KEY, kind="image").values_list("item_id", "reason"))
    assert "corrupt or truncated" in reasons[corrupt.pk]
    assert "missing" in reasons[missing.pk]
    assert f"image {corrupt.pk} not embedded" in worker.log()


def test_task_for_another_model_key_writes_nothing(worker_factory):
    import_demo()
    worker = worker_factory()
    ids = list(ProductImage.objects.values_list("pk", flat=True))
    job = IndexJob.objects.create(alias="embedder", model_key="hashing:64:42", kind="images", total=len(ids))
    result = tasks.embed_images.delay("embedder", "hashing:64:42", ids, job_id=job.pk)
    job = wait_job(job.pk, 30, log=worker.log)
    assert job.status == "failed"
    assert "is 'hashing:64:0' on this worker but the task was sent for 'hashing:64:42'" in job.error
    assert result.get(timeout=10, propagate=False).__class__.__name__ == "ModelKeyMismatch"
    assert ImageEmbedding.objects.count() == 0


def test_blue_green_swap(worker_factory):
    import_demo()
    worker = worker_factory()
    call_command("reindex", "--wait", "--timeout", "60")
    call_command("activate_model", "embedder")
    blue, green = get_model("embedder"), get_model("embedder_v2")

    def brute_force(model_key: str, query: np.ndarray, k: int = 5) -> list[int]:
        stored = {e.image_id: np.asarray(e.vector, dtype=float) for e in ImageEmbedding.objects.filter(model_key=model_key)}
        return sorted(stored, key=lambda i: (1 - float(stored[i] @ query), i))[:k]

    def search(model) -> list[int]:
        return nearest_images(model.embed_texts(["red fruit"])[0], k=5)

    assert search(blue) == brute_force(KEY, blue.embed_texts(["red fruit"])[0])
    # Not filled yet: the switch is refused, with the coverage.
    with pytest.raises(CommandError, match=r"images: 0/81 embedded, 0 failed, 81 missing"):
        call_command("activate_model", "embedder_v2")

    # Backfill green in the background while blue keeps answering.
    job = jobs.start_job("embedder_v2")
    while not IndexJob.objects.get(pk=job.pk).finished:
        assert ActiveModel.objects.get(alias="embedder").model_key == KEY
        assert search(blue) == brute_force(KEY, blue.embed_texts(["red fruit"])[0])
    job = wait_job(job.pk, 60, log=worker.log)
    assert (job.status, job.done) == ("done", 162)
    assert ActiveModel.objects.get(alias="embedder").model_key == KEY

    call_command("activate_model", "embedder_v2")  # --as defaults to the alias's role, "embedder"
    active = ActiveModel.objects.get(alias="embedder")
    assert (active.model_key, active.dim) == (KEY_V2, 32)
    assert search(green) == brute_force(KEY_V2, green.embed_texts(["red fruit"])[0])
    with pytest.raises(ValueError, match="makes 64-d vectors but the active index is 32-d"):
        search(blue)

    with pytest.raises(CommandError, match="is active for embedder"):
        call_command("drop_model", KEY_V2)
    call_command("drop_model", KEY)
    assert not ImageEmbedding.objects.filter(model_key=KEY).exists()
    assert not ProductTextEmbedding.objects.filter(model_key=KEY).exists()
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_indexes WHERE indexname = %s", [vectors.index_name("image", KEY)])
        assert cursor.fetchone()[0] == 0
    assert search(green) == brute_force(KEY_V2, green.embed_texts(["red fruit"])[0])
