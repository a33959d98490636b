"""Task bodies run in-process (no broker): batching, skipping, failures, the ledger, the model_key check."""

from __future__ import annotations

import numpy as np
import pytest
from django.core.files.storage import default_storage
from django.db import connection

from catalog.models import Product, ProductImage, ProductTag, Tag, TagGroup
from mmsearch.models import EmbeddingFailure, ImageEmbedding, IndexJob, IndexJobBatch, ProductTextEmbedding
from mmsearch.plugins import get_model
from mmsearch.search import vectors
from mmsearch.text import product_text
from mmsearch import indexing as jobs
from mmsearch.search.params import SearchUnavailable
from tests.workers.conftest import import_demo, nearest_images
from workers import pipeline

pytestmark = pytest.mark.django_db

KEY = "hashing:64:0"


@pytest.fixture
def demo(models, tmp_path):
    import_demo(limit=12, tmp_path=tmp_path)
    return list(ProductImage.objects.order_by("pk"))


def test_images_embedded_once_and_rerun_skips(demo, settings):
    settings.MMSEARCH_EMBED_BATCH_SIZE = 5
    ids = [i.pk for i in demo]
    out = pipeline.run_images("embedder", KEY, ids)
    assert (out.done, out.skipped, out.failed, out.batches) == (12, 0, 0, 3)
    rows = {e.image_id: e for e in ImageEmbedding.objects.filter(model_key=KEY)}
    assert set(rows) == set(ids)
    assert all(rows[i.pk].product_id == i.product_id for i in demo)
    # The stored vector is the model's vector for the decoded file.
    from PIL import Image

    with default_storage.open(demo[0].file.name) as fh:
        expected = get_model("embedder").embed_images([Image.open(fh).convert("RGB")])[0]
    assert np.allclose(np.asarray(rows[ids[0]].vector, dtype=float), expected, atol=1e-6)

    again = pipeline.run_images("embedder", KEY, ids)
    assert (again.done, again.skipped) == (12, 12)
    assert ImageEmbedding.objects.filter(model_key=KEY).count() == 12


def test_corrupt_and_missing_images_fail_alone(demo, settings):
    settings.MMSEARCH_EMBED_BATCH_SIZE = 32
    corrupt, missing = demo[3], demo[7]
    path = default_storage.path(corrupt.file.name)
    with open(path, "rb") as fh:
        head = fh.read(300)
    with open(path, "wb") as fh:
        fh.write(head)  # a truncated JPEG
    default_storage.delete(missing.file.name)

    out = pipeline.run_images("embedder", KEY, [i.pk for i in demo])
    assert (out.done, out.failed, out.batches) == (10, 2, 1)
    assert ImageEmbedding.objects.filter(model_key=KEY).count() == 10
    reasons = dict(EmbeddingFailure.objects.filter(kind="image", model_key=KEY).values_list("item_id", "reason"))
    assert set(reasons) == {corrupt.pk, missing.pk}
    assert "corrupt or truncated" in reasons[corrupt.pk]
    assert "missing" in reasons[missing.pk]
    assert vectors.coverage("image", KEY).complete  # failures are accounted for


def test_wrong_model_key_writes_nothing(demo):
    job = IndexJob.objects.create(alias="embedder", model_key="hashing:64:999", kind="images", total=12)
    with pytest.raises(pipeline.ModelKeyMismatch, match="hashing:64:999"):
        pipeline.run_images("embedder", "hashing:64:999", [i.pk for i in demo], job_id=job.pk)
    with pytest.raises(pipeline.ModelKeyMismatch):
        pipeline.run_products("embedder", "hashing:64:999", [i.product_id for i in demo])
    assert ImageEmbedding.objects.count() == 0
    assert ProductTextEmbedding.objects.count() == 0
    job.refresh_from_db()
    assert job.status == "failed"
    assert "task was sent for 'hashing:64:999'" in job.error


