"""Caption jobs end to end: a tiny captioner trained here on the demo catalog, a real worker on the `caption`
queue, progress to total, scores from the embedder's stored image vectors, cancel and resume, and an edited
caption that makes its product found by a word only the caption has (full text and product-text vector)."""

from __future__ import annotations

import io
import time

import pytest
from django.core.management import call_command
from django.db import transaction

from catalog.models import Caption, Product
from mmsearch import indexing as jobs
from mmsearch import plugins
from mmsearch.models import IndexJobBatch, ProductTextEmbedding
from mmsearch.plugins import get_model
from mmsearch.plugins.runtime import unit_rows
from mmsearch.search import vectors
from tests.workers.config import captioner_models
from tests.workers.conftest import DEMO, import_demo, wait_for, wait_job

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="session")
def tiny_captioner(tmp_path_factory) -> str:
    """A captioner folder trained for a few steps on the demo catalog (its words, not good captions)."""
    root = tmp_path_factory.mktemp("captioner")
    call_command("train_captioner", "--data", str(DEMO), "--out", str(root / "captioner"), "--preset", "tiny",
                 "--max-steps", "6", "--cache-dir", str(root / "cache"), "--checkpoint-every", "0", "--no-progress",
                 stdout=io.StringIO())
    return str(root / "captioner")


@pytest.fixture
def captioned_demo(worker_factory, settings, tiny_captioner):
    """The demo catalog with its images embedded; a worker on embed + caption with the tiny captioner."""
    settings.MMSEARCH_MODELS = captioner_models(tiny_captioner)
    plugins.reset()
    import_demo()
    worker = worker_factory(queues="embed,caption", TEST_CAPTIONER_PATH=tiny_captioner)
    job = jobs.start_job("embedder", kind="images")
    wait_job(job.pk, 90, log=worker.log)
    yield worker
    plugins.reset()


def test_a_caption_job_captions_with_progress_to_total_and_scores(captioned_demo, staff_client):
    captioner = get_model("captioner")
    job = jobs.start_caption_job("captioner", filters={"category": ["Fruit"]})
    assert (job.kind, job.total) == ("captions", 28)  # the demo catalog's fruit
    job = wait_job(job.pk, 180, log=captioned_demo.log)
    assert (job.status, job.done, job.failed, job.total) == ("done", 28, 0, 28)
    assert job.progress == 1.0 and job.forward_seconds > 0
    rows = Caption.objects.select_related("image")
    assert rows.count() == 28 and set(rows.values_list("model_key", flat=True)) == {captioner.model_key}
    assert set(rows.values_list("status", flat=True)) == {"suggested"}
    assert all(r.text.strip() and r.image_id == r.product.images.order_by("position", "id")[0].pk for r in rows)
    # the score is the embedder's cosine of the caption and its image's stored vector
    embedder = get_model("embedder")
    row = rows.first()
    image_vec = vectors.image_vectors(embedder.model_key, [row.image_id])[row.image_id]
    expected = float(unit_rows(image_vec) @ unit_rows(embedder.embed_texts([row.text]))[0])
    assert row.score == pytest.approx(expected, abs=1e-5) and -1 <= row.score <= 1

    # the same captions for the same images from the plugin in this process (deterministic beam search)
    from workers.pipeline import decode_image

    assert captioner.caption([decode_image(row.image.file.name)])[0].text == row.text
    # a rerun (here through the REST API) skips what this model captioned
    again = staff_client.post("/api/v1/index-jobs/", {"kind": "captions", "filters": {"category": ["Fruit"]}},
                              format="json")
    assert again.status_code == 201
    assert {k: again.json()[k] for k in ("kind", "alias", "total", "status")} == \
        {"kind": "captions", "alias": "captioner", "total": 0, "status": "done"}


