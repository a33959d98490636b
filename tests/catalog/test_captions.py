"""The captioning workflow's catalog half: storing suggestions, the admin review list and the REST API (with 4xx
on bad input), and accepted captions feeding the full-text vector and the product text."""

from __future__ import annotations

import pytest

from catalog.adapter import CatalogAdapter
from catalog.captions import edit, store_suggestions
from catalog.models import Caption, Category, Product
from catalog.review import set_status
from catalog.storage import add_image
from mmsearch.adapter import CaptionRow
from mmsearch.images import check_image
from mmsearch.search.signals import lexical_candidates
from mmsearch.validation import BadText
from tests.conftest import make_image

pytestmark = pytest.mark.django_db
KEY = "captioner:test:beam3"


@pytest.fixture(autouse=True)
def no_trained_captioner(settings):
    """The settings of a checkout without models/captioner, whether or not this one has run make train."""
    settings.MMSEARCH_MODELS = {k: v for k, v in settings.MMSEARCH_MODELS.items() if k != "captioner"}


@pytest.fixture
def shop():
    """Three products whose titles say little (a brand), each with one image and one suggested caption."""
    made = {}
    rows = [("c-1", "Acme", "Apparel/Topwear", "women red floral kurta"),
            ("c-2", "Acme", "Apparel/Bottomwear", "men blue denim jeans"),
            ("c-3", "Bolt", "Accessories/Caps", "unisex green cap")]
    for i, (sku, title, path, _) in enumerate(rows):
        product = Product.objects.create(sku=sku, title=title, category=Category.objects.get_or_create_path(path))
        image, _ = add_image(product, check_image(make_image(size=(24, 24), color=(40 * i, 90, 200))))
        made[sku] = (product, image)
    created = store_suggestions([CaptionRow(p.pk, im.pk, text, KEY, 0.1 * (i + 1))
                                 for i, ((p, im), (*_, text)) in enumerate(zip(made.values(), rows))])
    assert created == 3
    return {sku: Caption.objects.get(product=p) for sku, (p, _) in made.items()}


def lexical_skus(text: str) -> list[str]:
    ids = [c.item_id for c in lexical_candidates(text, {}, 10)]
    return list(Product.objects.filter(pk__in=ids).values_list("sku", flat=True))


def test_storing_suggestions_keeps_a_persons_decision_and_never_duplicates(shop):
    caption = shop["c-1"]
    assert (caption.status, caption.edited, caption.model_key, caption.score) == ("suggested", False, KEY, pytest.approx(0.1))
    set_status(Caption.objects.filter(pk=caption.pk), "rejected")
    again = store_suggestions([CaptionRow(caption.product_id, caption.image_id, "something else", KEY, 0.9)])
    assert again == 0 and Caption.objects.get(pk=caption.pk).status == "rejected"  # remembered per model_key
    other = store_suggestions([CaptionRow(caption.product_id, caption.image_id, "women red kurta", "captioner:v2", 0.2)])
    assert other == 1 and Caption.objects.filter(image=caption.image).count() == 2
    # a deleted image is skipped, not an error
    assert store_suggestions([CaptionRow(caption.product_id, 10**9, "ghost", KEY)]) == 0


def test_an_accepted_caption_makes_its_product_findable_by_what_only_the_caption_says(shop):
    assert lexical_skus("floral kurta") == []  # only the suggestion says it: not searchable yet
    texts = CatalogAdapter().product_texts([shop["c-1"].product_id])
    assert "floral" not in texts[shop["c-1"].product_id]
    set_status(Caption.objects.filter(pk=shop["c-1"].pk), "accepted")
    assert lexical_skus("floral kurta") == ["c-1"]
    assert CatalogAdapter().product_texts([shop["c-1"].product_id])[shop["c-1"].product_id] == \
        "Acme. Apparel > Topwear. women red floral kurta"
    # an edit is accepted with the person's words; the model's words stop matching
    edit(shop["c-1"], "  women maroon paisley   kurta ")
    caption = Caption.objects.get(pk=shop["c-1"].pk)
    assert (caption.text, caption.status, caption.edited, caption.model_key) == \
        ("women maroon paisley kurta", "accepted", True, KEY)
    assert lexical_skus("paisley") == ["c-1"] and lexical_skus("floral") == []
    # rejecting takes it out of search again
    set_status(Caption.objects.filter(pk=caption.pk), "rejected")
    assert lexical_skus("paisley") == []
    with pytest.raises(BadText):
        edit(caption, "   ")


