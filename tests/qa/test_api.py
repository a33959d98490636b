"""POST /api/v1/products/<sku>/ask and the product page's question box, on the real database, with the real
MiniLM text embedder routing and the colour-meter test answerer (tests/qa/plugins.py) reading the images."""

from __future__ import annotations

import json

import pytest
from django.core.cache import cache
from django.test import Client

from qa.models import ImageFeatures, Question
from tests.qa.plugins import ColourMeterAnswerer

pytestmark = pytest.mark.django_db


def ask(client, sku, body, **kw):
    return client.post(f"/api/v1/products/{sku}/ask", data=json.dumps(body) if not isinstance(body, str) else body,
                       content_type="application/json", **kw)


def test_a_visual_question_is_answered_from_the_image_and_logged(qa_shop, colourmeter):
    client = Client()
    r = ask(client, "plain-socks", {"question": "What colour is it?"})
    assert r.status_code == 200, r.content
    data = r.json()
    assert set(data) == {"answer", "confidence", "abstained", "kind", "evidence", "model_key"}
    assert data["answer"] == "Green" and not data["abstained"] and data["kind"] == "colour"
    assert data["confidence"] >= 0.9 and data["model_key"] == "colourmeter:1"
    assert data["evidence"][0]["source"] == "image" and data["evidence"][0]["value"] == "Green"
    row = Question.objects.get()
    assert (row.product.sku, row.question, row.answer, row.abstained, row.kind) == (
        "plain-socks", "What colour is it?", "Green", False, "colour")
    assert row.evidence == data["evidence"] and row.model_key == "colourmeter:1" and row.latency_ms > 0
    # yes / no and a choice, about the same image
    assert ask(client, "plain-socks", {"question": "is it green?"}).json()["answer"] == "Yes"
    assert ask(client, "plain-socks", {"question": "is it red?"}).json()["answer"] == "No"
    assert ask(client, "plain-socks", {"question": "is it blue or green?"}).json()["answer"] == "Green"
    assert Question.objects.count() == 4


def test_the_data_answers_first_and_a_disagreeing_image_is_mentioned(qa_shop, colourmeter):
    client = Client()
    agree = ask(client, "red-shirt", {"question": "what color is this?"}).json()
    assert agree["answer"] == "Red" and agree["confidence"] == 1.0
    assert [e["source"] for e in agree["evidence"]] == ["attribute", "image"]
    assert agree["evidence"][0]["text"] == "colour: Red" and "looks" not in agree["answer"]
    # the blue cap's data says Red: the answer is the data's, and it says the image looks different
    differ = ask(client, "blue-cap", {"question": "what colour is it?"}).json()
    assert differ["answer"].startswith("Red") and "image looks blue" in differ["answer"]
    assert differ["evidence"][0] == {"source": "attribute", "text": "colour: Red", "key": "colour", "value": "Red"}
    assert differ["evidence"][1]["source"] == "image" and differ["evidence"][1]["value"] == "Blue"
    assert ask(client, "blue-cap", {"question": "is it red?"}).json()["answer"].startswith("Yes")


def test_fact_questions_are_answered_from_the_fields_with_the_text_as_evidence(qa_shop, colourmeter):
    client = Client()
    price = ask(client, "red-shirt", {"question": "How much does this cost?"}).json()
    assert price["answer"] == "19.90 EUR" and price["evidence"] == [{"source": "price", "text": "19.90 EUR",
                                                                     "value": "19.90"}]
    assert ask(client, "red-shirt", {"question": "which brand is it?"}).json()["answer"] == "Acme"
    where = ask(client, "plain-socks", {"question": "where is it from?"}).json()
    assert where["answer"] == "Italy" and where["evidence"][0]["text"] == "origin: Italy"
    organic = ask(client, "red-shirt", {"question": "is it organic?"}).json()
    assert organic["kind"] == "description" and not organic["abstained"]
    assert organic["evidence"][0]["source"] == "description"
    assert organic["evidence"][0]["text"] == "Made in Portugal from organic cotton."
    wash = ask(client, "red-shirt", {"question": "can I put it in the washing machine?"}).json()
    assert wash["evidence"][0]["text"] == "Machine washable."


