"""import_catalog never stops on a bad row: every row the database would refuse is a rejected row with its line
number and reason, and the good rows of the same batch are stored."""

from __future__ import annotations

import io
import json
import math
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import transaction
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from catalog import importer as importer_module
from catalog.importer import CatalogImporter, ParsedRow, RowRejected, parse_row
from catalog.models import Category, Product, ProductImage

pytestmark = pytest.mark.django_db

GOOD = {"sku": "good-1", "title": "Good one", "category": "A/B", "price": 9.5, "attributes": {"colour": "Red"}}


def bad_rows(cw) -> list[tuple[object, str | None]]:
    """(row, expected reason) pairs; a None reason marks a good row. Raw strings are written as they are."""
    img = cw.image("good.jpg")
    outside = cw.root.parent / "outside.jpg"
    outside.write_bytes((cw.root / img).read_bytes())
    row = lambda **kw: {"sku": kw.pop("sku", "x"), "title": "x", **kw}  # noqa: E731
    return [
        (dict(GOOD, images=[img]), None),
        (row(sku="nul-title", title="Red\x00tee"), "'title' contains a NUL character (position 3)"),
        (row(sku="nul-sku\x00"), "'sku' contains a NUL character (position 7)"),
        (row(sku="nul-desc", description="a\x00b"), "'description' contains a NUL character"),
        (row(sku="nul-brand", brand="\x00"), "'brand' contains a NUL character"),
        (row(sku="ctl-title", title="bell\x07"), "'title' contains the control character U+0007"),
        (row(sku="nl-title", title="two\nlines"), "'title' contains the control character U+000A"),
        (row(sku="sur-title", title="half \ud83d"), "'title' contains a lone surrogate U+D83D"),
        (row(sku="nul-attr-key", attributes={"col\x00our": "Red"}), "attribute name 'col\\x00our' contains a NUL"),
        (row(sku="nul-attr-val", attributes={"colour": "Re\x00d"}), "attribute 'colour' contains a NUL character"),
        (row(sku="nan-attr", attributes={"w": float("nan")}), "attribute 'w' must be a finite number"),
        (row(sku="inf-attr", attributes={"w": float("inf")}), "attribute 'w' must be a finite number"),
        (row(sku="long-attr-key", attributes={"k" * 201: 1}), "must have 1 to 200 characters"),
        (row(sku="long-attr-val", attributes={"k": "v" * 10_001}), "attribute 'k' is longer than 10000"),
        (row(sku="nul-cat", category="A/\x00"), "'category' contains a NUL character"),
        (row(sku="long-level", category="A/" + "c" * 201), "'category' is too long (at most 200 characters a level"),
        (row(sku="long-path", category="/".join(["c" * 200] * 6)), "1000 in all"),
        (row(sku="s" * 129), "'sku' is longer than 128 characters"),
        (row(sku="long-title", title="t" * 501), "'title' is longer than 500 characters"),
        (row(sku="long-brand", brand="b" * 201), "'brand' is longer than 200 characters"),
        (row(sku="long-desc", description="d" * 100_001), "'description' is longer than 100000 characters"),
        (row(sku="eszett", currency="ßßß"), "'currency' must be a 3-letter code"),
        (row(sku="price-big", price=1e10), "'price' must be between 0 and 10^10"),
        (row(sku="price-exp", price="1e999999"), "'price'"),
        (row(sku="price-nan", price="NaN"), "'price' must be between 0"),
        (row(sku="img-abs", images=[str(outside)]), "is outside the catalog folder"),
        (row(sku="img-up", images=["../outside.jpg"]), "is outside the catalog folder"),
        (row(sku="img-up2", images=["images/../../outside.jpg"]), "is outside the catalog folder"),
        (row(sku="img-nul", images=["images/good.jpg\x00"]), "image path 'images/good.jpg\\x00' contains a NUL"),
        ('{"sku": "big-int", "title": "x", "attributes": {"n": ' + "9" * 5000 + "}}", "bad JSON"),
        ("[" * 100_000 + "]" * 100_000, "bad JSON"),
        (b'{"sku": "latin1", "title": "caf\xe9"}', "not valid UTF-8 (byte 32 of the line)"),
        ({"sku": "good-2", "title": "Second good", "brand": "Acme", "description": "two\nlines\tok",
          "attributes": {"note": "a\tb"}}, None),
    ]


def write(cw, rows) -> object:
    lines = []
    for row, _ in rows:
        if isinstance(row, bytes):
            lines.append(row)
        else:
            lines.append((row if isinstance(row, str) else json.dumps(row)).encode())
    path = cw.root / "products.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.mark.parametrize("batch_size", [1, 4, 500])