def test_review_decisions_go_through_the_change_path(shop, django_capture_on_commit_callbacks):
    from mmsearch.adapter import catalog_changed

    seen = []

    def listen(sender, product_ids=(), **kwargs):
        seen.append(list(product_ids))

    catalog_changed.connect(listen)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            set_status(Caption.objects.filter(pk__in=[shop["c-1"].pk, shop["c-2"].pk]), "accepted")
    finally:
        catalog_changed.disconnect(listen)
    assert sorted(seen[-1]) == sorted([shop["c-1"].product_id, shop["c-2"].product_id])


def test_rest_review_list_filters_edits_and_bulk(shop, staff_client, api_client):
    listed = api_client.get("/api/v1/captions/", {"status": "suggested", "min_score": "0.15"}).json()
    assert [r["product"] for r in listed["results"]] == ["c-2", "c-3"]
    assert listed["results"][0]["image_url"].startswith("http://testserver/media/images/")
    assert [r["product"] for r in api_client.get("/api/v1/captions/", {"category": "Apparel"}).json()["results"]] == \
        ["c-1", "c-2"]
    c1, c2, c3 = shop["c-1"], shop["c-2"], shop["c-3"]
    # writes are staff only
    assert api_client.post(f"/api/v1/captions/{c1.pk}/accept").status_code == 401
    assert api_client.patch(f"/api/v1/captions/{c1.pk}/", {"text": "x"}, format="json").status_code == 401
    accepted = staff_client.post(f"/api/v1/captions/{c1.pk}/accept").json()
    assert accepted["status"] == "accepted" and lexical_skus("floral") == ["c-1"]
    edited = staff_client.patch(f"/api/v1/captions/{c2.pk}/", {"text": "men black cargo trousers"}, format="json")
    assert edited.status_code == 200
    assert {k: edited.json()[k] for k in ("text", "status", "edited", "model_key")} == \
        {"text": "men black cargo trousers", "status": "accepted", "edited": True, "model_key": KEY}
    assert lexical_skus("cargo") == ["c-2"]
    assert staff_client.post(f"/api/v1/captions/{c3.pk}/reject").json()["status"] == "rejected"
    bulk = staff_client.post("/api/v1/captions/bulk", {"ids": [c1.pk, c3.pk], "status": "accepted"}, format="json").json()
    assert bulk["changed"] == 1 and lexical_skus("green cap") == ["c-3"]  # c-1 was accepted already
    assert [r["product"] for r in api_client.get("/api/v1/captions/", {"edited": "true"}).json()["results"]] == ["c-2"]


@pytest.mark.parametrize("body, message", [
    ({}, "give text"),
    ({"text": ""}, "may not be blank"),
    ({"text": "x" * 501}, "no more than 500 characters"),
    ({"text": "bad\x00text"}, "NUL"),
    ({"status": "maybe"}, "not a valid choice"),
    ({"status": "suggested"}, "not a valid choice"),
    ({"text": "men red shirt", "status": "rejected"}, "an edited caption is accepted"),
])
def test_rest_bad_input_is_a_400_that_changes_nothing(shop, staff_client, body, message):
    caption = shop["c-1"]
    response = staff_client.patch(f"/api/v1/captions/{caption.pk}/", body, format="json")
    assert response.status_code == 400 and message in response.content.decode()
    after = Caption.objects.get(pk=caption.pk)
    assert (after.text, after.status, after.edited) == (caption.text, "suggested", False)


def test_rest_other_bad_requests(shop, staff_client, api_client):
    assert api_client.get("/api/v1/captions/", {"colour": "red"}).status_code == 400  # unknown parameter
    assert api_client.get("/api/v1/captions/", {"category": "Nowhere"}).status_code == 400
    assert staff_client.post("/api/v1/captions/bulk", {"ids": [], "status": "accepted"}, format="json").status_code == 400
    assert staff_client.post("/api/v1/captions/bulk", {"ids": [1], "status": "maybe"}, format="json").status_code == 400
    assert staff_client.post("/api/v1/captions/999999/accept").status_code == 404
    assert staff_client.post("/api/v1/captions/", {"text": "new"}, format="json").status_code == 405  # jobs write them
    assert Caption.objects.filter(status="suggested").count() == 3


