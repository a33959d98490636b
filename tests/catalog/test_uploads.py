"""Image upload through the API: accepted formats, EXIF orientation, and rejections that store nothing."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from catalog.models import Product, ProductImage

pytestmark = pytest.mark.django_db


@pytest.fixture
def product():
    return Product.objects.create(sku="up-1", title="Upload target")


def upload(client, data: bytes, name: str = "photo.jpg", sku: str = "up-1", **extra):
    file = SimpleUploadedFile(name, data, content_type="application/octet-stream")
    return client.post(f"/api/v1/products/{sku}/images/", {"file": file, **extra}, format="multipart")


def stored_files(media_root) -> list:
    return sorted(p for p in media_root.rglob("*") if p.is_file()) if media_root.exists() else []


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares huge dimensions with almost no data: a decompression bomb's signature."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("fmt, ext", [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp")])
def test_valid_images_are_accepted(staff_client, product, image_bytes, media_root, fmt, ext):
    data = image_bytes(fmt)
    response = upload(staff_client, data, f"photo.{ext}")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert (body["width"], body["height"], body["position"]) == (32, 24, 0)
    assert body["url"].endswith(f"/media/images/{body['sha256'][:2]}/{body['sha256']}.{ext}")
    image = ProductImage.objects.get(product=product)
    assert (media_root / image.file.name).read_bytes() == data
    detail = staff_client.get("/api/v1/products/up-1/").json()
    assert [i["sha256"] for i in detail["images"]] == [body["sha256"]]


def test_same_bytes_twice_is_stored_once(staff_client, product, image_bytes, media_root):
    data = image_bytes()
    assert upload(staff_client, data).status_code == 201
    again = upload(staff_client, data)
    assert again.status_code == 200
    assert ProductImage.objects.count() == 1 and len(stored_files(media_root)) == 1
    second = upload(staff_client, image_bytes(color=(0, 0, 0)))
    assert second.status_code == 201 and second.json()["position"] == 1


def test_exif_rotated_jpeg_is_stored_upright(staff_client, product, image_bytes, media_root):
    # Orientation 6: the camera was turned; viewers rotate 90 degrees clockwise to show it upright.
    response = upload(staff_client, image_bytes(size=(32, 24), exif_orientation=6))
    assert response.status_code == 201, response.content
    assert (response.json()["width"], response.json()["height"]) == (24, 32)
    image = ProductImage.objects.get()
    with Image.open(media_root / image.file.name) as stored:
        assert stored.size == (24, 32)
        assert stored.getexif().get(0x0112) in (None, 1)
        # The blue marker pixel, top-left before rotation, is now top-right (JPEG blurs it, so: the bluest pixel).
        rgb = stored.convert("RGB")
        pixels = [(x, y) for x in range(rgb.width) for y in range(rgb.height)]
        bluest = max(pixels, key=lambda p: rgb.getpixel(p)[2] - rgb.getpixel(p)[0])
        assert bluest == (23, 0)


def test_delete_image(staff_client, api_client, product, image_bytes):
    image_id = upload(staff_client, image_bytes()).json()["id"]
    assert api_client.delete(f"/api/v1/products/up-1/images/{image_id}").status_code == 401
    assert staff_client.delete(f"/api/v1/products/up-1/images/{image_id}").status_code == 204
    assert staff_client.delete(f"/api/v1/products/up-1/images/{image_id}").status_code == 404
    assert not ProductImage.objects.exists()


def _gif() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(out, format="GIF")
    return out.getvalue()


def _truncated_jpeg() -> bytes:
    out = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(out, format="JPEG")
    return out.getvalue()[:600]


@pytest.mark.parametrize(
    "make, name, message",
    [
        (lambda: b"just some text, not a picture", "notes.jpg", "not an image file"),
        (_gif, "anim.gif", "format GIF is not accepted"),
        (_truncated_jpeg, "cut.jpg", "corrupt or truncated"),
        (lambda: png_header_only(8000, 8000), "big.png", "8000x8000 = 64,000,000 pixels; the limit is 40,000,000"),
        (lambda: png_header_only(100_000, 100_000), "bomb.png", "too many pixels; the limit is 40,000,000"),
    ],
)
def test_bad_uploads_are_400_and_store_nothing(staff_client, product, media_root, make, name, message):
    response = upload(staff_client, make(), name)
    assert response.status_code == 400, response.content
    assert message in response.json()["detail"]
    assert response.json()["detail"].startswith("file: ")
    assert not ProductImage.objects.exists()
    assert stored_files(media_root) == []


def test_over_the_byte_limit_is_400_and_stores_nothing(staff_client, product, image_bytes, media_root, settings):
    data = image_bytes(size=(200, 200))
    settings.MMSEARCH_UPLOAD_MAX_BYTES = len(data) - 1
    response = upload(staff_client, data)
    assert response.status_code == 400
    assert f"the limit is {len(data) - 1:,} (MMSEARCH_UPLOAD_MAX_BYTES)" in response.json()["detail"]
    assert not ProductImage.objects.exists() and stored_files(media_root) == []


def test_missing_or_empty_file_is_400(staff_client, product, media_root):
    missing = staff_client.post("/api/v1/products/up-1/images/", {}, format="multipart")
    assert missing.status_code == 400 and missing.json()["detail"].startswith("file:")
    assert upload(staff_client, b"").status_code == 400
    assert stored_files(media_root) == []


def test_anonymous_and_non_staff_uploads_are_refused(api_client, product, image_bytes, media_root, django_user_model):
    assert upload(api_client, image_bytes()).status_code == 401
    api_client.force_authenticate(django_user_model.objects.create_user("shopper"))
    assert upload(api_client, image_bytes()).status_code == 403
    assert not ProductImage.objects.exists() and stored_files(media_root) == []


def test_upload_to_unknown_product_is_404(staff_client, image_bytes, media_root):
    assert upload(staff_client, image_bytes(), sku="nope").status_code == 404
    assert stored_files(media_root) == []
