"""Django admin: every catalog model's pages open for a superuser; image uploads there are validated too."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from mmsearch.images import check_image
from catalog.models import Category, Product, ProductImage, ProductTag, Tag, TagGroup
from catalog.storage import add_image

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client, django_user_model):
    user = django_user_model.objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(user)
    return client


@pytest.fixture
def rows(image_bytes):
    category = Category.objects.get_or_create_path("Apparel/Topwear")
    product = Product.objects.create(sku="adm-1", title="Admin shirt", category=category, attributes={"colour": "Red"})
    image, _ = add_image(product, check_image(image_bytes()))
    group = TagGroup.objects.create(name="Colour")
    tag = Tag.objects.create(group=group, name="Red", synonyms=["crimson"])
    product_tag = ProductTag.objects.create(product=product, tag=tag, status="suggested", source="model", model_key="m:1")
    return {"product": product, "category": category, "productimage": image, "taggroup": group, "tag": tag,
            "producttag": product_tag}


@pytest.mark.parametrize("model", ["product", "category", "productimage", "taggroup", "tag", "producttag"])
def test_changelist_search_and_change_pages(admin_client, rows, model):
    changelist = reverse(f"admin:catalog_{model}_changelist")
    assert admin_client.get(changelist).status_code == 200
    assert admin_client.get(changelist, {"q": "red"}).status_code == 200
    assert admin_client.get(reverse(f"admin:catalog_{model}_change", args=[rows[model].pk])).status_code == 200
    if model != "productimage":  # images are added through a product or the API
        assert admin_client.get(reverse(f"admin:catalog_{model}_add")).status_code == 200


def test_filters_and_autocomplete(admin_client, rows):
    url = reverse("admin:catalog_product_changelist")
    assert admin_client.get(url, {"active__exact": "1", "category__id__exact": rows["category"].pk}).status_code == 200
    assert admin_client.get(reverse("admin:catalog_producttag_changelist"), {"status__exact": "suggested"}).status_code == 200
    auto = admin_client.get(reverse("admin:autocomplete"), {
        "term": "top", "app_label": "catalog", "model_name": "product", "field_name": "category"})
    assert auto.status_code == 200 and auto.json()["results"][0]["text"] == "Apparel/Topwear"


def test_accept_action_makes_tag_searchable(admin_client, rows):
    response = admin_client.post(reverse("admin:catalog_producttag_changelist"), {
        "action": "accept_tags", "_selected_action": [rows["producttag"].pk]})
    assert response.status_code == 302
    rows["producttag"].refresh_from_db()
    assert rows["producttag"].status == "accepted"
    from django.contrib.postgres.search import SearchQuery

    assert Product.objects.filter(search_vector=SearchQuery("crimson", config="english")).exists()


def _gif() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (4, 4)).save(out, format="GIF")
    return out.getvalue()


def _inline_post(product: Product, upload) -> dict:
    image = product.images.get()
    return {
        "sku": product.sku, "title": product.title, "description": "", "brand": "", "price": "", "currency": "",
        "attributes": '{"colour": "Red"}', "category": product.category_id, "active": "on",
        "images-TOTAL_FORMS": "2", "images-INITIAL_FORMS": "1", "images-MIN_NUM_FORMS": "0",
        "images-MAX_NUM_FORMS": "1000",
        "images-0-id": image.pk, "images-0-product": product.pk, "images-0-position": "0",
        "images-1-id": "", "images-1-product": product.pk, "images-1-position": "1", "images-1-file": upload,
        "product_tags-TOTAL_FORMS": "0", "product_tags-INITIAL_FORMS": "0", "product_tags-MIN_NUM_FORMS": "0",
        "product_tags-MAX_NUM_FORMS": "1000",
    }


def test_inline_upload_is_validated_and_stored_by_content(admin_client, rows, image_bytes, media_root):
    product = rows["product"]
    url = reverse("admin:catalog_product_change", args=[product.pk])
    for name, data, message in [("a.gif", _gif(), b"format GIF is not accepted"),
                                ("t.jpg", b"plain text", b"not an image file")]:
        refused = admin_client.post(url, _inline_post(product, SimpleUploadedFile(name, data)))
        assert refused.status_code == 200 and message in refused.content
        assert product.images.count() == 1

    data = image_bytes(exif_orientation=6, color=(0, 120, 0))
    accepted = admin_client.post(url, _inline_post(product, SimpleUploadedFile("b.jpg", data)))
    assert accepted.status_code == 302, accepted.content[:2000]
    new = product.images.get(position=1)
    checked = check_image(data)
    assert (new.sha256, new.width, new.height) == (checked.sha256, 24, 32)
    assert new.file.name == f"images/{checked.sha256[:2]}/{checked.sha256}.jpg"
    assert (media_root / new.file.name).read_bytes() == checked.data
    assert len([p for p in media_root.rglob("*") if p.is_file()]) == 2
    assert ProductImage.objects.count() == 2
