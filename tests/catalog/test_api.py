"""The catalog REST API: public reads with filters, staff-only writes (session or token), the schema and docs."""

from __future__ import annotations

from decimal import Decimal

import pytest
from rest_framework.test import APIClient

from catalog.models import Category, Product, ProductTag, Tag, TagGroup

pytestmark = pytest.mark.django_db

PRODUCTS = "/api/v1/products/"


@pytest.fixture
def catalog():
    """Six products over a small tree, with attributes, prices and tags."""
    tees = Category.objects.get_or_create_path("Apparel/Topwear/Tshirts")
    shirts = Category.objects.get_or_create_path("Apparel/Topwear/Shirts")
    shoes = Category.objects.get_or_create_path("Footwear/Shoes")
    rows = [
        ("tee-red", "Red tee", tees, "5.00", {"colour": "Red", "size": 42}),
        ("tee-blue", "Blue tee", tees, "7.50", {"colour": "Blue", "size": 40}),
        ("shirt-red", "Red shirt", shirts, "20.00", {"colour": "red"}),
        ("shirt-white", "White shirt", shirts, "25.00", {"colour": "White"}),
        ("shoe-black", "Black shoe", shoes, "60.00", {"colour": "Black", "size": 42.0, "origin": "Italy, ca 180g"}),
        ("no-price", "Mystery item", None, None, {}),
    ]
    for sku, title, cat, price, attrs in rows:
        Product.objects.create(sku=sku, title=title, category=cat, price=Decimal(price) if price else None,
                               attributes=attrs)
    pattern = TagGroup.objects.create(name="Pattern")
    striped = Tag.objects.create(group=pattern, name="Striped")
    plain = Tag.objects.create(group=pattern, name="Plain")
    ProductTag.objects.create(product=Product.objects.get(sku="tee-red"), tag=striped)
    ProductTag.objects.create(product=Product.objects.get(sku="tee-blue"), tag=striped, source="model",
                              model_key="m:1", score=0.4, status="suggested")
    ProductTag.objects.create(product=Product.objects.get(sku="shirt-red"), tag=plain)
    ProductTag.objects.create(product=Product.objects.get(sku="shirt-red"), tag=striped)
    return rows


def skus(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [p["sku"] for p in response.json()["results"]]


# --- reads --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "query, expected",
    [
        ("", ["tee-red", "tee-blue", "shirt-red", "shirt-white", "shoe-black", "no-price"]),
        ("category=Apparel", ["tee-red", "tee-blue", "shirt-red", "shirt-white"]),
        ("category=Apparel/Topwear/Shirts", ["shirt-red", "shirt-white"]),
        ("category=Footwear/", ["shoe-black"]),
        ("price_min=7.5", ["tee-blue", "shirt-red", "shirt-white", "shoe-black"]),
        ("price_max=20", ["tee-red", "tee-blue", "shirt-red"]),
        ("price_min=6&price_max=24", ["tee-blue", "shirt-red"]),
        ("attr.colour=Red", ["tee-red", "shirt-red"]),
        ("attr.colour=red,white", ["tee-red", "shirt-red", "shirt-white"]),
        ("attr.colour=Red&attr.colour=Black", ["tee-red", "shirt-red", "shoe-black"]),
        ("attr.size=42", ["tee-red", "shoe-black"]),
        ("attr.colour=Red&category=Apparel/Topwear/Tshirts", ["tee-red"]),
        ("attr.nosuchkey=1", []),
        ("attr.origin=Italy%5C%2C%20ca%20180g", ["shoe-black"]),  # an escaped comma is part of the value
        ("attr.origin=Italy,ca%20180g", []),  # an unescaped one means "Italy" or "ca 180g"
        ("tag=pattern:striped", ["tee-red", "shirt-red"]),  # tee-blue's tag is only suggested
        ("tag=striped", ["tee-red", "shirt-red"]),
        ("tag=pattern:striped,pattern:plain", ["shirt-red"]),
        ("tag=pattern:polka", []),
        ("sku=shoe-black,tee-red", ["tee-red", "shoe-black"]),
        ("ordering=-price&price_min=0", ["shoe-black", "shirt-white", "shirt-red", "tee-blue", "tee-red"]),
        ("ordering=title", ["shoe-black", "tee-blue", "no-price", "shirt-red", "tee-red", "shirt-white"]),
    ],
)
def test_list_filters(api_client, catalog, query, expected):
    assert skus(api_client.get(f"{PRODUCTS}?{query}")) == expected