def test_every_bad_kind_is_a_rejected_row_with_its_line(catalog_writer, batch_size):
    rows = bad_rows(catalog_writer)
    report = CatalogImporter(write(catalog_writer, rows), batch_size=batch_size).run()
    errors = {e.line: e for e in report.rejected}
    expected = {line: reason for line, (_, reason) in enumerate(rows, start=1) if reason}
    assert sorted(errors) == sorted(expected)
    for line, reason in expected.items():
        assert reason in errors[line].reason, (line, errors[line].reason)
        assert "refused by the database" not in errors[line].reason  # validation caught it first
    assert (report.rows, report.created) == (len(rows), 2)
    assert set(Product.objects.values_list("sku", flat=True)) == {"good-1", "good-2"}
    good = Product.objects.get(sku="good-1")
    assert good.price == Decimal("9.50") and good.category.path == "A/B" and good.images.count() == 1
    assert Product.objects.get(sku="good-2").description == "two\nlines\tok"
    assert str(errors[3]).startswith("line 3: ")  # a sku with a NUL is not echoed


def test_command_exit_code_and_summary(catalog_writer):
    rows = bad_rows(catalog_writer)
    path = write(catalog_writer, rows)
    out, err = io.StringIO(), io.StringIO()
    rejected = sum(1 for _, reason in rows if reason)
    with pytest.raises(CommandError, match=f"{rejected} of {len(rows)} rows rejected"):
        call_command("import_catalog", str(path), "--no-progress", stdout=out, stderr=err)
    assert f"{len(rows)} rows: 2 created, 0 updated, 0 unchanged, {rejected} rejected;" in out.getvalue()
    assert f"{path}: line 2 (sku nul-title): 'title' contains a NUL character (position 3)" in err.getvalue()
    assert "\x00" not in err.getvalue()


def test_a_row_the_database_refuses_does_not_take_its_batch(catalog_writer, monkeypatch):
    """With validation switched off, the NUL row reaches PostgreSQL: the batch is retried row by row, only that
    row is rejected (with its line), and its new category is rolled back with it."""
    monkeypatch.setattr(importer_module, "text_problem", lambda value, **kw: None)
    monkeypatch.setattr(importer_module, "check_json_text", lambda value, **kw: None)
    cw = catalog_writer
    for row in [
        {"sku": "a", "title": "A", "category": "Old", "images": [cw.image("a.jpg")]},
        {"sku": "nul", "title": "N\x00", "category": "New/Sub", "images": [cw.image("n.jpg", color=(1, 2, 3))]},
        {"sku": "b", "title": "B", "category": "New/Sub"},
        {"sku": "nul-attr", "title": "x", "attributes": {"k": "v\x00"}},
        {"sku": "c", "title": "C"},
    ]:
        cw.add(row)
    report = CatalogImporter(cw.write(), batch_size=10).run()
    assert [(e.line, e.sku) for e in report.rejected] == [(2, "nul"), (4, "nul-attr")]
    assert all(e.reason.startswith("refused by the database (") for e in report.rejected)
    assert (report.created, report.images_added) == (3, 1)
    assert set(Product.objects.values_list("sku", flat=True)) == {"a", "b", "c"}
    assert Product.objects.get(sku="b").category.path == "New/Sub"
    assert ProductImage.objects.count() == 1


def test_a_lost_database_connection_stops_the_import(catalog_writer, monkeypatch):
    from django.db import OperationalError, connection

    def gone(self, rows):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(CatalogImporter, "_upsert", gone)
    monkeypatch.setattr(connection, "is_usable", lambda: False)
    catalog_writer.add({"sku": "a", "title": "A"})
    with pytest.raises(importer_module.DatabaseUnavailable, match="connection was lost"):
        CatalogImporter(catalog_writer.write()).run()


# --- properties ---------------------------------------------------------------------------------------------

ANY_TEXT = st.text(
    alphabet=st.one_of(st.characters(exclude_categories=()), st.sampled_from("\x00\x07\n\t/ßﬃ\ud800")), max_size=12
)
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ANY_TEXT, inner, max_size=3),
    max_leaves=6,
)
IMAGE_PATHS = st.sampled_from(
    ["images/good.jpg", "../outside.jpg", "/etc/hostname", "images/../images/good.jpg", "images/../../x.jpg",
     "images/good.jpg\x00", "images", "images/nope.jpg", ""]
)


def _maybe_long(text):
    return st.one_of(text, st.integers(0, 3).map(lambda n: "x" * (120 + 40 * n)))


