"""Export the catalog in the interchange format (products.jsonl plus an images/ folder beside it)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from django.core.files.storage import default_storage

from catalog.models import Product


def product_record(product: Product, image_names: list[str]) -> dict:
    record: dict = {"sku": product.sku, "title": product.title}
    if product.description:
        record["description"] = product.description
    if product.brand:
        record["brand"] = product.brand
    if product.category_id:
        record["category"] = product.category.path
    if product.price is not None:
        record["price"] = float(product.price)
    if product.currency:
        record["currency"] = product.currency
    if product.attributes:
        record["attributes"] = product.attributes
    record["images"] = image_names
    return record


def export_catalog(out: Path, queryset=None, progress=None) -> int:
    """Write products (all by default) to `out`; images are copied to out's folder/images/. Returns rows written."""
    out = Path(out)
    image_dir = out.parent / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    queryset = (queryset if queryset is not None else Product.objects.all()).select_related("category")
    queryset = queryset.prefetch_related("images").order_by("id")
    count = 0
    with open(out, "w", encoding="utf-8") as fh:
        for product in queryset.iterator(chunk_size=1000):
            names = []
            for image in product.images.all():
                filename = Path(image.file.name).name
                target = image_dir / filename
                if not target.exists():
                    with default_storage.open(image.file.name, "rb") as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                names.append(f"images/{filename}")
            fh.write(json.dumps(product_record(product, names), ensure_ascii=False) + "\n")
            count += 1
            if progress is not None:
                progress.update(1)
    return count
