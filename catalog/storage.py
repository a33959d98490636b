"""Content-addressed image storage: one file per distinct sha256, one ProductImage row per product."""

from __future__ import annotations

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db.models import Max

from catalog.images import CheckedImage
from catalog.models import Product, ProductImage


def image_name(checked: CheckedImage) -> str:
    return f"images/{checked.sha256[:2]}/{checked.sha256}.{checked.extension}"


def write_image_file(checked: CheckedImage) -> str:
    """Store the bytes once under their hash; return the storage name."""
    name = image_name(checked)
    if not default_storage.exists(name):
        saved = default_storage.save(name, ContentFile(checked.data))
        if saved != name:  # a concurrent writer won the race; keep the canonical copy
            default_storage.delete(saved)
    return name


def add_image(product: Product, checked: CheckedImage, position: int | None = None) -> tuple[ProductImage, bool]:
    """Attach an image to a product unless the same bytes are already attached; returns (image, created)."""
    existing = ProductImage.objects.filter(product=product, sha256=checked.sha256).first()
    if existing:
        return existing, False
    if position is None:
        top = product.images.aggregate(m=Max("position"))["m"]
        position = 0 if top is None else top + 1
    name = write_image_file(checked)
    image = ProductImage.objects.create(
        product=product, file=name, sha256=checked.sha256, width=checked.width, height=checked.height, position=position
    )
    return image, True
