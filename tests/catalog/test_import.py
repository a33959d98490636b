"""import_catalog: validation of every row, upserts by sku, idempotent re-runs, content-addressed images."""

from __future__ import annotations

import hashlib
import io
import json
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError

from catalog.importer import CatalogImporter
from catalog.models import Category, Product, ProductImage

pytestmark = pytest.mark.django_db

GROCERY = Path(settings.BASE_DIR) / "demo" / "grocery" / "products.jsonl"


def run_import(path: Path, **kwargs):
    return CatalogImporter(path, **kwargs).run()


def snapshot() -> dict:
    return {
        p.sku: (p.title, p.price, p.attributes, p.category.path if p.category else None, p.updated_at,
                [(i.sha256, i.position) for i in p.images.all()])
        for p in Product.objects.select_related("category").prefetch_related("images")
    }


def write_bad_file(cw) -> Path:
    good_image = cw.image("good.jpg")
    whole = (cw.root / "images" / "good.jpg").read_bytes()
    (cw.root / "images" / "corrupt.jpg").write_bytes(whole[: len(whole) // 2])  # a truncated JPEG
    (cw.root / "images" / "notes.jpg").write_text("not a picture")
    (cw.root / "images" / "anim.gif").write_bytes(_gif())
    rows = [
        {"sku": "ok-1", "title": "Good one", "category": "A/B", "price": 9.5, "currency": "eur",
         "attributes": {"colour": "Red", "size": 42}, "images": [good_image]},                          # 1
        {"title": "No sku"},                                                                              # 2
        {"sku": "t-empty", "title": "   "},                                                               # 3
        {"sku": "t-missing"},                                                                             # 4
        '{"sku": "json-bad", "title": ',                                                                  # 5
        {"sku": "p-str", "title": "x", "price": "cheap"},                                                 # 6
        {"sku": "p-list", "title": "x", "price": [1]},                                                    # 7
        {"sku": "a-list", "title": "x", "attributes": []},                                                # 8
        {"sku": "a-nested", "title": "x", "attributes": {"size": {"eu": 42}}},                            # 9
        {"sku": "i-str", "title": "x", "images": "images/good.jpg"},                                      # 10
        {"sku": "c-num", "title": "x", "category": 5},                                                    # 11
        {"sku": "i-missing", "title": "x", "images": ["images/nope.jpg"]},                                # 12
        {"sku": "i-corrupt", "title": "x", "images": ["images/corrupt.jpg"]},                             # 13
        {"sku": "ok-1", "title": "Duplicate"},                                                            # 14
        {"sku": "ok-2", "title": "Second good", "brand": "Acme"},                                         # 15
        "[1, 2]",                                                                                         # 16
        {"sku": "i-gif", "title": "x", "images": ["images/anim.gif"]},                                    # 17
        {"sku": "p-neg", "title": "x", "price": -1},                                                      # 18
        {"sku": 17, "title": "x"},                                                                        # 19
        {"sku": "i-text", "title": "x", "images": ["images/notes.jpg"]},                                  # 20
    ]
    for row in rows:
        cw.add(row)
    return cw.write()


def _gif() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (4, 4)).save(out, format="GIF")
    return out.getvalue()


EXPECTED_ERRORS = {
    2: "missing 'sku'",
    3: "'title' is empty",
    4: "missing 'title'",
    5: "bad JSON",
    6: "'price' is not a number",
    7: "'price' must be a number, not list",
    8: "'attributes' must be an object, not list",
    9: "attribute 'size' must be a string or a number, not dict",
    10: "'images' must be a list of file paths",
    11: "'category' must be a string path, not int",
    12: "image images/nope.jpg not found",
    13: "image images/corrupt.jpg: the image is corrupt or truncated",
    14: "duplicate sku (first on line 1)",
    16: "a row must be a JSON object, not list",
    17: "image images/anim.gif: format GIF is not accepted",
    18: "'price' must be between 0",
    19: "'sku' must be a string, not int",
    20: "image images/notes.jpg: not an image file",
}


def test_bad_rows_are_reported_and_good_rows_imported(catalog_writer):
    path = write_bad_file(catalog_writer)
    report = run_import(path, batch_size=4)  # several batches, so the duplicate check spans batches
    errors = {e.line: e for e in report.rejected}
    assert sorted(errors) == sorted(EXPECTED_ERRORS)
    for line, reason in EXPECTED_ERRORS.items():
        assert reason in errors[line].reason, (line, errors[line])
    assert str(errors[14]).startswith("line 14 (sku ok-1): duplicate sku")
    assert (report.rows, report.created, report.updated, report.unchanged) == (20, 2, 0, 0)
    assert set(Product.objects.values_list("sku", flat=True)) == {"ok-1", "ok-2"}

    good = Product.objects.get(sku="ok-1")
    assert good.title == "Good one"  # the duplicate on line 14 did not overwrite it
    assert good.price == Decimal("9.50") and good.currency == "EUR"
    assert good.attributes == {"colour": "Red", "size": 42}
    assert good.category.path == "A/B"
    image = good.images.get()
    data = (catalog_writer.root / "images" / "good.jpg").read_bytes()
    assert image.sha256 == hashlib.sha256(data).hexdigest()
    assert (image.width, image.height) == (32, 24)
    assert Product.objects.get(sku="ok-2").brand == "Acme"


def test_command_exits_non_zero_and_names_lines(catalog_writer):
    path = write_bad_file(catalog_writer)
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError, match="18 of 20 rows rejected"):
        call_command("import_catalog", str(path), "--no-progress", stdout=out, stderr=err)
    assert f"{path}: line 5 (sku" not in err.getvalue()  # bad JSON has no sku to name
    assert f"{path}: line 5: bad JSON" in err.getvalue()
    assert f"{path}: line 12 (sku i-missing): image images/nope.jpg not found" in err.getvalue()
    assert "2 created, 0 updated, 0 unchanged, 18 rejected" in out.getvalue()
    assert Product.objects.count() == 2


