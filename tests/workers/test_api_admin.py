"""Index-job REST API (staff only), the admin's progress column and switch action, and saves without a broker."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.db import connection

from catalog.models import ProductImage
from mmsearch.celery import app
from mmsearch.models import ActiveModel, IndexJob
from tests.workers.conftest import ROOT, import_demo
from workers import pipeline

pytestmark = pytest.mark.django_db(transaction=True)

KEY = "hashing:64:0"
KEY_V2 = "hashing:32:1"


def queued() -> int:
    with app.connection_for_write() as conn:
        return conn.default_channel.client.llen("embed")


@pytest.fixture
def small_catalog(models, broker, tmp_path):
    import_demo(limit=10, tmp_path=tmp_path)


def test_staff_starts_a_job_and_reads_its_progress(small_catalog, staff_client, settings):
    settings.MMSEARCH_EMBED_BATCH_SIZE = 4
    settings.MMSEARCH_EMBED_BATCHES_PER_TASK = 2
    resp = staff_client.post("/api/v1/index-jobs/", {"alias": "embedder"}, format="json")
    assert resp.status_code == 201, resp.content
    body = resp.json()
    assert (body["alias"], body["model_key"], body["kind"], body["status"]) == ("embedder", KEY, "all", "queued")
    assert (body["total"], body["done"], body["progress"], body["batches"]) == (20, 0, 0.0, 6)
    assert queued() == 4  # 10 images and 10 products in tasks of 8

    # Run one task body the way a worker would, then read the progress.
    ids = list(ProductImage.objects.order_by("pk").values_list("pk", flat=True))
    pipeline.run_images("embedder", KEY, ids[:8], job_id=body["id"], chunk=0)
    detail = staff_client.get(f"/api/v1/index-jobs/{body['id']}/").json()
    assert (detail["status"], detail["done"], detail["progress"]) == ("running", 8, 0.4)
    assert detail["started_at"] and detail["items_per_second"] > 0

    listing = staff_client.get("/api/v1/index-jobs/?status=running").json()
    assert [j["id"] for j in listing["results"]] == [body["id"]]

    cancelled = staff_client.post(f"/api/v1/index-jobs/{body['id']}/cancel").json()
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"]


def test_index_jobs_are_staff_only(small_catalog, api_client, django_user_model):
    assert api_client.get("/api/v1/index-jobs/").status_code == 401
    assert api_client.post("/api/v1/index-jobs/", {}, format="json").status_code == 401
    user = django_user_model.objects.create_user("shopper", password="pw")
    api_client.force_authenticate(user)
    assert api_client.get("/api/v1/index-jobs/").status_code == 403
    assert api_client.post("/api/v1/index-jobs/", {}, format="json").status_code == 403
    assert not IndexJob.objects.exists()


@pytest.mark.parametrize(
    "payload, message",
    [
        ({"alias": "nope"}, "MMSEARCH_MODELS has no alias 'nope'"),
        ({"alias": "embedder", "only_missing": True, "force": True}, "contradict"),
        ({"alias": "embedder", "kind": "videos"}, "kind"),
    ],
)
def test_bad_job_requests_are_400(small_catalog, staff_client, payload, message):
    resp = staff_client.post("/api/v1/index-jobs/", payload, format="json")
    assert resp.status_code == 400
    assert message in resp.json()["detail"]
    assert not IndexJob.objects.exists()


def test_admin_progress_and_switch_action(small_catalog, admin_client):
    ids = list(ProductImage.objects.values_list("pk", flat=True))
    # The green alias of a swap: it never activates itself, only the role's own alias does (when none is active).
    job = IndexJob.objects.create(alias="embedder_v2", model_key=KEY_V2, kind="all", total=20, done=8)
    page = admin_client.get("/admin/mmsearch/indexjob/")
    assert page.status_code == 200
    assert b'<progress value="8" max="20"' in page.content and b"8/20 (40%)" in page.content

    # Coverage incomplete: the action refuses and says why.
    resp = admin_client.post(
        "/admin/mmsearch/indexjob/", {"action": "activate_model", "_selected_action": [job.pk]}, follow=True
    )
    assert b"is not fully indexed" in resp.content
    assert not ActiveModel.objects.exists()

    pipeline.run_images("embedder_v2", KEY_V2, ids)
    pipeline.run_products("embedder_v2", KEY_V2, list(ProductImage.objects.values_list("product_id", flat=True)))
    assert not ActiveModel.objects.exists()
    resp = admin_client.post(
        "/admin/mmsearch/indexjob/", {"action": "activate_model", "_selected_action": [job.pk]}, follow=True
    )
    assert b"Embedder: (none) -&gt; hashing:32:1" in resp.content  # the admin capitalises messages
    assert ActiveModel.objects.get(alias="embedder").model_key == KEY_V2
    page = admin_client.get("/admin/mmsearch/activemodel/")
    assert b"images: 10/10 embedded, 0 failed, 0 missing" in page.content


def test_first_model_of_a_slot_activates_itself(small_catalog):
    ids = list(ProductImage.objects.values_list("pk", flat=True))
    pipeline.run_images("embedder", KEY, ids)
    assert not ActiveModel.objects.exists()  # product texts are still missing
    pipeline.run_products("embedder", KEY, list(ProductImage.objects.values_list("product_id", flat=True)))
    active = ActiveModel.objects.get(alias="embedder")
    assert (active.model_key, active.dim) == (KEY, 64)
    # Later models never take over by themselves.
    pipeline.run_images("embedder_v2", KEY_V2, ids, force=True)
    pipeline.run_products("embedder_v2", KEY_V2, list(ProductImage.objects.values_list("product_id", flat=True)))
    assert ActiveModel.objects.get(alias="embedder").model_key == KEY


def test_product_save_without_a_broker_succeeds(transactional_db, tmp_path):
    """A save in a process whose broker is unreachable: logged, saved, left for `reindex`."""
    script = (
        "from catalog.models import Product\n"
        "p = Product.objects.create(sku='no-broker', title='Saved anyway')\n"
        "print('saved', p.pk)\n"
    )
    env = {
        **os.environ,
        "MMSEARCH_DB_NAME": connection.settings_dict["NAME"],
        "REDIS_URL": f"redis+socket://{tmp_path / 'no-redis.sock'}",
        "MMSEARCH_AUTO_INDEX": "1",
        "DJANGO_SETTINGS_MODULE": "mmsearch.settings",
    }
    proc = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "saved" in proc.stdout
    assert "could not queue embedding of 1 products / 0 images" in proc.stderr
    from catalog.models import Product

    assert Product.objects.filter(sku="no-broker").exists()
