"""Bad input to search is a 4xx naming the parameter, a broken model a 503, and internals stay internal."""

from __future__ import annotations

import pytest
from django.core.cache import cache
from django.test import Client

from mmsearch import plugins
from mmsearch.plugins.hashing import HashingEmbedder
from tests.search.conftest import MODELS

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("params, message", [
    ({"q": "red\x00kurta"}, "q: contains a NUL character"),
    ({"q": "red", "category": "Apparel\x00"}, "category: contains a NUL character"),
    ({"q": "red", "attr.colour": "Re\x00d"}, "attr.colour: contains a NUL character"),
    ({"q": "red", "attr.col\x00our": "Red"}, "parameter name: contains a NUL character"),
    ({"q": "red", "mode": "hy\x00brid"}, "mode: contains a NUL character"),
    ({"q": "red", "price_min": "1e200000"}, "price_min must be at most 9999999999.99"),
    ({"q": "red", "price_max": "NaN"}, "price_max must be a non-negative number"),
    ({"q": "red", "page": "9" * 5000}, "page must be a whole number"),
    ({"q": "red", "category": "x" * 600}, "category: is 600 characters long; the limit is 500"),
])
def test_bad_search_parameters_are_400s_naming_the_parameter(shop, api_client, params, message):
    response = api_client.get("/api/v1/search", params)
    assert response.status_code == 400, response.content
    assert message in response.json()["detail"]


def test_invalid_utf8_and_lone_surrogates_never_reach_the_database(shop, client):
    from mmsearch.search.params import SearchError, parse_params

    with pytest.raises(SearchError, match="q: contains a lone surrogate"):
        parse_params({"q": "red\ud800"})
    # Bytes that are not UTF-8 arrive as U+FFFD (Django's decoding): an ordinary query, no error.
    assert client.get("/api/v1/search?q=red%ED%A0%80%FF").status_code == 200


def test_bad_web_search_input_is_a_400_page(shop, client):
    response = client.get("/search", {"q": "red\x00kurta"})
    assert response.status_code == 400
    assert "contains a NUL character" in response.content.decode()


@pytest.mark.parametrize("url", ["/api/v1/products/kurta%00red/similar", "/p/kurta%00red", "/p/kurta%01red"])
def test_a_control_character_in_a_sku_url_is_a_404(shop, client, url):
    assert client.get(url).status_code == 404


class BrokenEmbedder(HashingEmbedder):
    """Builds and keeps the hashing model's key (so it is the active one), but every call fails."""

    def embed_texts(self, texts):
        raise RuntimeError("weights file is corrupt")

    def embed_images(self, images):
        raise RuntimeError("weights file is corrupt")


def test_a_failing_model_is_a_503_with_a_message_and_the_process_goes_on(shop, api_client, settings, caplog):
    settings.MMSEARCH_MODELS = {**MODELS, "text_embedder": {**MODELS["text_embedder"],
                                                            "BACKEND": "tests.search.test_hardening.BrokenEmbedder"}}
    plugins.reset()
    cache.clear()
    response = api_client.get("/api/v1/search", {"q": "red kurta"})
    assert response.status_code == 503
    assert "the text_embedder model hashing:32:1 failed (RuntimeError: weights file is corrupt)" in response.json()["detail"]
    assert "hashing:32:1 failed" in caplog.text  # logged with its traceback
    # The same process answers what does not need that model.
    assert api_client.get("/api/v1/search", {"q": "red kurta", "mode": "lexical"}).status_code == 200


def test_debug_is_for_staff_tokens_or_a_setting(shop, api_client, settings, django_user_model):
    from rest_framework.authtoken.models import Token

    settings.MMSEARCH_SEARCH_DEBUG = False
    assert "debug" not in api_client.get("/api/v1/search", {"q": "red"}).json()
    staff = django_user_model.objects.create_user("ops", password="x", is_staff=True)
    shopper = django_user_model.objects.create_user("shopper", password="x")
    for user, shown in ((staff, True), (shopper, False)):
        token = Token.objects.create(user=user)
        data = Client().get("/api/v1/search", {"q": "red"}, HTTP_AUTHORIZATION=f"Token {token.key}").json()
        assert ("debug" in data) is shown
    settings.MMSEARCH_SEARCH_DEBUG = True
    assert "signals" in api_client.get("/api/v1/search", {"q": "red"}).json()["debug"]


def test_search_and_token_endpoints_are_throttled(shop, monkeypatch):
    from rest_framework.throttling import ScopedRateThrottle

    from mmsearch.search.api import SearchView

    assert ScopedRateThrottle in SearchView.throttle_classes  # on unless MMSEARCH_THROTTLE=0
    cache.clear()
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {**ScopedRateThrottle.THROTTLE_RATES, "search": "3/min", "token": "2/min"})
    client = Client()
    codes = [client.get("/api/v1/search", {"q": "red"}).status_code for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    assert "throttled" in client.get("/api/v1/search", {"q": "red"}).json()["detail"].lower()
    tries = [client.post("/api/v1/auth/token", {"username": "x", "password": "y"}).status_code for _ in range(3)]
    assert tries == [400, 400, 429]