def test_command_refuses_missing_file(tmp_path):
    with pytest.raises(CommandError, match="no such file"):
        call_command("import_catalog", str(tmp_path / "nope.jsonl"), "--no-progress")


def test_clean_file_exits_zero(catalog_writer):
    catalog_writer.add({"sku": "a", "title": "A", "images": [catalog_writer.image("a.png", fmt="PNG")]})
    out = io.StringIO()
    call_command("import_catalog", str(catalog_writer.write()), "--no-progress", stdout=out, stderr=io.StringIO())
    assert "1 created" in out.getvalue() and "0 rejected" in out.getvalue()


def test_reimport_changes_nothing_and_a_changed_row_updates_one_product(catalog_writer):
    cw = catalog_writer
    shared = cw.image("shared.jpg", color=(10, 20, 30))
    rows = [
        {"sku": f"s{i}", "title": f"Item {i}", "category": "Fruit/Apple", "price": i + 0.5,
         "attributes": {"n": i}, "images": [shared, cw.image(f"own{i}.jpg", color=(i * 20, 0, 0))]}
        for i in range(6)
    ]
    for row in rows:
        cw.add(row)
    path = cw.write()
    first = run_import(path, batch_size=4)
    assert (first.created, first.updated, first.unchanged, first.images_added) == (6, 0, 0, 12)
    before = snapshot()
    files = sorted(p for p in Path(settings.MEDIA_ROOT).rglob("*") if p.is_file())
    assert len(files) == 7  # the shared bytes are one file for all six products

    again = run_import(path, batch_size=4)
    assert (again.created, again.updated, again.unchanged, again.images_added, again.images_removed) == (6 - 6, 0, 6, 0, 0)
    assert snapshot() == before
    assert Category.objects.count() == 2

    rows[2]["title"] = "Item two, renamed"
    rows[4]["images"] = [rows[4]["images"][1]]  # drop the shared image from s4
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    changed = run_import(path)
    assert (changed.created, changed.updated, changed.unchanged) == (0, 2, 4)
    assert changed.images_removed == 1
    after = snapshot()
    assert after["s2"][0] == "Item two, renamed" and after["s2"][4] > before["s2"][4]
    assert [pos for _, pos in after["s4"][5]] == [0] and after["s4"][4] > before["s4"][4]
    for sku in ("s0", "s1", "s3", "s5"):
        assert after[sku] == before[sku]