def test_product_text_skips_unchanged_and_follows_edits(demo):
    ids = sorted({i.product_id for i in demo})
    out = pipeline.run_products("embedder", KEY, ids)
    assert (out.done, out.skipped) == (12, 0)
    product = Product.objects.select_related("category").get(pk=ids[0])
    row = ProductTextEmbedding.objects.get(product=product, model_key=KEY)
    text = product_text(product.title, product.category.path, product.attributes)
    assert row.text_sha256 == pipeline.text_sha256(text)
    assert np.allclose(np.asarray(row.vector, dtype=float), get_model("embedder").embed_texts([text])[0], atol=1e-6)

    assert pipeline.run_products("embedder", KEY, ids).skipped == 12
    # An accepted tag is part of the product text: the product is embedded again, the others are not.
    tag = Tag.objects.create(group=TagGroup.objects.create(name="colour"), name="red")
    ProductTag.objects.create(product=product, tag=tag, status="accepted")
    out = pipeline.run_products("embedder", KEY, ids)
    assert (out.done, out.skipped) == (12, 11)
    row.refresh_from_db()
    assert row.text_sha256 == pipeline.text_sha256(product_text(product.title, product.category.path, product.attributes, ["red"]))


def test_job_ledger_counts_a_redelivered_chunk_once(demo, settings):
    settings.MMSEARCH_EMBED_BATCH_SIZE = 4
    ids = [i.pk for i in demo]
    # Two chunks planned; chunk 0 arrives twice (as after a worker died before acking it).
    job = IndexJob.objects.create(alias="embedder", model_key=KEY, kind="images", total=24, batches=6)
    first = pipeline.run_images("embedder", KEY, ids, job_id=job.pk, chunk=0)
    second = pipeline.run_images("embedder", KEY, ids, job_id=job.pk, chunk=0)
    assert (first.batches, second.batches, second.duplicate_batches) == (3, 0, 3)
    job.refresh_from_db()
    assert (job.status, job.done, job.failed) == ("running", 12, 0)
    assert IndexJobBatch.objects.filter(job=job).count() == 3
    # The last chunk completes the job.
    pipeline.run_images("embedder", KEY, ids, job_id=job.pk, chunk=1)
    job.refresh_from_db()
    assert (job.status, job.done, job.skipped) == ("done", 24, 12)
    assert job.started_at and job.finished_at and job.forward_seconds > 0
    # A task of a finished job does nothing.
    assert pipeline.run_images("embedder", KEY, ids, job_id=job.pk, chunk=1).status == "job done"


def test_cancelled_job_tasks_do_nothing(demo):
    job = IndexJob.objects.create(alias="embedder", model_key=KEY, kind="images", total=12, status="cancelled")
    out = pipeline.run_images("embedder", KEY, [i.pk for i in demo], job_id=job.pk)
    assert out.status == "job cancelled" and ImageEmbedding.objects.count() == 0


def test_decode_overlaps_forward(demo, settings, models):
    """Batch n+1 is decoded while batch n is in the model: the model hardly waits for decoding."""
    settings.MMSEARCH_EMBED_BATCH_SIZE = 4
    settings.MMSEARCH_MODELS = {**models, "slow": {**models["slow"], "OPTIONS": {"dim": 16, "delay": 0.3}}}
    job = IndexJob.objects.create(alias="slow", model_key="slow-hashing:16:7", kind="images", total=12, batches=3)
    pipeline.run_images("slow", "slow-hashing:16:7", [i.pk for i in demo], job_id=job.pk)
    job.refresh_from_db()
    assert job.forward_seconds >= 0.9
    # Only the first batch's decode is on the critical path.
    assert job.decode_seconds < job.forward_seconds / 3


@pytest.mark.django_db(transaction=True)  # CREATE INDEX cannot follow deferred FK checks in one transaction
def test_start_job_plans_batches_and_only_missing(demo, settings, broker):
    settings.MMSEARCH_EMBED_BATCH_SIZE = 5
    settings.MMSEARCH_EMBED_BATCHES_PER_TASK = 2
    pipeline.run_images("embedder", KEY, [i.pk for i in demo[:7]])
    job = jobs.start_job("embedder", only_missing=True)
    assert (job.kind, job.total, job.batches, job.status) == ("all", 5 + 12, 1 + 3, "queued")
    from mmsearch.celery import app

    with app.connection_for_write() as conn:
        assert conn.default_channel.client.llen("embed") == 1 + 2  # tasks of up to 10 ids
    with pytest.raises(jobs.JobError, match="contradict"):
        jobs.start_job("embedder", only_missing=True, force=True)
    with pytest.raises(jobs.JobError, match="no alias 'nope'"):
        jobs.start_job("nope")