def test_pagination(api_client, catalog):
    first = api_client.get(f"{PRODUCTS}?page_size=4").json()
    assert first["count"] == 6 and len(first["results"]) == 4 and first["previous"] is None
    second = api_client.get(first["next"]).json()
    assert [p["sku"] for p in second["results"]] == ["shoe-black", "no-price"] and second["next"] is None


@pytest.mark.parametrize(
    "query, message",
    [
        ("page_size=201", "page_size: must be between 1 and 200"),
        ("page_size=0", "page_size: must be between 1 and 200"),
        ("page_size=ten", "page_size: must be a whole number"),
        ("colour=Red", "unknown parameter(s): colour"),
        ("price_min=cheap", "price_min: Enter a number."),
        ("price_max=1e", "price_max: Enter a number."),
        ("ordering=colour", "ordering:"),
        ("category=Nope", "category: unknown category 'Nope'"),
        ("attr.=x", "attribute name is empty"),
    ],
)
def test_bad_list_queries_are_400_with_a_message(api_client, catalog, query, message):
    response = api_client.get(f"{PRODUCTS}?{query}")
    assert response.status_code == 400, response.content
    assert message in response.json()["detail"]


def test_odd_attribute_names_are_literal_keys(api_client, catalog):
    for name in ("contains", "colour__iexact", "has_key", "a.b"):
        assert skus(api_client.get(f"{PRODUCTS}?attr.{name}=Red")) == []
    assert skus(api_client.get(f"{PRODUCTS}?attr.size=nan")) == []


def test_product_detail_by_sku(api_client, catalog):
    data = api_client.get(f"{PRODUCTS}tee-red/").json()
    assert data["sku"] == "tee-red" and data["title"] == "Red tee"
    assert data["category"] == "Apparel/Topwear/Tshirts"
    assert data["price"] == "5.00" and data["attributes"] == {"colour": "Red", "size": 42}
    assert data["tags"] == ["pattern:striped"] and data["images"] == []
    assert api_client.get(f"{PRODUCTS}tee-blue/").json()["tags"] == []  # suggested tags are not shown
    missing = api_client.get(f"{PRODUCTS}nope/")
    assert missing.status_code == 404 and missing.json()["detail"]


def test_categories_tags_and_groups_are_public(api_client, catalog):
    cats = api_client.get("/api/v1/categories/?page_size=50").json()["results"]
    assert [c["path"] for c in cats] == [
        "Apparel", "Apparel/Topwear", "Apparel/Topwear/Shirts", "Apparel/Topwear/Tshirts", "Footwear", "Footwear/Shoes"
    ]
    assert cats[2]["parent"] == "Apparel/Topwear"
    assert [g["slug"] for g in api_client.get("/api/v1/tag-groups/").json()["results"]] == ["pattern"]
    tags = api_client.get("/api/v1/tags/?group__slug=pattern").json()["results"]
    assert [t["slug"] for t in tags] == ["plain", "striped"]
    suggested = api_client.get("/api/v1/product-tags/?status=suggested").json()["results"]
    assert [(t["product"], t["model_key"]) for t in suggested] == [("tee-blue", "m:1")]
    assert api_client.get("/api/v1/tags/?colour=red").status_code == 400


# --- writes: who may ----------------------------------------------------------------------------------------

WRITES = [
    ("post", PRODUCTS, {"sku": "new", "title": "New"}),
    ("patch", f"{PRODUCTS}tee-red/", {"title": "Changed"}),
    ("put", f"{PRODUCTS}tee-red/", {"sku": "tee-red", "title": "Changed"}),
    ("delete", f"{PRODUCTS}tee-red/", None),
    ("post", "/api/v1/categories/", {"name": "Toys"}),
    ("post", "/api/v1/tag-groups/", {"name": "Colour"}),
    ("post", "/api/v1/tags/", {"group": "pattern", "name": "Dotted"}),
    ("delete", "/api/v1/tag-groups/pattern/", None),
]


def state() -> tuple:
    return (
        list(Product.objects.order_by("sku").values_list("sku", "title", "updated_at")),
        list(Category.objects.values_list("path", flat=True)),
        list(Tag.objects.values_list("slug", flat=True)),
        list(TagGroup.objects.values_list("slug", flat=True)),
    )


