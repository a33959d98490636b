"""The catalog API answers values the database cannot hold with a 4xx naming the field, never a 500."""

from __future__ import annotations

import json

import pytest

from catalog.models import Category, Product, ProductTag, Tag, TagGroup
from tests.conftest import make_image

pytestmark = pytest.mark.django_db

PRODUCTS = "/api/v1/products/"


def post(client, url, body):
    return client.post(url, json.dumps(body), content_type="application/json")


def assert_bad(response, field: str, words: str, status: int = 400):
    assert response.status_code == status, response.content
    detail = response.json()["detail"]
    assert detail.startswith(f"{field}: ") or status == 404, detail
    assert words in detail, detail
    return detail


@pytest.mark.parametrize(
    "body, field, words",
    [
        ({"category": "Apparel/" + "c" * 201}, "category", "201 characters long; the limit is 200 a level"),
        ({"category": "/".join(["c" * 200] * 6)}, "category", "the limit is 1000"),
        ({"category": "A/\x00"}, "category", "contains a NUL character (position 2)"),
        ({"attributes": {"col\x00our": "Red"}}, "attributes", "key 'col\\x00our' contains a NUL character"),
        ({"attributes": {"colour": "Re\x00d"}}, "attributes.colour", "contains a NUL character (position 2)"),
        ({"attributes": {"k" * 201: "v"}}, "attributes", "must have 1 to 200 characters"),
        ({"attributes": {"k": "v" * 10_001}}, "attributes", "longer than 10000"),
        ({"title": "Red\x00tee"}, "title", "contains a NUL character (position 3)"),
        ({"title": "Red\ttee"}, "title", "control character U+0009"),
        ({"title": "half \ud83d"}, "title", "lone surrogate U+D83D"),
        ({"sku": "tee\x00"}, "sku", "contains a NUL character (position 3)"),
        ({"sku": "tee\x1b[31m"}, "sku", "control character U+001B"),
        ({"brand": "Ac\x00me"}, "brand", "contains a NUL character"),
        ({"description": "a\x00b"}, "description", "contains a NUL character"),
        ({"description": "d" * 100_001}, "description", "the limit is 100000"),
        ({"price": "1e12"}, "price", "digits"),
        ({"price": "10000000000"}, "price", "no more than 10 digits before the decimal point"),
        ({"price": -1}, "price", "greater than or equal to 0"),
        ({"currency": "ßßß"}, "currency", "3-letter ISO 4217 code"),
    ],
)
def test_product_post_with_a_bad_value_is_a_400_naming_the_field(staff_client, body, field, words):
    response = post(staff_client, PRODUCTS, {"sku": "tee-1", "title": "Tee", **body})
    assert_bad(response, field, words)
    assert not Product.objects.exists() and not Category.objects.exists()


def test_put_and_patch_check_the_same(staff_client):
    assert post(staff_client, PRODUCTS, {"sku": "tee-1", "title": "Tee"}).status_code == 201
    url = f"{PRODUCTS}tee-1/"
    r = staff_client.patch(url, json.dumps({"attributes": {"k\x00": 1}}), content_type="application/json")
    assert_bad(r, "attributes", "contains a NUL")
    r = staff_client.put(url, json.dumps({"sku": "tee-1", "title": "T", "category": "x" * 201}),
                         content_type="application/json")
    assert_bad(r, "category", "the limit is 200 a level")
    assert Product.objects.get().title == "Tee"


@pytest.mark.parametrize("method", ["get", "put", "patch", "delete"])
@pytest.mark.parametrize("sku", ["tee%00", "%00", "a%1Fb"])
def test_a_sku_with_a_control_character_in_the_url_is_a_404_with_a_message(staff_client, method, sku):
    Product.objects.create(sku="tee", title="Tee")
    call = getattr(staff_client, method)
    url = f"{PRODUCTS}{sku}/"
    response = call(url) if method == "get" else call(url, data=json.dumps({}), content_type="application/json")
    assert response.status_code == 404, response.content
    assert "the sku in the URL contains" in response.json()["detail"]
    assert Product.objects.count() == 1


