"""The data-quality report for admins: scores stored by `match_report --store` on an exported catalog, the admin
page (worst match first, category filter, bulk actions) and the staff API."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.test import override_settings
from django.urls import reverse

from catalog.models import Category, MatchScore, Product
from catalog.storage import add_image
from mmsearch import plugins
from mmsearch.adapter import MatchRow, get_catalog
from mmsearch.images import check_image
from tests.conftest import make_image

pytestmark = pytest.mark.django_db

MODELS = {"embedder": {"BACKEND": "tests.training.plugins.ColourEmbedder", "OPTIONS": {}},
          "captioner": {"BACKEND": "tests.training.plugins.ColourCaptioner", "OPTIONS": {}}}
ROWS = [  # sku, title, category, photo colour
    ("q-red", "Red Shirt", "Apparel/Shirts", (230, 10, 10)),
    ("q-green", "Green Shirt", "Apparel/Shirts", (10, 230, 30)),
    ("q-cap", "Blue Cap", "Accessories/Caps", (230, 20, 20)),  # a red cap sold as a blue one
    ("q-blue", "Blue Shirt", "Apparel/Shirts", (20, 40, 230)),
]


@pytest.fixture
def colour_models():
    plugins.reset()
    with override_settings(MMSEARCH_MODELS=MODELS):
        yield
    plugins.reset()


@pytest.fixture
def scored(colour_models, tmp_path):
    """The shop in the database, exported, reported with --store (cosine): one MatchScore per product."""
    for sku, title, path, rgb in ROWS:
        product = Product.objects.create(sku=sku, title=title, category=Category.objects.get_or_create_path(path))
        add_image(product, check_image(make_image(size=(24, 24), color=rgb)))
    export = tmp_path / "export" / "products.jsonl"
    export.parent.mkdir()
    call_command("export_catalog", str(export), "--no-progress", stdout=io.StringIO())
    out = io.StringIO()
    call_command("match_report", str(export), "--store", "--score", "cosine", "--no-progress", stdout=out)
    assert "stored 4 scores (0 skus not in the catalog, 0 whose title has changed since" in out.getvalue()
    return export


@pytest.fixture
def admin_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("root", "root@example.com", "pw"))
    return client


def score_of(sku: str) -> MatchScore:
    return MatchScore.objects.get(product__sku=sku)


def test_store_keeps_one_score_per_product_and_model(scored):
    assert MatchScore.objects.count() == 4
    worst = MatchScore.objects.order_by("score").first()
    assert worst.product.sku == "q-cap"
    assert worst.model_key == "match:cosine:title:test-colour:v1"
    assert worst.caption == "a red product" and worst.caption_model_key == "test-colour-captioner:v1"
    assert worst.score < 0.2 < min(ms.score for ms in MatchScore.objects.exclude(pk=worst.pk))
    # Scored again with the same numbers: still one row each, and a review mark survives.
    MatchScore.objects.filter(pk=worst.pk).update(reviewed=True)
    call_command("match_report", str(scored), "--store", "--score", "cosine", "--no-progress", stdout=io.StringIO())
    assert MatchScore.objects.count() == 4 and score_of("q-cap").reviewed
    # A changed score clears it; unknown skus and changed titles are counted and left out.
    counts = get_catalog().store_match_scores([
        MatchRow("q-cap", "Blue Cap", 0.5, worst.model_key),
        MatchRow("nope", "x", 0.1, worst.model_key),
        MatchRow("q-red", "Another title", 0.1, worst.model_key),
    ])
    assert counts == {"stored": 1, "unknown_sku": 1, "title_changed": 1}
    assert score_of("q-cap").score == 0.5 and not score_of("q-cap").reviewed
    assert score_of("q-red").score > 0.9


def test_admin_report_ranks_by_mismatch_and_filters_by_category(scored, admin_client):
    url = reverse("admin:catalog_matchscore_changelist")
    page = admin_client.get(url)
    assert page.status_code == 200
    html = page.content.decode()
    # Worst match first, with its image, title, score and proposed caption.
    assert html.index("Blue Cap") < html.index("Green Shirt") and html.index("Blue Cap") < html.index("Red Shirt")
    assert html.count("<img ") >= 4 and "a red product" in html and f"{score_of('q-cap').score:.3f}" in html
    caps = admin_client.get(url, {"category_path": "Accessories"}).content.decode()
    assert "Blue Cap" in caps and "Red Shirt" not in caps
    assert admin_client.get(reverse("admin:catalog_matchscore_change", args=[score_of("q-cap").pk])).status_code == 200
    assert admin_client.get(reverse("admin:catalog_matchscore_add")).status_code == 403


def _act(admin_client, action: str, *skus: str) -> str:
    response = admin_client.post(reverse("admin:catalog_matchscore_changelist"), {
        "action": action, "_selected_action": [score_of(s).pk for s in skus]}, follow=True)
    assert response.status_code == 200
    return " | ".join(str(m) for m in response.context["messages"])


def test_admin_bulk_actions_do_what_they_say(scored, admin_client):
    assert _act(admin_client, "mark_reviewed", "q-red", "q-green") == "2 scores marked reviewed"
    assert score_of("q-red").reviewed and score_of("q-green").reviewed and not score_of("q-cap").reviewed

    assert "1 products retitled" in _act(admin_client, "accept_caption", "q-cap")
    cap = Product.objects.get(sku="q-cap")
    assert cap.title == "a red product"
    assert score_of("q-cap").previous_title == "Blue Cap" and score_of("q-cap").reviewed
    assert Product.objects.filter(search_vector__isnull=False, sku="q-cap").exists()
    assert "0 products retitled" in _act(admin_client, "accept_caption", "q-cap")  # already has it

    assert _act(admin_client, "deactivate", "q-blue", "q-cap") == "2 products deactivated"
    assert list(Product.objects.filter(active=False).order_by("sku").values_list("sku", flat=True)) == ["q-blue", "q-cap"]
    assert score_of("q-blue").reviewed

    # The old export no longer matches the retitled product: its score is not overwritten from stale text.
    out = io.StringIO()
    call_command("match_report", str(scored), "--store", "--score", "cosine", "--no-progress", stdout=out)
    assert "stored 3 scores (0 skus not in the catalog, 1 whose title has changed since" in out.getvalue()


def test_staff_api_lists_worst_first_and_acts_in_bulk(scored, staff_client, api_client, django_user_model):
    url = "/api/v1/match-scores"
    body = staff_client.get(url).json()
    rows = body["results"]
    assert [r["sku"] for r in rows][0] == "q-cap" and [r["score"] for r in rows] == sorted(r["score"] for r in rows)
    first = rows[0]
    assert first["title"] == "Blue Cap" and first["caption"] == "a red product" and first["category"] == "Accessories/Caps"
    assert first["image"].startswith("http") and first["active"] is True and first["reviewed"] is False
    apparel = staff_client.get(url, {"category": "Apparel"}).json()["results"]
    assert {r["sku"] for r in apparel} == {"q-green", "q-red", "q-blue"}

    done = staff_client.post(f"{url}/bulk", {"ids": [first["id"]], "action": "deactivate"}, format="json")
    assert done.status_code == 200 and done.json()["changed"] == 1
    assert not Product.objects.get(sku="q-cap").active
    assert [r["sku"] for r in staff_client.get(url, {"reviewed": "false"}).json()["results"]] == \
        [r["sku"] for r in rows[1:]]

    # Bad input: 400 with a message; nobody but staff reads or acts.
    bad = staff_client.post(f"{url}/bulk", {"ids": [first["id"]], "action": "delete"}, format="json")
    assert bad.status_code == 400 and bad.json()["detail"] == 'action: "delete" is not a valid choice.'
    assert staff_client.post(f"{url}/bulk", {"ids": [], "action": "mark_reviewed"}, format="json").status_code == 400
    unknown = staff_client.get(url, {"category": "Nowhere"})
    assert unknown.status_code == 400 and "Nowhere" in str(unknown.json())
    assert staff_client.get(url, {"colour": "red"}).status_code == 400
    assert api_client.get(url).status_code == 401
    user = django_user_model.objects.create_user("shopper", password="pw")
    api_client.force_authenticate(user)
    assert api_client.get(url).status_code == 403
    assert api_client.post(f"{url}/bulk", {"ids": [first["id"]], "action": "deactivate"}, format="json").status_code == 403
