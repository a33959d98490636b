"""Import a catalog in the interchange format (products.jsonl): upsert by sku, images stored by content.

A bad row is reported with its line number and reason and skipped; the good rows are imported. Rows are checked
for everything the database would refuse (mmsearch.validation), and each batch that the database still refuses
is retried row by row, so one bad row never takes its batch with it. Re-importing
the same file changes nothing (no row is written, no timestamp moves). A row's "images" list is the product's
images in order: images it no longer lists are detached; a row without an "images" key leaves them alone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path, PurePosixPath

from django.db import DatabaseError, InterfaceError, OperationalError, connection, transaction
from django.utils import timezone

from catalog.changes import notify_changed
from mmsearch.images import CheckedImage, ImageRejected, check_image
from catalog.models import Category, Product, ProductImage, normalize_path
from catalog.search_text import refresh_search_vectors
from catalog.storage import image_name, write_image_file
from mmsearch.validation import BadValue, check_json_text, text_problem

PRODUCT_FIELDS = ("title", "description", "brand", "price", "currency", "attributes", "category_id")
CATEGORY_NAME_MAX = Category._meta.get_field("name").max_length
CATEGORY_PATH_MAX = Category._meta.get_field("path").max_length
# Not column limits but the full-text vector's: PostgreSQL refuses a tsvector over 1 MB (catalog.search_text).
DESCRIPTION_MAX = 100_000
ATTRIBUTE_TEXT_MAX = 10_000


class RowRejected(ValueError):
    """The row cannot be imported; the message says why."""


class DatabaseUnavailable(RuntimeError):
    """The database went away during the import: no row's fault, so the import stops."""


# What the database (or psycopg, for text it cannot encode) raises for a row it will not store.
REFUSED = (DatabaseError, ValueError)


@dataclass
class RowError:
    line: int
    sku: str | None
    reason: str

    def __str__(self) -> str:
        sku = f" (sku {self.sku})" if self.sku else ""
        return f"line {self.line}{sku}: {self.reason}"


@dataclass
class ParsedRow:
    line: int
    sku: str
    values: dict
    category_path: str | None
    # None when the row has no "images" key: the product's images are then left as they are.
    images: list[CheckedImage] | None


@dataclass
class ImportReport:
    rows: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    images_added: int = 0
    images_removed: int = 0
    rejected: list[RowError] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def imported(self) -> int:
        return self.created + self.updated + self.unchanged

    def summary(self) -> str:
        rate = self.imported / self.seconds if self.seconds else 0.0
        return (
            f"{self.rows} rows: {self.created} created, {self.updated} updated, {self.unchanged} unchanged, "
            f"{len(self.rejected)} rejected; {self.images_added} images added, {self.images_removed} removed; "
            f"{self.seconds:.1f}s ({rate:.0f} products/s)"
        )


def _text(row: dict, key: str, *, required: bool = False, max_length: int | None = None, multiline: bool = False) -> str:
    value = row.get(key)
    if value is None:
        if required:
            raise RowRejected(f"missing '{key}'")
        return ""
    if not isinstance(value, str):
        raise RowRejected(f"'{key}' must be a string, not {type(value).__name__}")
    problem = text_problem(value, multiline=multiline)
    if problem:
        raise RowRejected(f"'{key}' {problem}")
    value = value.strip()
    if required and not value:
        raise RowRejected(f"'{key}' is empty")
    if max_length and len(value) > max_length:
        raise RowRejected(f"'{key}' is longer than {max_length} characters")
    return value