def test_a_cancelled_caption_job_resumes_with_what_is_left(captioned_demo, worker_factory, settings):
    settings.MMSEARCH_EMBED_BATCH_SIZE = 4
    settings.MMSEARCH_EMBED_BATCHES_PER_TASK = 1
    captioned_demo.stop()
    worker = worker_factory(queues="caption", TEST_CAPTIONER_PATH=settings.MMSEARCH_MODELS["captioner"]["OPTIONS"]["path"])
    job = jobs.start_caption_job("slow_captioner")
    assert job.total == 81
    wait_for(lambda: IndexJobBatch.objects.filter(job=job).count() >= 2, 120, interval=0.05, what="two batches",
             log=worker.log)
    job = jobs.cancel_job(job)
    assert job.status == "cancelled"

    def settled():  # the task running at the cancel finishes its batch; the rest return without work
        before = Caption.objects.count()
        time.sleep(2.0)
        return Caption.objects.count() == before

    wait_for(settled, 60, what="the worker to go idle", log=worker.log)
    done = Caption.objects.values("product").distinct().count()
    assert 8 <= done < 81
    resumed = jobs.start_caption_job("slow_captioner")
    assert resumed.total == 81 - done  # only what is left
    resumed = wait_job(resumed.pk, 240, log=worker.log)
    assert (resumed.status, resumed.done, resumed.failed) == ("done", 81 - done, 0)
    per_image = list(Caption.objects.values_list("image_id", "model_key"))
    assert len(per_image) == len(set(per_image)) == 81  # every product once, nothing twice


def nearest_products(query: str, k: int = 3, alias: str = "text_embedder") -> list[str]:
    """Skus of the k products whose stored product-text vector (alias's active key) is nearest to the query's."""
    from mmsearch.search import signals

    active = vectors.active_model(alias)
    encoder = signals.Encoder(alias, get_model(alias), active.model_key, active.dim)
    qvec = unit_rows(encoder.model.embed_texts([query]))[0]
    fsql, fparams = signals.filter_sql({})
    with transaction.atomic():
        hits = signals.vector_candidates("product", encoder, qvec, fsql, fparams, k, {})
    by_id = dict(Product.objects.filter(pk__in=[h.item_id for h in hits]).values_list("pk", "sku"))
    return [by_id[h.item_id] for h in hits]


def test_an_edited_caption_makes_its_product_found_by_a_word_only_the_caption_has(captioned_demo, staff_client, settings):
    from django.test import Client

    settings.MMSEARCH_INDEX_ALIASES = ["embedder", "text_embedder"]
    job = wait_job(jobs.start_job("text_embedder").pk, 240, log=captioned_demo.log)  # MiniLM product-text vectors
    assert job.status == "done"
    job = wait_job(jobs.start_caption_job("captioner", skus=["grocery-banana"]).pk, 120, log=captioned_demo.log)
    caption = Caption.objects.get(product__sku="grocery-banana")
    word = "zebra"  # no product's text has it
    assert not Product.objects.filter(search_vector__isnull=False).extra(
        where=["search_vector @@ plainto_tsquery('english', %s)"], params=[word]).exists()
    assert "grocery-banana" not in nearest_products(word, 1)
    key = get_model("text_embedder").model_key
    before = ProductTextEmbedding.objects.get(product=caption.product, model_key=key).text_sha256

    settings.MMSEARCH_AUTO_INDEX = True  # the review decision queues the product's re-embedding (catalog_changed)
    response = staff_client.patch(f"/api/v1/captions/{caption.pk}/", {"text": f"{caption.text} {word}"}, format="json")
    assert response.status_code == 200 and response.json()["status"] == "accepted"
    # full text at once; the product-text vector once the worker has re-embedded the product (the change path)
    results = Client().get("/api/v1/search", {"q": word}).json()["results"]
    assert results[0]["sku"] == "grocery-banana"
    wait_for(lambda: ProductTextEmbedding.objects.get(product=caption.product, model_key=key).text_sha256 != before,
             120, what="the product text to be re-embedded", log=captioned_demo.log)
    assert nearest_products(word, 1) == ["grocery-banana"]