def test_what_it_cannot_know_is_i_dont_know(qa_shop, colourmeter):
    client = Client()
    for sku, question in (("blue-cap", "how much is it?"), ("no-photo", "what colour is it?"),
                          ("no-photo", "is it organic?")):
        data = ask(client, sku, {"question": question}).json()
        assert data["abstained"] and data["answer"] == "I don't know", (sku, question, data)
    assert Question.objects.filter(abstained=True).count() == 3


def test_an_unsure_image_abstains_below_the_threshold(qa_shop, colourmeter, settings):
    from catalog.models import Product
    from catalog.storage import add_image
    from mmsearch.images import check_image
    from tests.qa.conftest import _png

    p = Product.objects.create(sku="purple-hat", title="Hat", attributes={})
    add_image(p, check_image(_png((125, 30, 120))))  # between red and blue
    data = ask(Client(), "purple-hat", {"question": "what colour is it?"}).json()
    assert data["abstained"] and data["answer"] == "I don't know" and data["confidence"] < 0.9
    assert data["evidence"][0]["source"] == "image"  # what the image suggested, unconfirmed


def test_image_features_are_cached_per_image_and_model_key(qa_shop, colourmeter):
    client = Client()
    before = ColourMeterAnswerer.built_features
    ask(client, "plain-socks", {"question": "what colour is it?"})
    ask(client, "plain-socks", {"question": "is it green?"})
    assert ColourMeterAnswerer.built_features == before + 1  # one image pass for both questions
    row = ImageFeatures.objects.get()
    assert row.sha256 == qa_shop["plain-socks"].images.get().sha256 and row.model_key == "colourmeter:1"
    assert [q.feature_cache_hit for q in Question.objects.order_by("created_at")] == [False, True]


@pytest.mark.parametrize("body,problem", [
    ({"question": ""}, "may not be empty"),
    ({"question": "   "}, "may not be empty"),
    ({"question": "x" * 301}, "the limit is 300"),
    ({"question": 42}, "must be text"),
    ({"question": None}, "must be text"),
    ({"question": ["what colour?"]}, "must be text"),
    ({"question": "what\x00colour"}, "NUL"),
    ({}, "is required"),
    ({"question": "hi", "sku": "x"}, "unknown field"),
    (["question"], "JSON object"),
])
def test_bad_questions_are_400_and_change_nothing(qa_shop, colourmeter, body, problem):
    r = ask(Client(), "red-shirt", body)
    assert r.status_code == 400 and problem in r.json()["detail"], r.content
    assert not Question.objects.exists()


def test_bad_json_and_unknown_products(qa_shop, colourmeter):
    client = Client()
    assert ask(client, "red-shirt", "{not json").status_code == 400
    r = ask(client, "no-such-sku", {"question": "what colour is it?"})
    assert r.status_code == 404 and "no-such-sku" in r.json()["detail"]
    assert not Question.objects.exists()


def test_without_an_answerer_the_api_says_so(qa_shop, settings):
    from mmsearch import plugins

    settings.MMSEARCH_MODELS = {k: v for k, v in settings.MMSEARCH_MODELS.items() if k != "answerer"}
    plugins.reset()
    r = ask(Client(), "red-shirt", {"question": "what colour is it?"})
    assert r.status_code == 503 and "answerer" in r.json()["detail"]
    page = Client().get("/p/red-shirt").content.decode()
    assert "not enabled" in page and "disabled" in page


