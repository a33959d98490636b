"""The engine on a small real catalog: signals, fusion, filters, facets, photos, caching, model keys."""

from __future__ import annotations

import io

import pytest
from django.http import QueryDict
from PIL import Image

from catalog.models import ProductImage
from mmsearch import plugins
from catalog.facets import price_facets
from mmsearch.search import params, vectors
from mmsearch.search.engine import search
from mmsearch.search.params import SearchError, SearchQuery, SearchUnavailable, parse_params
from mmsearch.search.fusion import Candidate, rrf
from tests.conftest import make_image
from tests.search.conftest import COLOURS

pytestmark = pytest.mark.django_db


def skus(result) -> list[str]:
    return [h.sku for h in result.hits]


def photo(colour: str) -> Image.Image:
    return Image.open(io.BytesIO(make_image(size=(40, 40), color=COLOURS[colour]))).convert("RGB")


def test_rrf_fuses_by_rank_with_weights_and_lists_each_item_once():
    fused = rrf(
        {"a": [Candidate(1, 9.0), Candidate(2, 5.0), Candidate(1, 1.0)], "b": [Candidate(2, 0.9), Candidate(3, 0.1)]},
        {"a": 1.0, "b": 2.0}, k=10,
    )
    assert [f.item_id for f in fused] == [2, 3, 1]  # 1/12 + 2/11 > 2/12 > 1/11
    assert fused[0].parts == {"a": {"rank": 2, "score": 5.0}, "b": {"rank": 1, "score": 0.9}}
    assert fused[2].parts["a"]["rank"] == 1 and fused[2].score == pytest.approx(1 / 11)


def test_price_buckets_have_round_edges_and_count_every_price():
    from decimal import Decimal

    buckets = price_facets([Decimal(p) for p in ("15", "20", "25", "35", "45", "80", "120")])
    assert sum(b["count"] for b in buckets) == 7
    assert buckets[0]["min"] == "0.00" and all(float(b["max"]) - float(b["min"]) == 25 for b in buckets)


def test_lexical_ranks_title_matches_and_skips_inactive_products(shop):
    result = search(SearchQuery(text="cotton kurta", mode="lexical"))
    assert skus(result)[0] == "kurta-red"
    assert "kurta-old" not in skus(result)  # inactive
    assert set(result.hits[0].parts) >= {"lexical"} and result.hits[0].model_key is None
    assert search(SearchQuery(text="jean", mode="lexical")).hits[0].sku == "jeans-blue"  # stemming


def test_trigram_finds_titles_despite_a_typo(shop):
    result = search(SearchQuery(text="kurrta", mode="lexical"))
    assert skus(result)[0] == "kurta-red"
    assert "trigram" in result.hits[0].parts and "lexical" not in result.hits[0].parts


def test_hybrid_fuses_text_and_vectors_and_reports_parts_and_model_key(shop):
    image_key = plugins.get_model("embedder").model_key
    text_key = plugins.get_model("text_embedder").model_key
    result = search(SearchQuery(text="red"))
    assert result.mode == "hybrid"
    assert set(skus(result)[:2]) == {"kurta-red", "tee-red"}
    top = result.hits[0]
    assert {"lexical", "text_vector", "image_vector"} <= set(top.parts)
    assert top.parts["image_vector"]["model_key"] == image_key and top.parts["text_vector"]["model_key"] == text_key
    assert top.model_key == image_key
    assert -1.0 <= top.parts["image_vector"]["score"] <= 1.0
    assert result.hits == sorted(result.hits, key=lambda h: -h.score)
    assert len(set(skus(result))) == len(result.hits)


def test_semantic_mode_uses_only_the_vectors(shop):
    result = search(SearchQuery(text="red", mode="semantic"))
    # "red" names a colour: query understanding adds its list (ranked by the text vectors) and boosts.
    assert set(result.debug["signals"]) == {"text_vector", "image_vector", "understood"}
    assert all(set(h.parts) <= {"text_vector", "image_vector", "understood", "understood_boost"} for h in result.hits)
    assert result.hits[0].sku in {"kurta-red", "tee-red"}
    plain = search(SearchQuery(text="red", mode="semantic", understand=False))
    assert set(plain.debug["signals"]) == {"text_vector", "image_vector"}
    assert all(set(h.parts) <= {"text_vector", "image_vector"} for h in plain.hits)


def test_filters_combine_with_every_mode(shop):
    for mode in params.MODES:
        apparel = search(SearchQuery(text="red cotton", mode=mode, filters={"category": ["Apparel"]}))
        assert apparel.hits and all(h.category.startswith("Apparel/") for h in apparel.hits)  # subtree
        women = search(SearchQuery(text="red cotton", mode=mode, filters={"attr.gender": ["women"]}))
        assert women.hits and set(skus(women)) <= {"kurta-red", "bag-black", "dress-yellow"}
        cheap = search(SearchQuery(text="red cotton", mode=mode, filters={"price_min": ["16"], "price_max": ["30"]}))
        assert cheap.hits and all(16 <= h.price <= 30 for h in cheap.hits)
    # Only accepted tags count: the dress's festive tag is merely suggested.
    festive = search(SearchQuery(text="red cotton yellow", mode="hybrid", filters={"tag": ["occasion:festive"]}))
    assert skus(festive) == ["kurta-red"]


