"""Validation and normalisation of uploaded images: catalog uploads and imports, and shoppers' photo queries."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

from django.conf import settings
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

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


def check_size(size: int) -> None:
    """Refuse an empty file or one over MMSEARCH_UPLOAD_MAX_BYTES (checked before the bytes are read)."""
    max_bytes = settings.MMSEARCH_UPLOAD_MAX_BYTES
    if not size:
        raise ImageRejected("the file is empty")
    if size > max_bytes:
        raise ImageRejected(f"the file is {size:,} bytes; the limit is {max_bytes:,} (MMSEARCH_UPLOAD_MAX_BYTES)")


def check_image(data: bytes) -> CheckedImage:
    """Accept JPEG/PNG/WebP within the size and pixel limits; apply EXIF orientation; raise ImageRejected.

    The bytes are kept as they are (so their sha256 is the file's) unless an EXIF orientation has to be
    applied, in which case the image is re-encoded upright once, without the orientation tag.
    """
    max_pixels = settings.MMSEARCH_UPLOAD_MAX_PIXELS
    check_size(len(data))
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
            probe.load()  # decodes everything, so truncated or corrupt files are caught here
            orientation = probe.getexif().get(ExifTags.Base.Orientation, 1)
            oriented = ImageOps.exif_transpose(probe) if orientation not in (0, 1) else None
    except ImageRejected:
        raise
    except Image.DecompressionBombError as exc:
        # Pillow's own guard fires at open() for far larger images than our limit.
        raise ImageRejected(
            f"the image declares too many pixels; the limit is {max_pixels:,} (MMSEARCH_UPLOAD_MAX_PIXELS)"
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageRejected("not an image file; use JPEG, PNG or WebP") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageRejected(f"the image is corrupt or truncated ({exc})") from exc
    if oriented is not None:
        out = io.BytesIO()
        save_kwargs = {"quality": 95} if fmt == "JPEG" else {}
        if fmt == "JPEG" and oriented.mode not in ("RGB", "L"):
            oriented = oriented.convert("RGB")
        oriented.save(out, format=fmt, **save_kwargs)
        data = out.getvalue()
        width, height = oriented.size
    return CheckedImage(data, hashlib.sha256(data).hexdigest(), width, height, fmt)