def test_image_upload_to_a_nul_sku_and_an_out_of_range_position(staff_client):
    Product.objects.create(sku="tee", title="Tee")
    jpeg = make_image()
    from django.core.files.uploadedfile import SimpleUploadedFile

    upload = lambda: SimpleUploadedFile("a.jpg", jpeg, content_type="image/jpeg")  # noqa: E731
    r = staff_client.post(f"{PRODUCTS}tee%00/images", {"file": upload()}, format="multipart")
    assert r.status_code == 404 and "the sku in the URL" in r.json()["detail"]
    r = staff_client.post(f"{PRODUCTS}tee/images", {"file": upload(), "position": 2**31}, format="multipart")
    assert_bad(r, "position", "less than or equal to 2147483647")
    r = staff_client.post(f"{PRODUCTS}tee/images", {"file": upload(), "position": "1\x00"}, format="multipart")
    assert_bad(r, "position", "NUL")
    r = staff_client.post(f"{PRODUCTS}tee/images", {"file": upload(), "position": 2**31 - 1}, format="multipart")
    assert r.status_code == 201 and r.json()["position"] == 2**31 - 1
    r = staff_client.delete(f"{PRODUCTS}tee/images/99999999999999999999999")
    assert r.status_code == 404


@pytest.mark.parametrize(
    "query, field",
    [
        ("sku=a%00", "sku"), ("category=A%00", "category"), ("brand=%00", "brand"), ("attr.colour=R%00", "attr.colour"),
        ("attr.col%00our=R", "query"), ("tag=a%00", "tag"), ("ordering=%00", "ordering"), ("page=1%00", "page"),
    ],
)
def test_query_parameters_with_nul_are_a_400(api_client, query, field):
    assert_bad(api_client.get(f"{PRODUCTS}?{query}"), field, "NUL")


def test_other_catalog_endpoints(staff_client):
    group = TagGroup.objects.create(name="Colour")
    tag = Tag.objects.create(group=group, name="Red")
    product = Product.objects.create(sku="tee", title="Tee")
    assert_bad(post(staff_client, "/api/v1/categories/", {"name": "A", "parent": "x\x00"}), "parent", "NUL")
    assert_bad(post(staff_client, "/api/v1/categories/", {"name": "c" * 201}), "name", "200 characters")
    assert_bad(post(staff_client, "/api/v1/tag-groups/", {"name": "C\x00"}), "name", "NUL")
    assert_bad(post(staff_client, "/api/v1/tags/", {"group": "colour\x00", "name": "x"}), "group", "NUL")
    assert_bad(post(staff_client, "/api/v1/tags/", {"group": "colour", "name": "x", "synonyms": ["a\x00"]}),
               "synonyms[0]", "NUL")
    assert_bad(post(staff_client, "/api/v1/product-tags/", {"product": "tee\x00", "tag": tag.pk}), "product", "NUL")
    r = staff_client.post("/api/v1/product-tags/", {"product": "tee", "tag": tag.pk, "score": "nan"})
    assert_bad(r, "score", "valid number")
    assert staff_client.get("/api/v1/tag-groups/col%00our/").status_code == 404
    assert staff_client.get("/api/v1/tags/99999999999999999999999/").status_code == 404
    assert staff_client.get("/api/v1/product-tags/?product__sku=%00").status_code == 400
    assert not ProductTag.objects.filter(product=product).exists()


def test_renaming_or_moving_a_category_may_not_push_a_path_below_it_over_the_limit(staff_client):
    leaf = Category.objects.get_or_create_path("/".join(["c" * 198] * 5))  # 994 characters
    top = Category.objects.get(path="c" * 198)
    url = f"/api/v1/categories/{top.pk}/"
    r = staff_client.patch(url, json.dumps({"name": "d" * 200}), content_type="application/json")
    assert r.status_code == 200, r.content  # the leaf's path is now 996 characters
    other = Category.objects.create(name="p" * 5)
    r = staff_client.patch(url, json.dumps({"parent": other.path}), content_type="application/json")
    assert_bad(r, "name", "would be 1002 characters long; the limit is 1000")
    leaf.refresh_from_db()
    assert len(leaf.path) == 996 and leaf.path.startswith("d" * 200 + "/")