def test_caption_job_requests_are_checked(shop, staff_client):
    # no captioner folder: the alias does not exist, and the error says how to get one
    no_captioner = staff_client.post("/api/v1/index-jobs/", {"kind": "captions"}, format="json")
    assert no_captioner.status_code == 400 and "train_captioner" in no_captioner.json()["detail"]
    wrong_role = staff_client.post("/api/v1/index-jobs/", {"kind": "captions", "alias": "embedder"}, format="json")
    assert wrong_role.status_code == 400 and "caption jobs need a captioner alias" in wrong_role.json()["detail"]
    forced = staff_client.post("/api/v1/index-jobs/", {"kind": "captions", "force": True}, format="json")
    assert forced.status_code == 400 and "force" in forced.json()["detail"]


@pytest.fixture
def admin_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("root", "root@example.com", "pw"))
    return client


def test_admin_review_list_accepts_rejects_and_edits_inline(shop, admin_client):
    page = admin_client.get("/admin/catalog/caption/", {"status__exact": "suggested", "score": "0.2-0.3"})
    assert page.status_code == 200
    body = page.content.decode()
    assert "men blue denim jeans" in body and "women red floral kurta" not in body and "<img src=" in body
    assert admin_client.get("/admin/catalog/caption/", {"category_path": "Accessories"}).status_code == 200
    c1, c2, c3 = shop["c-1"], shop["c-2"], shop["c-3"]
    done = admin_client.post("/admin/catalog/caption/", {"action": "accept_captions", "_selected_action": [c1.pk]},
                             follow=True)
    assert "1 captions accepted" in done.content.decode() and lexical_skus("floral") == ["c-1"]
    admin_client.post("/admin/catalog/caption/", {"action": "reject_captions", "_selected_action": [c3.pk]})
    assert Caption.objects.get(pk=c3.pk).status == "rejected"
    # the list's inline edit: a management form with every row of the page (ordered by score, highest first)
    rows = list(Caption.objects.order_by("-score", "id"))
    form = {"form-TOTAL_FORMS": str(len(rows)), "form-INITIAL_FORMS": str(len(rows)), "_save": "Save"}
    for i, row in enumerate(rows):
        form[f"form-{i}-id"] = str(row.pk)
        form[f"form-{i}-text"] = "men indigo selvedge jeans" if row.pk == c2.pk else row.text
    assert admin_client.post("/admin/catalog/caption/", form).status_code == 302
    after = Caption.objects.get(pk=c2.pk)
    assert (after.text, after.status, after.edited) == ("men indigo selvedge jeans", "accepted", True)
    assert Caption.objects.get(pk=c1.pk).edited is False  # unchanged rows are not marked edited
    assert lexical_skus("selvedge") == ["c-2"]
    # an empty edit is refused and stores nothing
    form[f"form-{[r.pk for r in rows].index(c2.pk)}-text"] = "  "
    refused = admin_client.post("/admin/catalog/caption/", form)
    assert refused.status_code == 200 and Caption.objects.get(pk=c2.pk).text == "men indigo selvedge jeans"
    # the product page lists its captions; the Products list can start a caption job (no captioner here: says so)
    assert "men indigo selvedge jeans (accepted)" in admin_client.get(f"/admin/catalog/product/{c2.product_id}/change/").content.decode()
    started = admin_client.post("/admin/catalog/product/", {"action": "suggest_captions",
                                                            "_selected_action": [c1.product_id]}, follow=True)
    assert "train_captioner" in started.content.decode()


def test_the_product_page_shows_accepted_captions_only(shop, client):
    set_status(Caption.objects.filter(pk=shop["c-1"].pk), "accepted")
    assert "Women red floral kurta" in client.get("/p/c-1").content.decode()
    assert "men blue denim jeans" not in client.get("/p/c-2").content.decode().lower()


def test_the_captioner_alias_exists_only_when_its_folder_does(tmp_path):
    import subprocess
    import sys

    def alias_in_fresh_settings(path) -> str:
        code = ("import django, os; os.environ['DJANGO_SETTINGS_MODULE'] = 'mmsearch.settings'; "
                "from django.conf import settings; m = settings.MMSEARCH_MODELS.get('captioner'); "
                "print(m['OPTIONS']['path'] if m else None, m and m['BACKEND'], m and m['OPTIONS']['beam_size'])")
        env = {**__import__("os").environ, "MMSEARCH_CAPTIONER_PATH": str(path), "DEBUG": "1"}
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert alias_in_fresh_settings(tmp_path / "missing").split() == ["None", "None", "None"]
    (tmp_path / "cap").mkdir()
    assert alias_in_fresh_settings(tmp_path / "cap").split() == [
        str(tmp_path / "cap"), "mmsearch.plugins.captioner.TrunkCaptioner", "3"]