@pytest.mark.parametrize("method, url, body", WRITES)
def test_anonymous_writes_are_401_and_change_nothing(api_client, catalog, method, url, body):
    before = state()
    response = getattr(api_client, method)(url, body, format="json")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"
    assert "staff" in response.json()["detail"] or "credentials" in response.json()["detail"]
    assert state() == before


@pytest.mark.parametrize("method, url, body", WRITES)
def test_non_staff_writes_are_403_and_change_nothing(catalog, django_user_model, method, url, body):
    client = APIClient()
    client.force_authenticate(django_user_model.objects.create_user("shopper", password="pw"))
    before = state()
    response = getattr(client, method)(url, body, format="json")
    assert response.status_code == 403
    assert "staff" in response.json()["detail"]
    assert state() == before


def test_bad_token_is_401(api_client, catalog):
    api_client.credentials(HTTP_AUTHORIZATION="Token not-a-token")
    assert api_client.post(PRODUCTS, {"sku": "n", "title": "N"}, format="json").status_code == 401
    assert not Product.objects.filter(sku="n").exists()


# --- writes: staff ------------------------------------------------------------------------------------------

def crud_cycle(client: APIClient) -> None:
    created = client.post(PRODUCTS, {
        "sku": "hat-1", "title": "Sun hat", "price": "12.50", "currency": "eur",
        "attributes": {"colour": "Straw"}, "category": "Accessories/Hats",
    }, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["category"] == "Accessories/Hats" and created.json()["currency"] == "EUR"
    assert Category.objects.filter(path="Accessories").exists()
    hat = Product.objects.get(sku="hat-1")
    assert hat.search_vector is not None

    patched = client.patch(f"{PRODUCTS}hat-1/", {"title": "Straw sun hat", "category": None}, format="json")
    assert patched.status_code == 200, patched.content
    hat.refresh_from_db()
    assert hat.title == "Straw sun hat" and hat.category is None and hat.price == Decimal("12.50")

    put = client.put(f"{PRODUCTS}hat-1/", {"sku": "hat-1", "title": "Hat"}, format="json")
    assert put.status_code == 200, put.content
    assert client.patch(f"{PRODUCTS}hat-1/", {"sku": "hat-2"}, format="json").status_code == 400

    assert client.delete(f"{PRODUCTS}hat-1/").status_code == 204
    assert not Product.objects.filter(sku="hat-1").exists()


def test_trailing_slash_is_optional(staff_client, catalog):
    assert staff_client.get("/api/v1/products/tee-red").json()["sku"] == "tee-red"
    created = staff_client.post("/api/v1/products", {"sku": "no-slash", "title": "No slash"}, format="json")
    assert created.status_code == 201
    assert staff_client.patch("/api/v1/products/no-slash", {"title": "Still none"}, format="json").status_code == 200


def test_staff_crud_with_session_login(catalog, django_user_model):
    django_user_model.objects.create_user("editor", password="s3cret-pw", is_staff=True)
    client = APIClient()
    assert client.login(username="editor", password="s3cret-pw")
    crud_cycle(client)


def test_staff_crud_with_token(catalog, django_user_model):
    django_user_model.objects.create_user("editor", password="s3cret-pw", is_staff=True)
    client = APIClient()
    bad = client.post("/api/v1/auth/token", {"username": "editor", "password": "wrong"}, format="json")
    assert bad.status_code == 400
    token = client.post("/api/v1/auth/token", {"username": "editor", "password": "s3cret-pw"}, format="json")
    assert token.status_code == 200, token.content
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.json()['token']}")
    crud_cycle(client)


