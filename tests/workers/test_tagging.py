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
