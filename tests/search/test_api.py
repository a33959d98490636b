"""The search API over HTTP: shapes, photo uploads, similar products and 400s with messages."""

from __future__ import annotations

import pytest

from tests.conftest import make_image

pytestmark = pytest.mark.django_db


def test_text_search_returns_hits_with_parts_and_facets(shop, api_client):
    response = api_client.get("/api/v1/search", {"q": "red cotton kurta", "attr.gender": "Women"})
    assert response.status_code == 200, response.content
    data = response.json()
    assert data["mode"] == "hybrid" and data["results"][0]["sku"] == "kurta-red"
    hit = data["results"][0]
    assert hit["price"] == "20.00" and hit["currency"] == "EUR" and hit["image_url"].startswith("http://testserver/media/")
    assert {"lexical", "image_vector", "text_vector"} <= set(hit["parts"]) and hit["model_key"]
    assert {"category", "attributes", "tags", "price"} == set(data["facets"])
    assert data["total"] >= len(data["results"]) and data["took_ms"] > 0


def test_photo_search_by_upload(shop, api_client):
    upload = ("photo.png", make_image("PNG", size=(48, 48), color=(30, 160, 60)), "image/png")
    from django.core.files.uploadedfile import SimpleUploadedFile

    response = api_client.post(
        "/api/v1/search/image?category=Footwear", {"image": SimpleUploadedFile(*upload)}, format="multipart"
    )
    assert response.status_code == 200, response.content
    data = response.json()
    assert data["mode"] == "semantic" and [r["sku"] for r in data["results"]] == ["shoes-green"]


def test_similar_products(shop, api_client):
    response = api_client.get("/api/v1/products/kurta-red/similar", {"limit": 3})
    assert response.status_code == 200
    skus = [r["sku"] for r in response.json()["results"]]
    assert len(skus) == 3 and "kurta-red" not in skus
    assert api_client.get("/api/v1/products/nope/similar").status_code == 404


@pytest.mark.parametrize(
    "params, message",
    [
        ({}, "the query is empty"),
        ({"q": "   "}, "the query is empty"),
        ({"q": "x" * 500}, "the limit is 200"),
        ({"q": "red", "colour": "Red"}, "unknown parameter(s): colour"),
        ({"q": "red", "price_min": "abc"}, "price_min must be a number"),
        ({"q": "red", "limit": "1000"}, "limit must be between 1 and 100"),
    ],
)
def test_bad_text_queries_are_400s_with_a_message(shop, api_client, params, message):
    response = api_client.get("/api/v1/search", params)
    assert response.status_code == 400
    assert message in response.json()["detail"]


def test_bad_uploads_are_400s_with_a_message(shop, api_client, settings):
    from django.core.files.uploadedfile import SimpleUploadedFile

    not_image = SimpleUploadedFile("notes.jpg", b"this is not an image", "image/jpeg")
    response = api_client.post("/api/v1/search/image", {"image": not_image}, format="multipart")
    assert response.status_code == 400 and response.json()["detail"].startswith("image: ")

    settings.MMSEARCH_UPLOAD_MAX_BYTES = 1000
    big = SimpleUploadedFile("big.png", make_image("PNG", size=(400, 400)) + b"\0" * 2000, "image/png")
    response = api_client.post("/api/v1/search/image", {"image": big}, format="multipart")
    assert response.status_code == 400 and "the limit is 1,000" in response.json()["detail"]

    response = api_client.post("/api/v1/search/image", {}, format="multipart")
    assert response.status_code == 400 and "field 'image'" in response.json()["detail"]

    ok = SimpleUploadedFile("p.png", make_image("PNG"), "image/png")
    response = api_client.post("/api/v1/search/image?bogus=1", {"image": ok}, format="multipart")
    assert response.status_code == 400 and "unknown parameter(s): bogus" in response.json()["detail"]
