"""Shoppers' query photos: checked, shrunk and re-encoded, kept briefly so facets and pages can reuse them.

A photo search is a POST (the upload) that redirects to a GET page keyed by the photo's hash, so filters,
pagination and the back button work as they do for text searches. Re-encoding drops EXIF metadata (such as
the location a phone recorded) before anything is stored. Photos older than MMSEARCH_QUERY_PHOTO_TTL seconds
are deleted on later uploads.
"""

from __future__ import annotations

import hashlib
import io
import re
import time

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from PIL import Image

from mmsearch.images import ImageRejected, check_image

PREFIX = "query-photos"  # a folder of the private `query_photos` storage (settings.STORAGES), never served
_KEY = re.compile(r"^[0-9a-f]{32}$")
# Longest side kept; the embedders look at 224 px or less, and a smaller file keeps storage and latency low.
MAX_SIDE = 768


class PhotoError(ValueError):
    """The upload cannot be used for a search, or the stored photo is gone; the message says why."""


def ttl_seconds() -> int:
    return int(getattr(settings, "MMSEARCH_QUERY_PHOTO_TTL", 3600))


def _name(key: str) -> str:
    return f"{PREFIX}/{key}.jpg"


def _storage():
    return storages["query_photos"]


def save(data: bytes) -> str:
    """Check and store an uploaded photo; return its key (raises PhotoError with the reason)."""
    try:
        checked = check_image(data)
    except ImageRejected as exc:
        raise PhotoError(f"That photo cannot be used: {exc}.") from exc
    with Image.open(io.BytesIO(checked.data)) as img:
        img = img.convert("RGB")
        img.thumbnail((MAX_SIDE, MAX_SIDE))
        out = io.BytesIO()
        img.save(out, format="JPEG", quality=90)
    encoded = out.getvalue()
    key = hashlib.sha256(encoded).hexdigest()[:32]
    name = _name(key)
    if not _storage().exists(name):
        _storage().save(name, ContentFile(encoded))
    prune()
    return key


def valid_key(key: str) -> bool:
    return bool(_KEY.match(key or ""))


def open_bytes(key: str) -> bytes:
    """The stored JPEG bytes for `key` (raises PhotoError when the key is malformed or expired)."""
    if not valid_key(key):
        raise PhotoError("The photo reference is not valid; upload the photo again.")
    name = _name(key)
    if not _storage().exists(name):
        raise PhotoError("That photo search has expired; upload the photo again.")
    with _storage().open(name, "rb") as fh:
        return fh.read()


def load(key: str) -> Image.Image:
    """The stored photo as an RGB PIL image."""
    with Image.open(io.BytesIO(open_bytes(key))) as img:
        return img.convert("RGB")


def prune(now: float | None = None) -> int:
    """Delete photos older than the TTL; returns how many were deleted."""
    now = time.time() if now is None else now
    try:
        _, files = _storage().listdir(PREFIX)
    except FileNotFoundError:
        return 0
    deleted = 0
    for filename in files:
        name = f"{PREFIX}/{filename}"
        try:
            age = now - _storage().get_modified_time(name).timestamp()
        except (FileNotFoundError, NotImplementedError):
            continue
        if age > ttl_seconds():
            _storage().delete(name)
            deleted += 1
    return deleted
