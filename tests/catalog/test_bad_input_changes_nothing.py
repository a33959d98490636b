"""Bad API requests and bad import rows leave the catalog, its image files and the vector tables as they were."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from django.apps import apps
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection

from catalog import importer as importer_module
from catalog.importer import CatalogImporter
from catalog.models import Category, Product, ProductImage, ProductTag, Tag, TagGroup
from tests.conftest import make_image

pytestmark = pytest.mark.django_db

TABLES = [
    (Product, "catalog"), (ProductImage, "catalog"), (Category, "catalog"), (Tag, "catalog"), (ProductTag, "catalog"),
    ("ImageEmbedding", "mmsearch"), ("ProductTextEmbedding", "mmsearch"),
]


def snapshot() -> dict:
    """Every row of the catalog and vector tables, and every file under MEDIA_ROOT with its sha256."""
    state = {}
    with connection.cursor() as cursor:
        for model, app in TABLES:
            model = apps.get_model(app, model) if isinstance(model, str) else model
            cursor.execute(f'SELECT * FROM "{model._meta.db_table}" ORDER BY 1')
            state[model._meta.db_table] = [tuple(map(str, row)) for row in cursor.fetchall()]
    media = Path(settings.MEDIA_ROOT)
    state["files"] = sorted(
        (p.relative_to(media).as_posix(), hashlib.sha256(p.read_bytes()).hexdigest())
        for p in media.rglob("*") if p.is_file()
    )
    return state


@pytest.fixture
def stocked(catalog_writer):
    """Two products with images, a tag and vectors of both kinds."""
    cw = catalog_writer
    cw.add({"sku": "tee", "title": "Tee", "category": "Apparel/Tees", "price": 5, "attributes": {"colour": "Red"},
            "images": [cw.image("tee.jpg")]})
    cw.add({"sku": "cap", "title": "Cap", "images": [cw.image("cap.png", fmt="PNG", color=(0, 90, 0))]})
    report = CatalogImporter(cw.write()).run()
    assert report.rejected == [] and report.created == 2
    ProductTag.objects.create(product=Product.objects.get(sku="tee"),
                              tag=Tag.objects.create(group=TagGroup.objects.create(name="Pattern"), name="Plain"))
    image_emb = apps.get_model("mmsearch", "ImageEmbedding")
    text_emb = apps.get_model("mmsearch", "ProductTextEmbedding")
    for i, image in enumerate(ProductImage.objects.all()):
        image_emb.objects.create(image=image, product=image.product, model_key="test:1", vector=[i, 1.0, 0.5])
        text_emb.objects.create(product=image.product, model_key="test:1", vector=[1.0, i, 0.0], text_sha256="0" * 64)
    return cw


def bad_api_requests(client):
    send = lambda method, url, body: getattr(client, method)(url, json.dumps(body), content_type="application/json")  # noqa: E731
    new = {"sku": "new", "title": "New"}
    for body in [
        {**new, "category": "A/" + "c" * 201}, {**new, "attributes": {"k\x00": "v"}}, {**new, "attributes": {"k": "v\x00"}},
        {**new, "title": "T\x00"}, {**new, "sku": "n\x00"}, {**new, "price": "1e12"}, {**new, "price": -3},
        {**new, "currency": "ßßß"}, {**new, "description": "x" * 100_001}, {**new, "category": "/".join(["c" * 200] * 6)},
    ]:
        yield send("post", "/api/v1/products/", body)
    for body in [{"title": "T\x00"}, {"category": "Apparel/" + "x" * 300}, {"attributes": {"colour": "\ud800"}},
                 {"price": "99999999999"}, {"brand": "b" * 201}]:
        yield send("patch", "/api/v1/products/tee/", body)
        yield send("put", "/api/v1/products/tee/", {"sku": "tee", "title": "Tee", **body})
    yield send("put", "/api/v1/products/tee%00/", {"sku": "tee", "title": "X"})
    yield client.delete("/api/v1/products/tee%00/")
    yield client.delete("/api/v1/products/tee/images/999999999999999999999")
    upload = SimpleUploadedFile("n.jpg", make_image(color=(9, 9, 9)), content_type="image/jpeg")
    yield client.post("/api/v1/products/tee/images", {"file": upload, "position": 2**31}, format="multipart")
    upload = SimpleUploadedFile("n.jpg", make_image(color=(9, 9, 9)), content_type="image/jpeg")
    yield client.post("/api/v1/products/tee%00/images", {"file": upload}, format="multipart")
    tee_tees = Category.objects.get(path="Apparel/Tees")
    yield send("patch", f"/api/v1/categories/{tee_tees.pk}/", {"name": "x\x00"})
    yield send("patch", f"/api/v1/categories/{tee_tees.pk}/", {"name": "x" * 201})
    yield send("post", "/api/v1/product-tags/", {"product": "tee\x00", "tag": Tag.objects.get().pk})
    yield client.get("/api/v1/products/?attr.colour=%00")


def bad_import_file(cw) -> Path:
    rows = [
        {"sku": "tee", "title": "Tee\x00 renamed", "images": [cw.image("new.jpg", color=(1, 1, 1))]},
        {"sku": "tee", "title": "Tee", "images": ["../outside.jpg"]},
        {"sku": "tee", "title": "Tee", "images": ["/etc/hostname"]},
        {"sku": "cap", "title": "Cap", "attributes": {"k\x00": 1}, "images": [cw.image("cap2.jpg", color=(2, 2, 2))]},
        {"sku": "cap", "title": "Cap", "category": "A/" + "x" * 201},
        {"sku": "new-1", "title": "x", "price": 1e10, "images": [cw.image("n1.jpg", color=(3, 3, 3))]},
        {"sku": "new-2", "title": "x", "attributes": {"w": float("nan")}},
        {"sku": "new-3\ud800", "title": "x"},
        {"sku": "new-4", "title": "x", "currency": "ßßß", "category": "Brand/New"},
    ]
    path = cw.root / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{bad json\n")
    return path


def test_bad_requests_and_bad_imports_change_nothing(stocked, staff_client, monkeypatch):
    before = snapshot()
    assert len(before["files"]) == 2 and before["mmsearch_imageembedding"]
    statuses = [r.status_code for r in bad_api_requests(staff_client)]
    assert all(400 <= s < 500 for s in statuses), statuses

    path = bad_import_file(stocked)
    report = CatalogImporter(path, batch_size=3).run()
    assert len(report.rejected) == report.rows == 10 and report.imported == 0
    assert snapshot() == before

    # The same file with validation off: PostgreSQL refuses the rows, and each refused batch leaves nothing.
    monkeypatch.setattr(importer_module, "text_problem", lambda value, **kw: None)
    monkeypatch.setattr(importer_module, "check_json_text", lambda value, **kw: None)
    report = CatalogImporter(path, batch_size=3).run()
    assert {e.line for e in report.rejected if e.reason.startswith("refused by the database")} >= {1, 4, 8}
    assert snapshot() == before
