"""export_catalog writes the interchange format; importing it into an empty database gives the same catalog."""

from __future__ import annotations

import io
import json
import shutil

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError

from catalog.importer import CatalogImporter
from catalog.models import Category, Product, ProductImage

pytestmark = pytest.mark.django_db


def catalog_state() -> dict:
    products = {
        p.sku: {
            "title": p.title, "description": p.description, "brand": p.brand, "price": p.price,
            "currency": p.currency, "attributes": p.attributes,
            "category": p.category.path if p.category else None,
            "images": [(i.sha256, i.width, i.height) for i in p.images.all()],
        }
        for p in Product.objects.select_related("category").prefetch_related("images")
    }
    return {"products": products, "categories": set(Category.objects.values_list("path", flat=True))}


def build_catalog(cw) -> None:
    shared = cw.image("shared.png", fmt="PNG", color=(1, 2, 3))
    cw.add({"sku": "x-1", "title": "Kurta", "description": "Cotton, hand block printed", "brand": "Fab",
            "category": "Apparel/Topwear/Kurtas", "price": 19.99, "currency": "EUR",
            "attributes": {"colour": "Red", "year": 2012}, "images": [cw.image("a.jpg"), shared]})
    cw.add({"sku": "x-2", "title": "Mug", "category": "Home/Kitchen", "images": [shared]})
    cw.add({"sku": "x-3", "title": "Rotated photo", "images": [cw.image("r.jpg", exif_orientation=8)]})
    cw.add({"sku": "x-4", "title": "No images, no category", "price": 0})


def test_round_trip_into_an_empty_database(catalog_writer, tmp_path):
    build_catalog(catalog_writer)
    assert CatalogImporter(catalog_writer.write()).run().rejected == []
    before = catalog_state()

    out = tmp_path / "export" / "products.jsonl"
    out.parent.mkdir()
    stdout = io.StringIO()
    call_command("export_catalog", str(out), "--no-progress", stdout=stdout)
    assert "wrote 4 products" in stdout.getvalue()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["sku"] for r in rows] == ["x-1", "x-2", "x-3", "x-4"]
    assert rows[0]["category"] == "Apparel/Topwear/Kurtas" and rows[0]["price"] == 19.99
    assert "category" not in rows[3] and rows[3]["images"] == []
    assert len(list((out.parent / "images").iterdir())) == 3  # shared bytes exported once

    # An empty database and empty media storage.
    ProductImage.objects.all().delete()
    Product.objects.all().delete()
    Category.objects.filter(children__isnull=True).delete()
    while Category.objects.exists():
        Category.objects.filter(children__isnull=True).delete()
    shutil.rmtree(settings.MEDIA_ROOT)

    report = CatalogImporter(out).run()
    assert report.rejected == [] and report.created == 4
    assert catalog_state() == before

    again = CatalogImporter(out).run()
    assert (again.created, again.updated, again.unchanged) == (0, 0, 4)


def test_export_one_category_subtree(catalog_writer, tmp_path):
    build_catalog(catalog_writer)
    CatalogImporter(catalog_writer.write()).run()
    out = tmp_path / "apparel.jsonl"
    call_command("export_catalog", str(out), "--category", "Apparel", "--no-progress", stdout=io.StringIO())
    assert [json.loads(line)["sku"] for line in out.read_text().splitlines()] == ["x-1"]


def test_export_refuses_bad_targets(tmp_path):
    with pytest.raises(CommandError, match="is a folder"):
        call_command("export_catalog", str(tmp_path), "--no-progress")
    with pytest.raises(CommandError, match="no such folder"):
        call_command("export_catalog", str(tmp_path / "missing" / "p.jsonl"), "--no-progress")
    with pytest.raises(CommandError, match="unknown category"):
        call_command("export_catalog", str(tmp_path / "p.jsonl"), "--category", "Nope", "--no-progress")
