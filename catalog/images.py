"""Validation and normalisation of product images, shared by uploads and imports."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

from django.conf import settings
from PIL import Image, ImageOps, UnidentifiedImageError

_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


class ImageRejected(ValueError):
    """The bytes are not an acceptable product image; the message says why."""


@dataclass(frozen=True)
class CheckedImage:
    data: bytes
    sha256: str
    width: int
    height: int
    format: str

    @property
    def extension(self) -> str:
        return _EXTENSIONS[self.format]


def check_image(data: bytes) -> CheckedImage:
    """Accept JPEG/PNG/WebP within the size and pixel limits; apply EXIF orientation; raise ImageRejected."""
    max_bytes = settings.MMSEARCH_UPLOAD_MAX_BYTES
    max_pixels = settings.MMSEARCH_UPLOAD_MAX_PIXELS
    if not data:
        raise ImageRejected("the file is empty")
    if len(data) > max_bytes:
        raise ImageRejected(f"the file is {len(data):,} bytes; the limit is {max_bytes:,} (MMSEARCH_UPLOAD_MAX_BYTES)")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            fmt = probe.format
            width, height = probe.size
            if fmt not in settings.MMSEARCH_IMAGE_FORMATS:
                raise ImageRejected(f"format {fmt or 'unknown'} is not accepted; use JPEG, PNG or WebP")
            # Checked before decoding, so a decompression bomb is never expanded in memory.
            if width * height > max_pixels:
                raise ImageRejected(
                    f"the image is {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,} "
                    "(MMSEARCH_UPLOAD_MAX_PIXELS)"
                )
            probe.load()
            oriented = ImageOps.exif_transpose(probe)
    except ImageRejected:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise ImageRejected(f"not a readable image ({exc.__class__.__name__})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected(f"the image is corrupt or truncated ({exc})") from exc
    if oriented is not probe:
        # Re-encode once so every consumer sees the upright image and no orientation tag.
        out = io.BytesIO()
        save_kwargs = {"quality": 95} if fmt == "JPEG" else {}
        if fmt == "JPEG" and oriented.mode not in ("RGB", "L"):
            oriented = oriented.convert("RGB")
        oriented.save(out, format=fmt, **save_kwargs)
        data = out.getvalue()
        width, height = oriented.size
    return CheckedImage(data, hashlib.sha256(data).hexdigest(), width, height, fmt)