def test_facets_describe_the_filtered_result_set(shop):
    result = search(SearchQuery(text="cotton", mode="lexical"))
    assert set(skus(result)) == {"kurta-red", "shirt-white"}
    cats = {c["value"]: c["count"] for c in result.facets["category"]}
    assert cats["Apparel"] == 2 and cats["Apparel/Topwear"] == 2 and cats["Apparel/Topwear/Kurtas"] == 1
    genders = {v["value"]: v["count"] for v in result.facets["attributes"]["gender"]}
    assert genders == {"Women": 1, "Men": 1}
    assert result.facets["tags"] == {"occasion": [{"value": "festive", "name": "Festive", "count": 1}]}
    assert sum(b["count"] for b in result.facets["price"]) == 2
    narrowed = search(SearchQuery(text="cotton", mode="lexical", filters={"attr.gender": ["Men"]}))
    assert {v["value"] for v in narrowed.facets["attributes"]["gender"]} == {"Men"}


def test_photo_search_scores_a_product_by_its_best_image_once(shop):
    green = search(SearchQuery(image=photo("green")))
    assert green.mode == "semantic" and green.hits[0].sku == "shoes-green"
    green_image = ProductImage.objects.get(product__sku="shoes-green", position=1)
    assert green.hits[0].parts["image_vector"]["image_id"] == green_image.id
    assert green.hits[0].image_url == green_image.file.url  # the matching photo is shown
    black = search(SearchQuery(image=photo("black")))
    assert set(skus(black)[:2]) == {"bag-black", "shoes-green"}
    assert len(skus(black)) == len(set(skus(black)))  # two images, one hit


def test_similar_products_exclude_the_product_itself(shop):
    result = search(SearchQuery(similar_to="kurta-red"))
    assert "kurta-red" not in skus(result)
    assert result.hits[0].sku == "tee-red"  # the other red item
    with pytest.raises(SearchError, match="unknown product"):
        search(SearchQuery(similar_to="nope"))


def test_pages_do_not_overlap(shop):
    first = search(SearchQuery(text="red", limit=3, page=1))
    second = search(SearchQuery(text="red", limit=3, page=2))
    assert len(first.hits) == 3 and first.total == second.total
    assert not set(skus(first)) & set(skus(second))


def test_query_vectors_are_cached_per_model_and_text(shop):
    model = plugins.get_model("text_embedder")
    calls = []
    original = model.embed_texts
    model.embed_texts = lambda texts: calls.append(list(texts)) or original(texts)
    try:
        search(SearchQuery(text="Red  dress"))
        search(SearchQuery(text="red dress", mode="semantic"))
    finally:
        del model.embed_texts
    assert calls == [["red dress"]]


def test_vectors_of_another_model_are_never_mixed_in(shop):
    # The active key no longer matches any configured plugin: the vector signals stay out.
    vectors.activate("embedder", "someone-else:64", 64)
    vectors.activate("text_embedder", "someone-else:32", 32)
    result = search(SearchQuery(text="red"))
    # Understanding's list, without a text model of the active key, ranks by full text: no vectors either.
    assert set(result.debug["signals"]) == {"lexical", "trigram", "understood"}
    assert not [h for h in result.hits if "model_key" in h.parts.get("understood", {})]
    assert set(search(SearchQuery(text="red", understand=False)).debug["signals"]) == {"lexical", "trigram"}
    with pytest.raises(SearchUnavailable):
        search(SearchQuery(text="red", mode="semantic"))
    with pytest.raises(SearchUnavailable):
        search(SearchQuery(image=photo("red")))


@pytest.mark.parametrize(
    "qs, message",
    [
        ("q=", "empty"),
        ("q=" + "x" * 201, "limit is 200"),
        ("q=red&colour=red", "unknown parameter"),
        ("q=red&price_min=cheap", "price_min must be a number"),
        ("q=red&price_max=-1", "non-negative"),
        ("q=red&price_min=5&price_max=1", "above price_max"),
        ("q=red&limit=101", "limit must be between 1 and 100"),
        ("q=red&page=two", "page must be a whole number"),
        ("q=red&mode=fuzzy", "mode must be one of"),
        ("q=red&category=Nowhere", "unknown category"),
        ("q=red&attr.=x", "attribute name is empty"),
    ],
)
def test_bad_parameters_raise_search_errors(shop, qs, message):
    with pytest.raises(SearchError, match=message):
        parse_params(QueryDict(qs))


def test_parse_params_builds_the_query(shop):
    query = parse_params(QueryDict("q=red+kurta&mode=lexical&page=2&limit=5&category=Apparel&attr.colour=Red,Blue&tag=festive"))
    assert (query.text, query.mode, query.page, query.limit) == ("red kurta", "lexical", 2, 5)
    assert query.filters == {"category": ["Apparel"], "attr.colour": ["Red,Blue"], "tag": ["festive"]}
    assert search(query).page == 2


def test_products_with_only_some_words_rank_as_a_lighter_partial_signal(shop):
    result = search(SearchQuery(text="red cotton kurta jeans", mode="lexical"))  # no product has all four words
    assert result.hits and all("lexical" not in h.parts for h in result.hits)
    assert skus(result)[0] == "kurta-red"  # three of the four words
    assert result.hits[0].parts["lexical_partial"]["rank"] == 1
    strict = search(SearchQuery(text="red cotton kurta", mode="lexical"))
    assert "lexical" in strict.hits[0].parts and strict.hits[0].score > result.hits[0].score


def test_paging_past_the_result_cap_is_refused(shop):
    with pytest.raises(SearchError, match="first 1000 results"):
        search(SearchQuery(text="red", page=11, limit=100))
