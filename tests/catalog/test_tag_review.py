"""The tagging workflow's catalog half: a vocabulary from the catalog, the review queue, bulk decisions that feed
search, and the staff API for integrations."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from catalog.models import Category, Product, ProductTag, Tag, TagGroup
from catalog.storage import add_image
from catalog.vocabulary import template_problem, vocabulary
from mmsearch.images import check_image
from mmsearch.search.engine import browse
from mmsearch.search.params import SearchQuery
from tests.conftest import make_image

pytestmark = pytest.mark.django_db


@pytest.fixture
def shop():
    made = {}
    rows = [
        ("t-1", "Red shirt", "Apparel/Topwear/Shirts", {"colour": "Red", "gender": "Men"}),
        ("t-2", "Navy Blue shirt", "Apparel/Topwear/Shirts", {"colour": "Navy Blue", "gender": "Women"}),
        ("t-3", "Navy-Blue jeans", "Apparel/Bottomwear/Jeans", {"colour": "Navy-Blue", "gender": "Women"}),
        ("t-4", "Green cap", "Accessories/Caps", {"colour": "Green", "gender": "Unisex", "code": "A1"}),
    ]
    for sku, title, path, attrs in rows:
        product = Product.objects.create(sku=sku, title=title, category=Category.objects.get_or_create_path(path), attributes=attrs)
        add_image(product, check_image(make_image(size=(24, 24))))
        made[sku] = product
    return made


def test_create_vocabulary_from_attributes_and_category_levels(shop):
    out = io.StringIO()
    call_command("create_vocabulary", "--attributes", "colour,gender,code", "--category-levels", "1,2", stdout=out)
    assert "skipped (fewer than 2 or more than 200 values): code (1 values)" in out.getvalue()
    groups = {g.slug: g for g in vocabulary()}
    assert set(groups) == {"colour", "gender", "category-level-1", "category-level-2"}
    colour = {t.slug: t for t in groups["colour"].tags}
    assert set(colour) == {"green", "navy-blue", "red"}
    assert colour["navy-blue"].name == "Navy Blue" and colour["navy-blue"].synonyms == ("Navy-Blue",)
    assert [t.name for t in groups["category-level-1"].tags] == ["Accessories", "Apparel"]
    assert groups["colour"].name == "colour" and groups["colour"].templates[0] == "{group}: {tag}"
    # Running it again adds nothing; editing a tag changes its group's version, and only that one.
    before = {g.slug: g.version for g in vocabulary()}
    call_command("create_vocabulary", "--attributes", "colour", stdout=io.StringIO())
    assert Tag.objects.count() == 3 + 3 + 2 + 3
    Tag.objects.filter(slug="red").update(synonyms=["scarlet"])
    after = {g.slug: g.version for g in vocabulary()}
    assert after["colour"] != before["colour"] and after["gender"] == before["gender"]


def test_create_vocabulary_bad_arguments_are_one_line_errors(shop):
    with pytest.raises(CommandError, match="--category-levels counts from 1"):
        call_command("create_vocabulary", "--category-levels", "0")
    with pytest.raises(CommandError, match="takes numbers"):
        call_command("create_vocabulary", "--category-levels", "top")


def test_templates_must_name_the_tag():
    assert template_problem("a photo of a {tag} pattern") is None
    assert "must contain {tag}" in template_problem("a photo")
    assert "only {tag} and {group}" in template_problem("{tag} {colour}")
    assert "not a format string" in template_problem("{tag")


def _suggest(product, group, name, score, key="zeroshot:test:v1"):
    tag = Tag.objects.get_or_create(group=group, slug=name.lower(), defaults={"name": name})[0]
    return ProductTag.objects.create(product=product, tag=tag, source="model", status="suggested", score=score, model_key=key)


def test_accepting_in_bulk_makes_the_tag_a_filter_and_a_facet_at_once(shop, staff_client):
    group = TagGroup.objects.create(name="Pattern", slug="pattern")
    striped = [_suggest(shop[s], group, "Striped", 0.9) for s in ("t-1", "t-2")]
    _suggest(shop["t-3"], group, "Plain", 0.4)
    query = SearchQuery(filters={"tag": ["pattern:striped"]})
    assert browse(query).total == 0  # suggestions are not facts yet

    response = staff_client.post("/api/v1/product-tags/bulk", {"ids": [p.pk for p in striped], "status": "accepted"}, format="json")
    assert response.status_code == 200 and response.json()["changed"] == 2
    result = browse(query)
    assert sorted(h.sku for h in result.hits) == ["t-1", "t-2"]
    assert result.facets["tags"]["pattern"] == [{"value": "striped", "name": "Striped", "count": 2}]
    shop["t-1"].refresh_from_db()
    assert "'stripe'" in str(Product.objects.filter(pk=shop["t-1"].pk).values_list("search_vector", flat=True)[0])

    # Rejected is remembered; accepting it again is an explicit decision.
    response = staff_client.post("/api/v1/product-tags/bulk", {"ids": [striped[0].pk], "status": "rejected"}, format="json")
    assert response.json()["changed"] == 1 and browse(query).total == 1


def test_review_queue_api_filters_and_refuses_bad_requests(shop, staff_client, api_client):
    group = TagGroup.objects.create(name="Pattern", slug="pattern")
    _suggest(shop["t-1"], group, "Striped", 0.97)
    _suggest(shop["t-3"], group, "Plain", 0.4)
    listed = staff_client.get("/api/v1/product-tags/", {"status": "suggested", "group": "pattern", "min_score": "0.9"}).json()
    assert [(r["product"], r["group"], r["tag_name"]) for r in listed["results"]] == [("t-1", "pattern", "Striped")]
    by_category = staff_client.get("/api/v1/product-tags/", {"category": "Apparel/Bottomwear"}).json()
    assert [r["product"] for r in by_category["results"]] == ["t-3"]
    assert staff_client.get("/api/v1/product-tags/", {"category": "Nowhere"}).status_code == 400
    assert staff_client.post("/api/v1/product-tags/bulk", {"ids": [], "status": "accepted"}, format="json").status_code == 400
    assert staff_client.post("/api/v1/product-tags/bulk", {"ids": [1], "status": "maybe"}, format="json").status_code == 400
    assert api_client.post("/api/v1/product-tags/bulk", {"ids": [1], "status": "accepted"}, format="json").status_code == 401


def test_tag_job_requests_are_checked(shop, staff_client):
    no_vocabulary = staff_client.post("/api/v1/index-jobs/", {"kind": "tags", "alias": "embedder"}, format="json")
    assert no_vocabulary.status_code == 400 and "tag jobs need a tagger alias" in no_vocabulary.json()["detail"]
    bad = staff_client.post("/api/v1/index-jobs/", {"kind": "all", "skus": ["t-1"]}, format="json")
    assert bad.status_code == 400 and "tag job" in bad.json()["detail"]


@pytest.fixture
def admin_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("root", "root@example.com", "pw"))
    return client


def test_review_screens_show_pictures_and_walk_the_category_tree(shop, admin_client):
    group = TagGroup.objects.create(name="Pattern", slug="pattern")
    pt = _suggest(shop["t-1"], group, "Striped", 0.97)
    page = admin_client.get(reverse("admin:catalog_producttag_changelist"), {"confidence": "0.95-1"}).content.decode()
    assert 'alt="Red shirt"' in page and "0.97" in page and "Red shirt (t-1)" in page
    assert "0.95 – 1" in page  # the confidence filter
    products = admin_client.get(reverse("admin:catalog_product_changelist")).content.decode()
    assert products.count("<img src=") >= 4
    assert "?category_path=Apparel" in products and "category_path=Apparel%2FTopwear" not in products  # top level only
    deeper = admin_client.get(reverse("admin:catalog_product_changelist"), {"category_path": "Apparel"}).content.decode()
    assert "category_path=Apparel%2FTopwear" in deeper and "Green cap" not in deeper
    # One action decides a page.
    response = admin_client.post(reverse("admin:catalog_producttag_changelist"),
                                 {"action": "accept_tags", "_selected_action": [pt.pk]}, follow=True)
    assert "1 tags accepted" in response.content.decode()
    pt.refresh_from_db()
    assert pt.status == "accepted"