ROWS = st.fixed_dictionaries(
    {},
    optional={
        "sku": st.one_of(_maybe_long(ANY_TEXT), JSONISH),
        "title": st.one_of(ANY_TEXT, st.just("t" * 501), JSONISH),
        "description": st.one_of(ANY_TEXT, JSONISH),
        "brand": st.one_of(_maybe_long(ANY_TEXT), JSONISH),
        "currency": st.one_of(ANY_TEXT, st.sampled_from(["eur", "ßßß", "EURO", "ﬃ"]), JSONISH),
        "price": st.one_of(st.floats(), st.integers(), st.decimals().map(str), ANY_TEXT, JSONISH),
        "attributes": st.one_of(st.dictionaries(_maybe_long(ANY_TEXT), JSONISH, max_size=4), JSONISH),
        "category": st.one_of(st.lists(_maybe_long(ANY_TEXT), max_size=7).map("/".join), JSONISH),
        "images": st.one_of(st.lists(st.one_of(IMAGE_PATHS, ANY_TEXT), max_size=3), JSONISH),
    },
)


SAFE_TEXT = st.text(
    alphabet=st.characters(exclude_categories=("Cc", "Cs"), exclude_characters="/"), min_size=1, max_size=30
).filter(lambda t: t.strip())
VALID_ROWS = st.fixed_dictionaries(
    {"sku": SAFE_TEXT, "title": SAFE_TEXT},
    optional={
        "description": st.text(alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=50)
        .filter(lambda t: all(c in "\t\n\r" or ord(c) >= 32 and not 0x7F <= ord(c) <= 0x9F for c in t)),
        "brand": SAFE_TEXT,
        "currency": st.sampled_from(["EUR", "usd", "", "chf"]),
        "price": st.one_of(st.none(), st.decimals(0, "9999999999.99", places=2).map(str), st.integers(0, 10**9)),
        "attributes": st.dictionaries(SAFE_TEXT, st.one_of(SAFE_TEXT, st.integers(-(10**30), 10**30),
                                                           st.floats(allow_nan=False, allow_infinity=False)),
                                      max_size=3),
        "category": st.lists(SAFE_TEXT, min_size=1, max_size=4).map("/".join),
        "images": st.just(["images/good.jpg"]),
    },
)


# A valid row with up to two fields replaced by anything: most of these reach the database's checks.
MIXED_ROWS = st.tuples(VALID_ROWS, ROWS).map(lambda pair: {**pair[0], **dict(list(pair[1].items())[:2])})


@pytest.fixture
def folder(catalog_writer):
    catalog_writer.image("good.jpg")
    return catalog_writer


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(row=st.one_of(ROWS, MIXED_ROWS, JSONISH))
def test_parse_row_only_ever_rejects(folder, row):
    """Any JSON value as a row: parse_row returns a ParsedRow or raises RowRejected, nothing else."""
    try:
        parsed = parse_row(1, json.dumps(row), folder.root)
    except RowRejected as exc:
        assert str(exc)
        return
    assert isinstance(parsed, ParsedRow)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(line=st.text(alphabet=st.characters(exclude_categories=()), max_size=60))
def test_any_line_of_text_only_ever_rejects(folder, line):
    try:
        parse_row(1, line, folder.root)
    except RowRejected:
        pass


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(row=MIXED_ROWS)
def test_what_validation_accepts_the_database_stores(folder, row):
    """The database refuses nothing that validation let through: a row is created or rejected by validation."""
    path = folder.root / "p.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with transaction.atomic():
        report = CatalogImporter(path).run()
        assert report.rows == 1
        assert [e.reason for e in report.rejected if "refused by the database" in e.reason] == []
        assert report.created + len(report.rejected) == 1
        assert Product.objects.count() == report.created
        event("stored" if report.created else "rejected")
        transaction.set_rollback(True)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(row=VALID_ROWS)
def test_a_valid_row_survives(folder, row):
    path = folder.root / "v.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with transaction.atomic():
        report = CatalogImporter(path).run()
        assert report.rejected == [] and report.created == 1
        product = Product.objects.get()
        assert product.sku == row["sku"].strip() and product.title == row["title"].strip()
        # jsonb keeps numbers as numeric: 6.6e16 comes back as the int 66000000000000000.
        assert product.attributes.keys() == row.get("attributes", {}).keys()
        for key, value in product.attributes.items():
            assert value == row["attributes"][key] or math.isclose(value, row["attributes"][key])
        if row.get("price") is not None:
            assert product.price == Decimal(str(row["price"])).quantize(Decimal("0.01"))
        if "category" in row:
            assert product.category.path == "/".join(p.strip() for p in row["category"].split("/"))
        assert product.images.count() == len(row.get("images", []))
        transaction.set_rollback(True)
    assert not Category.objects.exists()