def parse_row(line_no: int, text: str, base_dir: Path) -> ParsedRow:
    """Validate one JSONL line and read its images; raise RowRejected with the reason."""
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RowRejected(f"bad JSON ({exc.msg} at column {exc.colno})") from exc
    except (ValueError, RecursionError) as exc:  # e.g. an integer of over 4300 digits, or nesting too deep
        raise RowRejected(f"bad JSON ({str(exc)[:200]})") from exc
    if not isinstance(row, dict):
        raise RowRejected(f"a row must be a JSON object, not {type(row).__name__}")
    sku = _text(row, "sku", required=True, max_length=128)
    values = {
        "title": _text(row, "title", required=True, max_length=500),
        "description": _text(row, "description", max_length=DESCRIPTION_MAX, multiline=True),
        "brand": _text(row, "brand", max_length=200),
        # Upper-cased before the length check: 'ß'.upper() is 'SS'.
        "currency": _text(row, "currency").upper(),
    }
    if len(values["currency"]) > 3:
        raise RowRejected(f"'currency' must be a 3-letter code such as EUR, not {row['currency']!r}")
    price = row.get("price")
    if price is not None:
        if isinstance(price, bool) or not isinstance(price, (int, float, str)):
            raise RowRejected(f"'price' must be a number, not {type(price).__name__}")
        try:
            price = Decimal(str(price)).quantize(Decimal("0.01"))
        except InvalidOperation as exc:
            raise RowRejected(f"'price' is not a number: {row['price']!r}") from exc
        if not price.is_finite() or price < 0 or price >= Decimal("1e10"):
            raise RowRejected(f"'price' must be between 0 and 10^10, not {row['price']!r}")
    values["price"] = price
    attributes = row.get("attributes")
    if attributes is None:
        attributes = {}
    if not isinstance(attributes, dict):
        raise RowRejected(f"'attributes' must be an object, not {type(attributes).__name__}")
    for key, value in attributes.items():
        problem = text_problem(key)
        if problem:
            raise RowRejected(f"attribute name {key!r} {problem}")
        if not key.strip() or len(key) > CATEGORY_NAME_MAX:
            raise RowRejected(f"attribute name {key!r} must have 1 to {CATEGORY_NAME_MAX} characters")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise RowRejected(f"attribute '{key}' must be a string or a number, not {type(value).__name__}")
        if isinstance(value, str) and len(value) > ATTRIBUTE_TEXT_MAX:
            raise RowRejected(f"attribute '{key}' is longer than {ATTRIBUTE_TEXT_MAX} characters")
    try:
        check_json_text(attributes, name="attributes")  # NUL, control characters, NaN and infinities
    except BadValue as exc:
        raise RowRejected(f"attribute '{exc.name.partition('.')[2]}' {exc.problem}") from exc
    values["attributes"] = attributes
    category = row.get("category")
    if category is not None:
        if not isinstance(category, str):
            raise RowRejected(f"'category' must be a string path, not {type(category).__name__}")
        problem = text_problem(category)
        if problem:
            raise RowRejected(f"'category' {problem}")
        try:
            category = normalize_path(category)
        except ValueError as exc:
            raise RowRejected(str(exc)) from exc
        if len(category) > CATEGORY_PATH_MAX or any(len(n) > CATEGORY_NAME_MAX for n in category.split("/")):
            raise RowRejected(
                f"'category' is too long (at most {CATEGORY_NAME_MAX} characters a level, {CATEGORY_PATH_MAX} in all)"
            )
    images_field = row.get("images")
    if images_field is not None and (
        not isinstance(images_field, list) or not all(isinstance(i, str) and i.strip() for i in images_field)
    ):
        raise RowRejected("'images' must be a list of file paths")
    images = None if images_field is None else []
    for rel in images_field or ():
        path = _image_path(base_dir, rel)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise RowRejected(f"image {rel} not found") from exc
        except OSError as exc:
            raise RowRejected(f"image {rel} unreadable ({exc.strerror})") from exc
        try:
            images.append(check_image(data))
        except ImageRejected as exc:
            raise RowRejected(f"image {rel}: {exc}") from exc
    return ParsedRow(line_no, sku, values, category, images)


def _image_path(base_dir: Path, rel: str) -> Path:
    """The file `rel` names inside the JSONL file's folder; RowRejected for a path that would leave it."""
    problem = text_problem(rel)
    if problem:
        raise RowRejected(f"image path {rel!r} {problem}")
    parts = PurePosixPath(rel.replace("\\", "/")).parts
    if PurePosixPath(rel).is_absolute() or ".." in parts:
        raise RowRejected(
            f"image {rel} is outside the catalog folder; give a path relative to {base_dir} without '..'"
        )
    return base_dir / rel


