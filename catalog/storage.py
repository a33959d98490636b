"""Content-addressed image storage: one file per distinct sha256, one ProductImage row per product."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage, default_storage
from django.db.models import Max

from mmsearch.images import CheckedImage
from catalog.models import Product, ProductImage


# The storage folder of product images; nothing else is written below it (see the prune_images command).
IMAGE_PREFIX = "images"


def image_name(checked: CheckedImage) -> str:
    """images/ab/abcd....jpg: the storage name of these bytes."""
    return f"{IMAGE_PREFIX}/{checked.sha256[:2]}/{checked.sha256}.{checked.extension}"


def write_image_file(checked: CheckedImage) -> str:
    """Store the bytes once under their hash; return the storage name."""
    name = image_name(checked)
    if isinstance(default_storage, FileSystemStorage):
        _write_local(Path(default_storage.path(name)), checked.data)
        return name
    if not default_storage.exists(name):
        saved = default_storage.save(name, ContentFile(checked.data))
        if saved != name:  # a concurrent writer won the race; keep the canonical copy
            default_storage.delete(saved)
    return name


def _write_local(path: Path, data: bytes) -> None:
    # The fast path for local media (imports write tens of thousands of files): write a temporary file and
    # rename it into place, so a reader never sees half a file and concurrent writers of the same bytes agree.
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