def test_asking_is_throttled_per_client(qa_shop, colourmeter, monkeypatch):
    from rest_framework.throttling import ScopedRateThrottle

    from qa.api import AskView

    assert ScopedRateThrottle in AskView.throttle_classes
    cache.clear()
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {**ScopedRateThrottle.THROTTLE_RATES, "ask": "2/min"})
    client = Client()
    codes = [ask(client, "red-shirt", {"question": "what colour is it?"}).status_code for _ in range(4)]
    assert codes == [200, 200, 429, 429]
    assert Question.objects.count() == 2
    other = Client(REMOTE_ADDR="10.1.2.3")  # another client has its own allowance
    assert ask(other, "red-shirt", {"question": "what colour is it?"}).status_code == 200
    page = client.post("/p/red-shirt/ask", {"question": "is it red?"}, HTTP_X_FRAGMENT="1")
    assert page.status_code == 429 and "Too many questions" in page.content.decode()


def test_the_product_page_question_box_answers(qa_shop, colourmeter):
    client = Client()
    page = client.get("/p/red-shirt").content.decode()
    assert 'action="/p/red-shirt/ask"' in page and "not enabled" not in page and "qa/ask.js" in page
    frag = client.post("/p/red-shirt/ask", {"question": "what colour is it?"}, HTTP_X_FRAGMENT="1")
    html = frag.content.decode()
    assert frag.status_code == 200 and "<html" not in html
    assert "<strong>Red</strong>" in html and "very sure" in html and "colour: Red" in html
    unknown = client.post("/p/blue-cap/ask", {"question": "how much is it?"}, HTTP_X_FRAGMENT="1").content.decode()
    assert "I don't know." in unknown and "abstained" in unknown
    whole = client.post("/p/red-shirt/ask", {"question": "is it red?"})  # without JavaScript: a whole page
    assert whole.status_code == 200 and "<html" in whole.content.decode() and "<strong>Yes</strong>" in whole.content.decode()
    bad = client.post("/p/red-shirt/ask", {"question": ""}, HTTP_X_FRAGMENT="1")
    assert bad.status_code == 400 and "may not be empty" in bad.content.decode()
    assert client.post("/p/nothing-here/ask", {"question": "hi"}).status_code == 404


def test_the_ask_endpoint_is_in_the_openapi_schema(db):
    schema = Client().get("/api/v1/schema/", HTTP_ACCEPT="application/json").json()
    op = schema["paths"]["/api/v1/products/{sku}/ask"]["post"]
    assert {"200", "400", "404"} <= set(op["responses"])
    request = op["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert "question" in schema["components"]["schemas"][request]["properties"]
    answer = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert {"answer", "confidence", "abstained", "evidence", "model_key"} <= set(
        schema["components"]["schemas"][answer]["properties"])
    assert not any(path.startswith("/p/") for path in schema["paths"])


def test_admins_correct_answers_in_the_log(qa_shop, colourmeter, admin_client):
    ask(Client(), "blue-cap", {"question": "how much is it?"})
    q = Question.objects.get()
    assert admin_client.get("/admin/qa/question/").status_code == 200
    r = admin_client.post(f"/admin/qa/question/{q.pk}/change/", {"corrected_answer": " 12 EUR "})
    assert r.status_code == 302
    q.refresh_from_db()
    assert q.corrected_answer == "12 EUR" and q.corrected_by.is_superuser and q.corrected_at is not None
    assert q.answer == "I don't know"  # the log keeps what the shopper was told


def test_corrected_answers_become_training_questions(qa_shop, colourmeter, tmp_path):
    from django.core.management import call_command

    from mmsearch.training.qa import questions as Q
    from mmsearch.training.qa.trainer import answered_questions
    from mmsearch.training.data import Product

    client = Client()
    ask(client, "plain-socks", {"question": "is it blue?"})
    ask(client, "plain-socks", {"question": "what colour is it?"})
    Question.objects.filter(question="is it blue?").update(corrected_answer="No")
    out = tmp_path / "answers.jsonl"
    call_command("export_answers", "--out", str(out))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == [{"sku": "plain-socks", "question": "is it blue?", "answer": "No"}]
    vocab = Q.Vocabulary({"colour": {"Red": 1, "Green": 1, "Blue": 1}})
    product = Product("plain-socks", "Socks", "", {}, ())
    assert answered_questions([str(out)], [product], vocab) == [(0, Q.QA("is it blue?", "no", "yes_no", "colour", ("Blue",)))]
