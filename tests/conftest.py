"""Shared fixtures. The suite runs against the real embedded PostgreSQL+pgvector and Redis (or the services
named by DATABASE_URL / REDIS_URL), started here if they are not running yet."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from mmsearch import services


def pytest_configure(config):
    services.ensure_started()


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup):
    """pytest-django's test database, and before it is dropped, the search's SQL pool connections to it closed
    (transactional tests run their searches' queries side by side on those connections)."""
    yield
    from mmsearch.search import signals

    signals.close_sql_connections()


@pytest.fixture(autouse=True)
def no_auto_index(settings):
    """Catalog saves queue no embedding work unless a test asks for it (tests/workers turn it on)."""
    settings.MMSEARCH_AUTO_INDEX = False


@pytest.fixture(autouse=True)
def fast_password_hasher(settings):
    """Test users log in many times; the production hasher is slow by design (and the CPUs are shared)."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    """Each test writes images (and shoppers' query photos) into folders of its own."""
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.STORAGES = {
        **settings.STORAGES,
        "query_photos": {**settings.STORAGES["query_photos"], "OPTIONS": {"location": tmp_path / "query-photos", "base_url": None}},
    }
    return settings.MEDIA_ROOT


def make_image(fmt: str = "JPEG", size=(32, 24), color=(200, 30, 30), exif_orientation: int | None = None) -> bytes:
    """Real encoded image bytes of a solid colour (optionally with an EXIF orientation tag)."""
    img = Image.new("RGB", size, color)
    # A marker pixel so orientation changes are observable.
    img.putpixel((0, 0), (0, 0, 255))
    out = io.BytesIO()
    kwargs = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif.tobytes()
    img.save(out, format=fmt, **kwargs)
    return out.getvalue()


@pytest.fixture
def image_bytes():
    return make_image


class CatalogWriter:
    """Builds a products.jsonl with real image files in a folder."""

    def __init__(self, root: Path):
        self.root = root
        (root / "images").mkdir(parents=True, exist_ok=True)
        self.lines: list[str] = []

    def image(self, name: str, **kwargs) -> str:
        (self.root / "images" / name).write_bytes(make_image(**kwargs))
        return f"images/{name}"

    def add(self, row) -> "CatalogWriter":
        self.lines.append(row if isinstance(row, str) else json.dumps(row))
        return self

    def write(self, name: str = "products.jsonl") -> Path:
        path = self.root / name
        path.write_text("\n".join(self.lines) + "\n")
        return path


@pytest.fixture
def catalog_writer(tmp_path):
    return CatalogWriter(tmp_path / "catalog")


@pytest.fixture
def staff_client(db, django_user_model):
    from rest_framework.test import APIClient

    user = django_user_model.objects.create_user("staff", password="pw", is_staff=True)
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def api_client():
    from rest_framework.test import APIClient

    return APIClient()