def test_row_without_images_key_keeps_images(catalog_writer):
    cw = catalog_writer
    cw.add({"sku": "k", "title": "Keep", "images": [cw.image("k.jpg")]})
    run_import(cw.write())
    cw.lines = [json.dumps({"sku": "k", "title": "Keep, retitled"})]
    report = run_import(cw.write())
    assert report.updated == 1
    assert ProductImage.objects.filter(product__sku="k").count() == 1


def test_same_image_listed_twice_is_stored_once(catalog_writer):
    cw = catalog_writer
    img = cw.image("twice.jpg")
    cw.add({"sku": "d", "title": "Dup", "images": [img, img]})
    report = run_import(cw.write())
    assert report.images_added == 1
    assert ProductImage.objects.get().position == 0


def test_exif_rotated_image_is_imported_upright(catalog_writer):
    cw = catalog_writer
    cw.add({"sku": "r", "title": "Rotated", "images": [cw.image("rot.jpg", exif_orientation=6)]})
    run_import(cw.write())
    image = ProductImage.objects.get()
    assert (image.width, image.height) == (24, 32)


def test_demo_catalog_imports_cleanly():
    report = run_import(GROCERY)
    assert report.rejected == []
    assert report.created == Product.objects.count() == 81
    assert report.images_added == ProductImage.objects.count() == 81
    banana = ProductImage.objects.get(product__sku="grocery-banana")
    original = (GROCERY.parent / "images" / "Banana_Iconic.jpg").read_bytes()
    assert banana.sha256 == hashlib.sha256(original).hexdigest()  # the catalogue's bytes, not a re-encoding
    assert Category.objects.filter(path="Fruit").exists()


def test_catalog_changed_is_sent_after_commit_with_ids_only(catalog_writer, django_capture_on_commit_callbacks):
    from mmsearch.adapter import catalog_changed

    received = []

    def listener(sender, product_ids, image_ids, **kwargs):
        received.append((sorted(product_ids), sorted(image_ids)))

    catalog_changed.connect(listener)
    try:
        cw = catalog_writer
        cw.add({"sku": "n1", "title": "One", "images": [cw.image("n1.jpg")]})
        cw.add({"sku": "n2", "title": "Two"})
        path = cw.write()
        with django_capture_on_commit_callbacks(execute=True):
            run_import(path)
        products = sorted(Product.objects.values_list("pk", flat=True))
        assert received == [(products, [ProductImage.objects.get().pk])]

        received.clear()
        with django_capture_on_commit_callbacks(execute=True):
            run_import(path)
        assert received == []  # nothing changed, nothing to re-index
    finally:
        catalog_changed.disconnect(listener)


def test_prune_images_deletes_only_unused_files(catalog_writer, media_root):
    cw = catalog_writer
    shared = cw.image("shared.jpg", color=(5, 5, 5))
    cw.add({"sku": "p1", "title": "One", "images": [shared, cw.image("own1.jpg", color=(50, 0, 0))]})
    cw.add({"sku": "p2", "title": "Two", "images": [shared]})
    run_import(cw.write())
    files = lambda: sorted(p.relative_to(media_root).as_posix() for p in media_root.rglob("*") if p.is_file())  # noqa: E731
    assert len(files()) == 2

    Product.objects.get(sku="p1").delete()  # its own image is now unused; the shared one is still p2's
    out = io.StringIO()
    call_command("prune_images", "--min-age", "0", "--dry-run", stdout=out)
    assert "would delete 1 unused files" in out.getvalue() and len(files()) == 2
    call_command("prune_images", "--min-age", "3600", stdout=out)  # too new: an import may still need it
    assert len(files()) == 2
    call_command("prune_images", "--min-age", "0", stdout=out)
    assert "deleted 1 unused files" in out.getvalue()
    assert files() == [ProductImage.objects.get().file.name]