class CatalogImporter:
    """Streams a JSONL file through validation (threads) and batched upserts."""

    def __init__(self, path: Path | str, *, batch_size: int = 500, workers: int = 4):
        self.path = Path(path)
        self.base_dir = self.path.resolve().parent
        self.batch_size = batch_size
        self.workers = workers
        self.report = ImportReport()
        self._category_ids: dict[str, int] = {}
        self._seen_skus: dict[str, int] = {}

    def run(self, progress=None) -> ImportReport:
        """Import the whole file; `progress` (a tqdm-like object) is advanced per row."""
        started = time.monotonic()
        with open(self.path, "rb") as fh, ThreadPoolExecutor(self.workers) as pool:
            # One batch of lookahead: the threads read and decode the next batch's images while this thread
            # writes the current batch to the database.
            pending: list[Future] | None = None
            for batch in self._batches(fh):
                submitted = [pool.submit(self._parse, item) for item in batch]
                if pending is not None:
                    self._import_batch([f.result() for f in pending], progress)
                pending = submitted
            if pending is not None:
                self._import_batch([f.result() for f in pending], progress)
        self.report.seconds = time.monotonic() - started
        return self.report

    def _batches(self, fh) -> Iterator[list[tuple[int, str | bytes]]]:
        """(line number, text) per non-blank line; the raw bytes when a line is not UTF-8 (rejected later)."""
        batch: list[tuple[int, str | bytes]] = []
        for line_no, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError:
                text = raw
            if not text.strip():
                continue
            batch.append((line_no, text))
            if len(batch) >= self.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def _parse(self, item: tuple[int, str | bytes]) -> ParsedRow | RowError:
        line_no, text = item
        if isinstance(text, bytes):
            try:
                text.decode("utf-8")
            except UnicodeDecodeError as exc:
                return RowError(line_no, None, f"not valid UTF-8 (byte {exc.start + 1} of the line); save the file as UTF-8")
        try:
            return parse_row(line_no, text, self.base_dir)
        except RowRejected as exc:
            reason = str(exc)
        except Exception as exc:  # noqa: BLE001 - a bad row is never fatal; name the failure so it can be fixed
            reason = f"cannot be read ({type(exc).__name__}: {str(exc)[:200]})"
        sku = None
        try:
            sku = json.loads(text).get("sku")
        except Exception:  # noqa: BLE001 - the reason is already recorded
            pass
        return RowError(line_no, sku if isinstance(sku, str) and not text_problem(sku) else None, reason)

    def _import_batch(self, results: list[ParsedRow | RowError], progress) -> None:
        rows: list[ParsedRow] = []
        for result in results:
            self.report.rows += 1
            if isinstance(result, RowError):
                self.report.rejected.append(result)
            elif result.sku in self._seen_skus:
                self.report.rejected.append(
                    RowError(result.line, result.sku, f"duplicate sku (first on line {self._seen_skus[result.sku]})")
                )
            else:
                self._seen_skus[result.sku] = result.line
                rows.append(result)
        if rows:
            self._write(rows)
        if progress is not None:
            progress.update(len(results))

    def _write(self, rows: list[ParsedRow]) -> None:
        """Upsert the batch in one transaction; if the database refuses it, retry row by row and reject only
        the rows it still refuses (with their line numbers)."""
        try:
            self._upsert_atomic(rows)
        except REFUSED as exc:
            if len(rows) == 1:
                self._refused(rows[0], exc)
                return
            for row in rows:
                try:
                    self._upsert_atomic([row])
                except REFUSED as row_exc:
                    self._refused(row, row_exc)

    def _upsert_atomic(self, rows: list[ParsedRow]) -> None:
        counters = ("created", "updated", "unchanged", "images_added", "images_removed")
        before = [getattr(self.report, name) for name in counters]
        try:
            with transaction.atomic():
                self._upsert(rows)
        except REFUSED as exc:
            for name, value in zip(counters, before):
                setattr(self.report, name, value)
            self._category_ids.clear()  # ids created in the rolled-back transaction are gone
            if isinstance(exc, (OperationalError, InterfaceError)) and not connection.is_usable():
                raise DatabaseUnavailable(f"the database connection was lost: {exc}") from exc
            raise

    def _refused(self, row: ParsedRow, exc: Exception) -> None:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        self._seen_skus.pop(row.sku, None)
        self.report.rejected.append(RowError(row.line, row.sku, f"refused by the database ({reason})"))

    def _category_id(self, path: str | None) -> int | None:
        if path is None:
            return None
        if path not in self._category_ids:
            self._category_ids[path] = Category.objects.get_or_create_path(path).pk
        return self._category_ids[path]

    def _upsert(self, rows: list[ParsedRow]) -> None:
        existing = {p.sku: p for p in Product.objects.filter(sku__in=[r.sku for r in rows])}
        to_create: list[Product] = []
        changed: dict[str, Product] = {}
        for row in rows:
            values = dict(row.values, category_id=self._category_id(row.category_path))
            product = existing.get(row.sku)
            if product is None:
                to_create.append(Product(sku=row.sku, **values))
                continue
            fields = [f for f in PRODUCT_FIELDS if getattr(product, f) != values[f]]
            for f in fields:
                setattr(product, f, values[f])
            if fields:
                changed[row.sku] = product
        if to_create:
            Product.objects.bulk_create(to_create, batch_size=1000)
            self.report.created += len(to_create)
        products = {**existing, **{p.sku: p for p in to_create}}
        new_images, images_changed, files = self._sync_images(rows, products)
        # A product whose image list changed counts as updated too (its updated_at moves).
        created_skus = {p.sku for p in to_create}
        for sku in images_changed - created_skus:
            changed.setdefault(sku, products[sku])
        if changed:
            now = timezone.now()
            for product in changed.values():
                product.updated_at = now
            Product.objects.bulk_update(list(changed.values()), [*PRODUCT_FIELDS, "updated_at"], batch_size=1000)
        self.report.updated += len(changed)
        self.report.unchanged += len(rows) - len(to_create) - len(changed)
        changed_ids = [p.pk for p in to_create] + [p.pk for p in changed.values()]
        refresh_search_vectors(changed_ids)
        # Last, so a batch the database refuses leaves no new files behind.
        for checked in files:
            write_image_file(checked)
        notify_changed(product_ids=changed_ids, image_ids=[i.pk for i in new_images])

    def _sync_images(
        self, rows: list[ParsedRow], products: dict[str, Product]
    ) -> tuple[list[ProductImage], set[str], list[CheckedImage]]:
        """Make each product's images the row's list, in order; returns (new images, skus whose images changed,
        the images whose files the caller writes once the rows are in)."""
        rows = [r for r in rows if r.images is not None]
        ids = [products[r.sku].pk for r in rows]
        have: dict[int, dict[str, ProductImage]] = {}
        for img in ProductImage.objects.filter(product_id__in=ids):
            have.setdefault(img.product_id, {})[img.sha256] = img
        to_create, to_move, to_delete, changed, files = [], [], [], set(), []
        for row in rows:
            pid = products[row.sku].pk
            current = have.get(pid, {})
            wanted: list = []
            for checked in row.images:
                if checked.sha256 not in {c.sha256 for c in wanted}:  # the same bytes listed twice: store once
                    wanted.append(checked)
            for position, checked in enumerate(wanted):
                img = current.get(checked.sha256)
                if img is None:
                    to_create.append(
                        ProductImage(product_id=pid, file=image_name(checked), sha256=checked.sha256,
                                     width=checked.width, height=checked.height, position=position)
                    )
                    files.append(checked)
                    changed.add(row.sku)
                elif img.position != position:
                    img.position = position
                    to_move.append(img)
                    changed.add(row.sku)
            gone = set(current) - {c.sha256 for c in wanted}
            if gone:
                to_delete.extend(current[sha].pk for sha in gone)
                changed.add(row.sku)
        if to_delete:
            # The files stay: other products may share the same bytes (content-addressed storage).
            ProductImage.objects.filter(pk__in=to_delete).delete()
            self.report.images_removed += len(to_delete)
        if to_create:
            ProductImage.objects.bulk_create(to_create, batch_size=1000)
            self.report.images_added += len(to_create)
        if to_move:
            ProductImage.objects.bulk_update(to_move, ["position"])
        return to_create, changed, files


def count_rows(path: Path | str) -> int:
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())