@pytest.mark.django_db(transaction=True)  # CREATE INDEX cannot follow deferred FK checks in one transaction
def test_knn_uses_the_partial_hnsw_index(demo):
    pipeline.run_images("embedder", KEY, [i.pk for i in demo])
    name = vectors.ensure_index("image", KEY, 64)
    vectors.activate("embedder", KEY, 64)
    query = get_model("embedder").embed_texts(["red"])[0]
    hits = nearest_images(query, k=5)
    stored = {e.image_id: np.asarray(e.vector, dtype=float) for e in ImageEmbedding.objects.filter(model_key=KEY)}
    brute = sorted(stored, key=lambda i: 1 - float(stored[i] @ query))[:5]
    assert hits == brute
    with connection.cursor() as cursor:
        # Off: a scan and a sort (the tiny table's cheapest plan), so the plan shows whether the index matches.
        cursor.execute("SET enable_seqscan = off")
        cursor.execute("SET enable_sort = off")
        cursor.execute(
            f"EXPLAIN SELECT image_id FROM mmsearch_imageembedding WHERE model_key = %s "
            f"ORDER BY {vectors.distance_sql(64)} LIMIT 5",
            [KEY, vectors.vector_literal(query)],
        )
        plan = "\n".join(r[0] for r in cursor.fetchall())
        cursor.execute("RESET enable_seqscan")
        cursor.execute("RESET enable_sort")
    assert name in plan
    with pytest.raises(SearchUnavailable, match="makes 32-d vectors but the active index is 64-d"):
        nearest_images(query[:32])


def test_openclip_plugin_preprocesses_off_the_forward_path(demo, settings, tmp_path):
    """A real open_clip model (tiny, saved locally): the pipeline's preprocess/embed_pixels split stores the
    same vectors as the plugin's own embed_images."""
    import torch
    from PIL import Image

    from tests.plugins.builders import save_openclip_folder

    torch.set_num_threads(1)
    folder = save_openclip_folder(tmp_path / "tiny-clip")
    settings.MMSEARCH_MODELS = {"embedder": {
        "BACKEND": "mmsearch.plugins.openclip.OpenClipEmbedder", "OPTIONS": {"model": f"local-dir:{folder}", "device": "cpu"},
    }}
    settings.MMSEARCH_EMBED_BATCH_SIZE = 5
    from mmsearch import plugins

    plugins.reset()
    plugin = get_model("embedder")
    assert pipeline._split_model(plugin) == (plugin.preprocess, plugin.embed_pixels)  # the split path is taken
    out = pipeline.run_images("embedder", plugin.model_key, [i.pk for i in demo])
    assert (out.done, out.failed, out.batches) == (12, 0, 3)
    stored = {e.image_id: np.asarray(e.vector, dtype=float) for e in ImageEmbedding.objects.filter(model_key=plugin.model_key)}
    decoded = []
    for image in demo:
        with default_storage.open(image.file.name) as fh:
            decoded.append(Image.open(fh).convert("RGB"))
    expected = plugin.embed_images(decoded)
    assert np.allclose(np.stack([stored[i.pk] for i in demo]), expected, atol=1e-5)
    plugins.reset()


def test_a_task_that_fails_for_good_fails_its_job(demo):
    """Eager run of the task itself (unit test of the task wrapper): a non-transient error fails the job."""
    from workers import tasks

    job = IndexJob.objects.create(alias="gone", model_key=KEY, kind="images", total=12)
    result = tasks.embed_images.apply(args=("gone", KEY, [i.pk for i in demo]), kwargs={"job_id": job.pk, "chunk": 3})
    assert result.failed()
    job.refresh_from_db()
    assert job.status == "failed"
    assert job.error.startswith("workers.tasks.embed_images chunk 3: PluginError: MMSEARCH_MODELS has no alias 'gone'")
