"""Import a catalog in the interchange format (products.jsonl): upsert by sku, images stored by content.

A bad row is reported with its line number and reason and skipped; the good rows are imported. Re-importing
the same file changes nothing (no row is written, no timestamp moves).
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

from django.db import transaction
from django.utils import timezone

from catalog.changes import notify_changed
from catalog.images import CheckedImage, ImageRejected, check_image
from catalog.models import Category, Product, ProductImage, normalize_path
from catalog.search_text import refresh_search_vectors
from catalog.storage import write_image_file

PRODUCT_FIELDS = ("title", "description", "brand", "price", "currency", "attributes", "category_id")


class RowRejected(ValueError):
    """The row cannot be imported; the message says why."""


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
    images: list[CheckedImage]


@dataclass
class ImportReport:
    rows: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    images_added: int = 0
    rejected: list[RowError] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def imported(self) -> int:
        return self.created + self.updated + self.unchanged

    def summary(self) -> str:
        rate = self.imported / self.seconds if self.seconds else 0.0
        return (
            f"{self.rows} rows: {self.created} created, {self.updated} updated, {self.unchanged} unchanged, "
            f"{len(self.rejected)} rejected; {self.images_added} images added; "
            f"{self.seconds:.1f}s ({rate:.0f} products/s)"
        )


def _text(row: dict, key: str, *, required: bool = False, max_length: int | None = None) -> str:
    value = row.get(key)
    if value is None:
        if required:
            raise RowRejected(f"missing '{key}'")
        return ""
    if not isinstance(value, str):
        raise RowRejected(f"'{key}' must be a string, not {type(value).__name__}")
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
    if not isinstance(row, dict):
        raise RowRejected(f"a row must be a JSON object, not {type(row).__name__}")
    sku = _text(row, "sku", required=True, max_length=128)
    values = {
        "title": _text(row, "title", required=True, max_length=500),
        "description": _text(row, "description"),
        "brand": _text(row, "brand", max_length=200),
        "currency": _text(row, "currency", max_length=3).upper(),
    }
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
    attributes = row.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise RowRejected(f"'attributes' must be an object, not {type(attributes).__name__}")
    for key, value in attributes.items():
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise RowRejected(f"attribute '{key}' must be a string or a number, not {type(value).__name__}")
    values["attributes"] = attributes
    category = row.get("category")
    if category is not None:
        if not isinstance(category, str):
            raise RowRejected(f"'category' must be a string path, not {type(category).__name__}")
        try:
            category = normalize_path(category)
        except ValueError as exc:
            raise RowRejected(str(exc)) from exc
    images_field = row.get("images") or []
    if not isinstance(images_field, list) or not all(isinstance(i, str) for i in images_field):
        raise RowRejected("'images' must be a list of file paths")
    images = []
    for rel in images_field:
        path = (base_dir / rel).resolve()
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
        with open(self.path, encoding="utf-8") as fh, ThreadPoolExecutor(self.workers) as pool:
            batch: list[tuple[int, str]] = []
            for line_no, text in enumerate(fh, start=1):
                if not text.strip():
                    continue
                batch.append((line_no, text))
                if len(batch) >= self.batch_size:
                    self._import_batch(batch, pool, progress)
                    batch = []
            if batch:
                self._import_batch(batch, pool, progress)
        self.report.seconds = time.monotonic() - started
        return self.report

    def _parse(self, item: tuple[int, str]) -> ParsedRow | RowError:
        line_no, text = item
        try:
            return parse_row(line_no, text, self.base_dir)
        except RowRejected as exc:
            sku = None
            try:
                sku = json.loads(text).get("sku")
            except Exception:  # noqa: BLE001 - the reason is already recorded
                pass
            return RowError(line_no, sku if isinstance(sku, str) else None, str(exc))

    def _import_batch(self, batch, pool, progress) -> None:
        rows: list[ParsedRow] = []
        for result in pool.map(self._parse, batch):
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
            with transaction.atomic():
                self._upsert(rows)
        if progress is not None:
            progress.update(len(batch))

    def _category_id(self, path: str | None) -> int | None:
        if path is None:
            return None
        if path not in self._category_ids:
            self._category_ids[path] = Category.objects.get_or_create_path(path).pk
        return self._category_ids[path]

    def _upsert(self, rows: list[ParsedRow]) -> None:
        existing = {p.sku: p for p in Product.objects.filter(sku__in=[r.sku for r in rows])}
        to_create, to_update = [], []
        now = timezone.now()
        for row in rows:
            values = dict(row.values, category_id=self._category_id(row.category_path))
            product = existing.get(row.sku)
            if product is None:
                to_create.append(Product(sku=row.sku, **values))
                continue
            changed = [f for f in PRODUCT_FIELDS if getattr(product, f) != values[f]]
            if changed:
                for f in changed:
                    setattr(product, f, values[f])
                product.updated_at = now
                to_update.append(product)
            else:
                self.report.unchanged += 1
        if to_create:
            Product.objects.bulk_create(to_create, batch_size=1000)
            self.report.created += len(to_create)
            existing.update({p.sku: p for p in to_create})
        if to_update:
            Product.objects.bulk_update(to_update, [*PRODUCT_FIELDS, "updated_at"], batch_size=1000)
            self.report.updated += len(to_update)
        new_images = self._upsert_images(rows, existing)
        changed_ids = [p.pk for p in to_create] + [p.pk for p in to_update]
        refresh_search_vectors(changed_ids)
        notify_changed(product_ids=changed_ids, image_ids=[i.pk for i in new_images])

    def _upsert_images(self, rows: list[ParsedRow], products: dict[str, Product]) -> list[ProductImage]:
        ids = [products[r.sku].pk for r in rows]
        have: dict[tuple[int, str], ProductImage] = {
            (img.product_id, img.sha256): img for img in ProductImage.objects.filter(product_id__in=ids)
        }
        to_create, to_move = [], []
        for row in rows:
            pid = products[row.sku].pk
            seen = set()
            for position, checked in enumerate(row.images):
                if checked.sha256 in seen:  # the same bytes listed twice: store once
                    continue
                seen.add(checked.sha256)
                img = have.get((pid, checked.sha256))
                if img is None:
                    name = write_image_file(checked)
                    to_create.append(
                        ProductImage(product_id=pid, file=name, sha256=checked.sha256, width=checked.width,
                                     height=checked.height, position=position)
                    )
                elif img.position != position:
                    img.position = position
                    to_move.append(img)
        if to_create:
            ProductImage.objects.bulk_create(to_create, batch_size=1000)
            self.report.images_added += len(to_create)
        if to_move:
            ProductImage.objects.bulk_update(to_move, ["position"])
        return to_create


def count_rows(path: Path | str) -> int:
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())
