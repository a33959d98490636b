"""Tag jobs end to end: a real worker on the `tag` queue suggests tags for the demo catalog with the zero-shot
tagger over the stored image vectors; a bulk accept makes a tag a search filter; a killed worker duplicates
nothing once the job resumes."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.test import Client

from catalog.models import ProductTag
from catalog.tags import set_status
from catalog.vocabulary import vocabulary
from mmsearch import indexing as jobs
from mmsearch.models import IndexJobBatch
from mmsearch.plugins import get_model
from tests.workers.conftest import import_demo, wait_for, wait_job

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def tagged_demo(worker_factory, settings):
    """The demo catalog, embedded, with a vocabulary from its category levels; a worker on embed + tag."""
    import_demo()
    call_command("create_vocabulary", "--category-levels", "1,2", stdout=io.StringIO())
    worker = worker_factory(queues="embed,tag")
    job = jobs.start_job("embedder", kind="images")
    wait_job(job.pk, 90, log=worker.log)
    return worker


def test_a_tag_job_suggests_tags_with_progress_and_keys_and_feeds_search(tagged_demo, settings):
    tagger = get_model("tagger")
    groups = {g.slug: g for g in vocabulary()}
    job = jobs.start_tag_job("tagger", filters={"category": ["Fruit"]})
    job = wait_job(job.pk, 90, log=tagged_demo.log)
    assert (job.status, job.kind, job.failed) == ("done", "tags", 0)
    assert job.done == job.total == 28  # the demo catalog's fruit
    rows = ProductTag.objects.filter(source="model")
    assert rows.count() == job.total * tagger.top_k * len(groups)
    keys = set(rows.values_list("model_key", flat=True))
    assert keys == {tagger.group_key(g) for g in groups.values()}
    assert all(0.0 <= s <= 1.0 for s in rows.values_list("score", flat=True))
    # Every fruit is scored in every group (a hashing embedder is no model, so which tag leads is not asserted).
    level1 = rows.filter(model_key=tagger.group_key(groups["category-level-1"]))
    assert level1.values("product").distinct().count() == 28

    # A rerun skips everything this tagger already did.
    again = jobs.start_tag_job("tagger", filters={"category": ["Fruit"]})
    assert (again.total, again.status) == (0, "done")

    # Accepting a suggestion makes it a filter and a facet at once.
    banana = rows.filter(product__sku="grocery-banana").order_by("-score", "id").first()  # its best suggestion
    set_status(ProductTag.objects.filter(pk=banana.pk), "accepted")
    data = Client().get("/api/v1/search", {"q": "banana", "tag": f"{banana.tag.group.slug}:{banana.tag.slug}"}).json()
    assert [r["sku"] for r in data["results"]] == ["grocery-banana"]
    assert data["facets"]["tags"][banana.tag.group.slug][0]["value"] == banana.tag.slug


def test_a_worker_killed_mid_job_leaves_no_duplicates_after_resuming(tagged_demo, worker_factory, settings):
    settings.MMSEARCH_EMBED_BATCH_SIZE = 4
    settings.MMSEARCH_EMBED_BATCHES_PER_TASK = 2
    tagged_demo.stop()
    job = jobs.start_tag_job("slow_tagger")  # the tagger with 0.3 s a batch, so the kill lands mid-job
    assert job.total == 81
    worker = worker_factory(queues="tag", TEST_VISIBILITY_TIMEOUT="6")
    wait_for(lambda: IndexJobBatch.objects.filter(job=job).exists(), 60, interval=0.02, what="the first batch", log=worker.log)
    worker.kill()
    worker = worker_factory(queues="tag", TEST_VISIBILITY_TIMEOUT="6")
    job = wait_job(job.pk, 120, log=worker.log)
    assert (job.status, job.done, job.failed, job.total) == ("done", 81, 0, 81)
    per_key = ProductTag.objects.values_list("product_id", "tag_id", "model_key")
    assert per_key.count() == len(set(per_key))  # unique anyway; and the counters counted each batch once
    assert IndexJobBatch.objects.filter(job=job).count() == job.batches


def test_a_flip_calibration_makes_the_tag_task_score_each_image_with_its_mirror(tmp_path):
    """workers.tagging.flip_vectors, in process: the stored vectors averaged with their mirror images', as the
    tagger's own image_vectors; unchanged for a tagger without flip; an image gone from storage is a failure."""
    import numpy as np
    from django.core.files.storage import default_storage

    from catalog.models import Product
    from mmsearch.adapter import get_catalog
    from tests.plugins.test_zeroshot import SIDED, SidedHashing, fitted_file, tagger_with
    from workers.pipeline import decode_image
    from workers.tagging import flip_vectors

    import_demo(limit=3, tmp_path=tmp_path)
    images = get_catalog().product_images(list(Product.objects.values_list("pk", flat=True)))
    files = [f for per_product in images.values() for f in per_product]
    decoded = [decode_image(f.name) for f in files]
    own = SidedHashing(dim=64).embed_images(decoded)
    vecs = {f.image_id: row for f, row in zip(files, own)}
    plain_path, *_ = fitted_file(tmp_path)
    flip_path, *_ = fitted_file(tmp_path, name="flip.json", flip=True)
    assert flip_vectors(tagger_with({"calibration": str(plain_path)}, SIDED), files, vecs) == (vecs, {})
    tagger = tagger_with({"calibration": str(flip_path)}, SIDED)
    got, failures = flip_vectors(tagger, files, vecs)
    assert failures == {} and set(got) == set(vecs)
    expected = tagger.image_vectors(decoded, own)
    for f, row in zip(files, expected):
        np.testing.assert_allclose(got[f.image_id], row, rtol=1e-5, atol=1e-6)
    assert any(float(got[i] @ vecs[i]) < 0.999 for i in vecs)  # the mirrors changed what is scored
    default_storage.delete(files[0].name)
    got, failures = flip_vectors(tagger, files, vecs)
    assert set(failures) == {files[0].image_id} and set(got) == set(vecs) - {files[0].image_id}