@pytest.mark.parametrize(
    "body, message",
    [
        ({"sku": "tee-red", "title": "Again"}, "sku:"),
        ({"sku": "x", "title": ""}, "title:"),
        ({"sku": "x", "title": "X", "price": "-1"}, "price:"),
        ({"sku": "x", "title": "X", "price": "abc"}, "price:"),
        ({"sku": "x", "title": "X", "attributes": [1]}, "attributes:"),
        ({"sku": "x", "title": "X", "attributes": {"a": {"b": 1}}}, "attributes: attribute 'a'"),
        ({"sku": "x", "title": "X", "currency": "EURO"}, "currency:"),
        ({"sku": "x", "title": "X", "category": " / "}, "category:"),
    ],
)
def test_staff_bad_product_is_400(staff_client, catalog, body, message):
    before = state()
    response = staff_client.post(PRODUCTS, body, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["detail"].startswith(message)
    assert state() == before


def test_staff_manages_categories_tags_and_product_tags(staff_client, catalog):
    client = staff_client
    created = client.post("/api/v1/categories/", {"name": "Sandals", "parent": "Footwear"}, format="json")
    assert created.status_code == 201 and created.json()["path"] == "Footwear/Sandals"
    clash = client.post("/api/v1/categories/", {"name": "Shoes", "parent": "Footwear"}, format="json")
    assert clash.status_code == 400 and "already exists" in clash.json()["detail"]

    footwear = Category.objects.get(path="Footwear")
    renamed = client.patch(f"/api/v1/categories/{footwear.pk}/", {"name": "Shoes and boots"}, format="json")
    assert renamed.status_code == 200
    assert Product.objects.get(sku="shoe-black").category.path == "Shoes and boots/Shoes"
    below = Category.objects.get(path="Shoes and boots/Shoes")
    cycle = client.patch(f"/api/v1/categories/{footwear.pk}/", {"parent": below.path}, format="json")
    assert cycle.status_code == 400 and "below itself" in cycle.json()["detail"]
    in_use = client.delete(f"/api/v1/categories/{below.pk}/")
    assert in_use.status_code == 409 and "shoe-black" in in_use.json()["detail"]

    group = client.post("/api/v1/tag-groups/", {"name": "Colour"}, format="json")
    assert group.status_code == 201 and group.json()["slug"] == "colour"
    tag = client.post("/api/v1/tags/", {"group": "colour", "name": "Navy blue", "synonyms": ["navy"]}, format="json")
    assert tag.status_code == 201 and tag.json()["slug"] == "navy-blue"
    twice = client.post("/api/v1/tags/", {"group": "colour", "name": "Navy Blue"}, format="json")
    assert twice.status_code == 400 and "'navy-blue' is already used" in twice.json()["detail"]
    assert client.post("/api/v1/tags/", {"group": "pattern", "name": "Navy blue"}, format="json").status_code == 201

    suggestion = client.post("/api/v1/product-tags/", {
        "product": "tee-blue", "tag": tag.json()["id"], "source": "model", "score": 0.9, "model_key": "m:1",
        "status": "suggested",
    }, format="json")
    assert suggestion.status_code == 201, suggestion.content
    assert skus(client.get(f"{PRODUCTS}?tag=colour:navy-blue")) == []
    accepted = client.patch(f"/api/v1/product-tags/{suggestion.json()['id']}/", {"status": "accepted"}, format="json")
    assert accepted.status_code == 200
    assert skus(client.get(f"{PRODUCTS}?tag=colour:navy-blue")) == ["tee-blue"]
    assert client.get(f"{PRODUCTS}tee-blue/").json()["tags"] == ["colour:navy-blue"]
    from django.contrib.postgres.search import SearchQuery

    assert Product.objects.filter(search_vector=SearchQuery("navy", config="english")).get().sku == "tee-blue"


# --- schema and docs ----------------------------------------------------------------------------------------

def test_openapi_schema_validates(api_client):
    from drf_spectacular.validation import validate_schema

    response = api_client.get("/api/v1/schema/?format=json")
    assert response.status_code == 200
    schema = response.json()
    validate_schema(schema)
    assert "/api/v1/products/" in schema["paths"]
    assert "/api/v1/products/{sku}/images/" in schema["paths"]
    params = {p["name"] for p in schema["paths"]["/api/v1/products/"]["get"]["parameters"]}
    assert {"category", "price_min", "price_max", "tag", "ordering", "page", "page_size"} <= params


def test_swagger_ui_renders_from_local_files(api_client):
    import re

    from django.contrib.staticfiles import finders

    response = api_client.get("/api/v1/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "swagger-ui" in html and "/api/v1/schema/" in html
    assets = re.findall(r'(?:src|href)="/static/([^"]+)"', html)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets), assets
    for asset in assets:  # everything the page loads ships with the project (no CDN)
        assert finders.find(asset), asset
    assert "cdn." not in html
