"""Image-text match scores (mmsearch.training.matching): corruption, scores, evaluation and the CSV report, on
catalogs of solid-colour images whose every match is known (the ColourEmbedder test plugin and the real
HashingEmbedder, which maps colour words onto the colour's histogram cell)."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings

from mmsearch import plugins
from mmsearch.plugins.hashing import _COLOURS, HashingEmbedder
from mmsearch.training import data as D
from mmsearch.training import matching
from mmsearch.training import metrics as M
from tests.training.plugins import ColourEmbedder

HASHING = {"embedder": {"BACKEND": "mmsearch.plugins.hashing.HashingEmbedder", "OPTIONS": {"dim": 64}}}
KINDS = ("Shirts", "Caps", "Shoes")


@pytest.fixture
def models():
    """Install MMSEARCH_MODELS for the test (built afresh), e.g. models(HASHING)."""
    plugins.reset()
    stack = []

    def use(value):
        o = override_settings(MMSEARCH_MODELS=value)
        o.enable()
        stack.append(o)
        plugins.reset()

    yield use
    for o in reversed(stack):
        o.disable()
    plugins.reset()


@pytest.fixture
def rainbow(colour_catalog):
    """12 products, each of its own colour (HashingEmbedder's 12 colour words), article types in turn."""
    rows = []
    for i, (name, rgb) in enumerate(_COLOURS.items()):
        kind = KINDS[i % 3]
        rows.append({"sku": f"p{i:02d}", "title": f"Acme {name.title()} {kind[:-1]}", "category": f"Apparel/{kind}",
                     "attributes": {"colour": name.title(), "article_type": kind},
                     "images": [colour_catalog.png(f"{name}.png", rgb)]})
    return colour_catalog.products("products.jsonl", rows)


def vectors_of(embedder, products, **kwargs):
    return matching.product_vectors(embedder, products, **kwargs)


# --- metrics ---------------------------------------------------------------------------------------------------
def test_roc_auc_precision_and_threshold_by_hand():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.5])
    positive = np.array([1, 0, 1, 0, 1, 0], dtype=bool)
    # Positive-over-negative pairs: 0.9 beats 3, 0.7 beats 2, 0.5 ties one (half) = 5.5 of 9.
    assert M.roc_auc(scores, positive) == pytest.approx(5.5 / 9)
    assert M.roc_auc(-scores, ~positive) == pytest.approx(5.5 / 9)
    assert M.precision_recall_at(scores, positive, 0.7) == {"threshold": 0.7, "flagged": 3, "precision": 2 / 3,
                                                            "recall": 2 / 3}
    assert M.precision_recall_at(scores, positive, 2.0)["precision"] is None
    # Precision >= 0.6 holds down to 0.7 (2 of 3) but not at 0.5 (3 of 6): the lowest such threshold is 0.7.
    assert M.threshold_for_precision(scores, positive, 0.6) == 0.7
    assert M.threshold_for_precision(scores, positive, 1.0) == 0.9
    assert M.threshold_for_precision(scores, np.zeros(6, bool), 0.5) is None
    with pytest.raises(ValueError, match="both positive and negative"):
        M.roc_auc(scores, np.ones(6, bool))


# --- corruption ------------------------------------------------------------------------------------------------
def test_corruption_is_reproducible_for_a_seed_and_swaps_in_pairs_of_different_products(rainbow):
    products = D.load_products(rainbow)
    original = [p.title for p in products]
    a = matching.corrupt(products, 0.3, seed=7)
    b = matching.corrupt(products, 0.3, seed=7)
    assert [p.title for p in a.products] == [p.title for p in b.products]
    assert np.array_equal(a.partner, b.partner)
    others = {tuple(matching.corrupt(products, 0.3, seed=s).partner) for s in range(8)}
    assert len(others) > 1  # the seed decides which products are swapped
    assert [p.title for p in products] == original  # the catalog itself is untouched
    swapped = np.flatnonzero(a.corrupted)
    assert len(swapped) == 4  # 30 % of 12 products, in 2 pairs
    for i in swapped:
        j = a.partner[i]
        assert a.partner[j] == i
        assert a.products[i].title == products[j].title and a.products[i].images == products[i].images
        assert matching.kind_of(products[i]) != matching.kind_of(products[j])
    for i in np.flatnonzero(~a.corrupted):
        assert a.products[i] == products[i]
    images = matching.corrupt(products, 0.3, seed=7, kind="image")
    assert np.array_equal(images.partner, a.partner)
    for i in swapped:
        assert images.products[i].images == products[a.partner[i]].images
        assert images.products[i].title == products[i].title
    with pytest.raises(matching.MatchingError, match="fraction"):
        matching.corrupt(products, 0, seed=1)
    with pytest.raises(matching.MatchingError, match="corruption kind 'sku'"):
        matching.corrupt(products, 0.1, seed=1, kind="sku")


def test_products_of_the_same_kind_and_colour_are_never_paired(colour_catalog):
    rows = [{"sku": f"s{i}", "title": f"Acme Red Shirt {i}", "category": "Apparel/Shirts",
             "attributes": {"colour": "Red", "article_type": "Shirts"},
             "images": [colour_catalog.png(f"{i}.png", (200, 10, 10))]} for i in range(4)]
    rows.append({**rows[0], "sku": "b", "title": "Acme Blue Shirt", "attributes": {"colour": "Blue",
                                                                                      "article_type": "Shirts"}})
    products = D.load_products(colour_catalog.products("same.jsonl", rows))
    c = matching.corrupt(products, 1.0, seed=3)
    assert c.corrupted.sum() == 2  # only one pair can differ: the blue shirt and one red one
    assert c.corrupted[4]


# --- scores ----------------------------------------------------------------------------------------------------
def test_cosine_and_csls_by_hand():
    images = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    texts = np.array([[1, 0, 0], [0.6, 0.8, 0], [0, 0, 1]], dtype=np.float32)
    s = matching.scores(images, texts, k=2)
    assert s["cosine"] == pytest.approx([1.0, 0.8, 1.0])
    # r_image: mean of each image's 2 best texts; r_text: each text's 2 best images.
    r_img = np.array([(1 + 0.6) / 2, (0.8 + 0) / 2, (1 + 0) / 2])
    r_txt = np.array([(1 + 0) / 2, (0.8 + 0.6) / 2, (1 + 0) / 2])
    assert s["csls"] == pytest.approx(2 * s["cosine"] - r_img - r_txt)
    with pytest.raises(matching.MatchingError, match="2 image rows against 3"):
        matching.scores(images[:2], texts)


@pytest.mark.parametrize("score", matching.SCORES)
@pytest.mark.parametrize("embedder", [ColourEmbedder(), HashingEmbedder(dim=64)], ids=["colour", "hashing"])
def test_the_filter_ranks_a_swapped_pair_below_its_true_pair(rainbow, embedder, score):
    products = D.load_products(rainbow)
    if isinstance(embedder, ColourEmbedder):  # it knows three colour words: keep the products it can tell apart
        products = [p for p in products if p.attributes["colour"] in ("Red", "Green", "Blue")]
    clean = vectors_of(embedder, products)
    corrupted = matching.corrupt(products, 2 / len(products), seed=1)
    (i, j) = np.flatnonzero(corrupted.corrupted)
    img, txt = corrupted.sources()
    true_pair = matching.scores(clean.images, clean.texts)[score]
    swapped = matching.scores(clean.images[img], clean.texts[txt])[score]
    # Each swapped product scores below its own true pair, and the two are the catalog's two worst matches.
    assert swapped[i] < true_pair[i] and swapped[j] < true_pair[j]
    assert set(np.argsort(swapped)[:2]) == {i, j}
    # The same numbers when the corrupted copy is embedded from scratch (the sources are what was embedded).
    again = vectors_of(embedder, corrupted.products)
    assert matching.scores(again.images, again.texts)[score] == pytest.approx(swapped, abs=1e-5)


def test_product_vectors_average_several_images_and_read_the_chosen_text(colour_catalog, tmp_path):
    rows = [{"sku": "two", "title": "Red Shirt", "category": "Apparel/Shirts", "attributes": {"colour": "Blue"},
             "images": [colour_catalog.png("r.png", (255, 0, 0)), colour_catalog.png("g.png", (0, 255, 0))]},
            {"sku": "one", "title": "Blue Shirt", "category": "Apparel/Shirts", "attributes": {"colour": "Blue"},
             "images": ["images/g.png"]}]
    products = D.load_products(colour_catalog.products("two.jsonl", rows))
    v = vectors_of(ColourEmbedder(), products, cache_dir=tmp_path / "cache")
    assert v.images[0] == pytest.approx([2 ** -0.5, 2 ** -0.5, 0], abs=1e-6)
    assert v.texts[0] == pytest.approx([1, 0, 0])
    assert v.score_key("cosine") == "match:cosine:title:test-colour:v1"
    full = vectors_of(ColourEmbedder(), products, text="product")  # "Red Shirt. Apparel > Shirts. colour: Blue"
    assert full.texts[0] == pytest.approx([2 ** -0.5, 0, 2 ** -0.5], abs=1e-6)
    assert list((tmp_path / "cache").glob("imagevec-*.npy"))  # image vectors cached as `evaluate` caches them
    with pytest.raises(matching.MatchingError, match="text='sku'"):
        vectors_of(ColourEmbedder(), products, text="sku")


# --- evaluate_matching -----------------------------------------------------------------------------------------
def test_evaluate_matching_reports_auc_precision_recall_per_score(models, rainbow, tmp_path):
    models(HASHING)
    out = tmp_path / "eval.json"
    stdout = io.StringIO()
    call_command("evaluate_matching", "--data", str(rainbow), "--json", str(out), "--seed", "3", "--top", "5",
                 "--no-progress", stdout=stdout)
    report = json.loads(out.read_text())
    assert report["model_key"] == "hashing:64:0"
    assert set(report["by_text"]) == {"title", "product"}
    title = report["by_text"]["title"]
    assert set(title["runs"]) == {"title@0.1", "title@0.3", "image@0.1", "image@0.3"}
    for run in title["runs"].values():
        assert set(run["scores"]) == set(matching.SCORES)
        for s in run["scores"].values():
            # Every product has its own colour: every swap is visible, and every swapped product ranks last.
            assert s["roc_auc_all"] == 1.0
            assert set(s) >= {"roc_auc", "threshold", "precision", "recall", "flagged"}
    assert title["runs"]["title@0.3"]["corrupted"] == 4
    assert title["threshold"]["fitted_on"] == "title@0.1"
    assert len(title["top_mismatches"]) == 5 and {"sku", "title", "cosine", "csls"} <= set(title["top_mismatches"][0])
    assert "title title@0.3 (4 swapped): cosine AUC" in stdout.getvalue()
    # Reproducible: the same seed gives the same report.
    again = tmp_path / "again.json"
    call_command("evaluate_matching", "--data", str(rainbow), "--json", str(again), "--seed", "3", "--top", "5",
                 "--no-progress", stdout=io.StringIO())
    assert json.loads(again.read_text()) == report


def test_evaluate_matching_bad_input_is_one_line(models, rainbow, tmp_path):
    models(HASHING)
    out = str(tmp_path / "e.json")
    for args, message in [
        (["--data", str(tmp_path / "nope.jsonl")], "no such file"),
        (["--data", str(rainbow), "--fraction", "1.5"], r"--fraction 1.5: must be in \(0, 1\]"),
        (["--data", str(rainbow), "--target-precision", "1"], "must be between 0 and 1"),
        (["--data", str(rainbow), "--model", "nothing"], "--model nothing: .*neither an alias"),
    ]:
        with pytest.raises(CommandError, match=message):
            call_command("evaluate_matching", *args, "--json", out, "--no-progress")


# --- match_report ----------------------------------------------------------------------------------------------
def read_csv(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_match_report_writes_one_row_per_product_worst_first(models, colour_catalog, tmp_path):
    c = colour_catalog
    rows = [
        {"sku": "red", "title": "Red Shirt", "images": [c.png("r.png", (230, 10, 10))]},
        {"sku": "green", "title": "Green Shirt", "images": [c.png("g.png", (10, 230, 30))]},
        {"sku": "wrong", "title": "Blue Shirt", "images": [c.png("y.png", (200, 200, 10))]},  # a yellow photo
        {"sku": "no-image", "title": "Blue Cap"},  # nothing to match: left out
    ]
    products = c.products("tiny.jsonl", rows)
    models({"embedder": {"BACKEND": "tests.training.plugins.ColourEmbedder", "OPTIONS": {}},
            "captioner": {"BACKEND": "tests.training.plugins.ColourCaptioner", "OPTIONS": {}}})
    out = tmp_path / "report.csv"
    stdout = io.StringIO()
    call_command("match_report", str(products), "--csv", str(out), "--score", "cosine", "--no-progress",
                 stdout=stdout)
    report = read_csv(out)
    assert list(report[0]) == list(matching.REPORT_COLUMNS)
    assert [r["sku"] for r in report] == ["wrong", "green", "red"]  # yellow vs blue: cosine 0.035; then 0.990, 0.998
    assert [r["rank"] for r in report] == ["1", "2", "3"]
    assert float(report[0]["score"]) == pytest.approx(10 / np.sqrt(2 * 200 ** 2 + 10 ** 2), abs=1e-5)
    assert float(report[2]["score"]) == pytest.approx(230 / np.sqrt(230 ** 2 + 2 * 10 ** 2), abs=1e-5)
    assert report[0]["model_key"] == "match:cosine:title:test-colour:v1"
    assert [r["caption"] for r in report] == ["a red product", "a green product", "a red product"]
    assert report[0]["caption_model_key"] == "test-colour-captioner:v1"
    assert "wrote 3 products" in stdout.getvalue()

    # Default score (csls) and no captions: same worst product, empty caption columns.
    assert {r["flagged"] for r in report} == {""}  # no threshold given

    # Default score (csls), a threshold, no captions: same worst product, flagged; empty caption columns.
    stdout = io.StringIO()
    call_command("match_report", str(products), "--csv", str(out), "--no-captions", "--threshold", "0",
                 "--no-progress", stdout=stdout)
    report = read_csv(out)
    assert report[0]["sku"] == "wrong" and report[0]["model_key"].startswith("match:csls:title:")
    assert [r["flagged"] for r in report] == ["True", "False", "False"] and "1 flagged" in stdout.getvalue()
    assert float(report[0]["score"]) < 0 < float(report[1]["score"])
    assert {r["caption"] for r in report} == {""}


def test_match_report_runs_with_the_default_settings(rainbow, tmp_path):
    out = tmp_path / "r.csv"
    call_command("match_report", str(rainbow), "--csv", str(out), "--no-progress", stdout=io.StringIO())
    report = read_csv(out)
    assert len(report) == 12 and len({r["sku"] for r in report}) == 12
    scores = [float(r["score"]) for r in report]
    assert scores == sorted(scores)


def test_match_report_bad_input_is_one_line(models, colour_catalog, rainbow, tmp_path):
    models(HASHING)
    bad = colour_catalog.root / "bad.jsonl"
    bad.write_text('{"sku": "a", "title": "x", "images": []}\n{not json\n')
    missing_image = colour_catalog.products("missing.jsonl", [{"sku": "a", "title": "x", "images": ["images/no.png"]}])
    out = str(tmp_path / "r.csv")
    for args, message in [
        ([str(tmp_path / "nope.jsonl"), "--csv", out], "nope.jsonl: no such file"),
        ([str(bad), "--csv", out], r"bad.jsonl:2: bad JSON"),
        ([str(missing_image), "--csv", out], "image images/no.png not found"),
        ([str(rainbow), "--csv", str(tmp_path / "no" / "r.csv")], "give a file path in an existing folder"),
        ([str(rainbow)], "nothing to do"),
        ([str(rainbow), "--csv", out, "--model", "gone"], "--model gone"),
        ([str(rainbow), "--csv", out, "--threads", "0"], "--threads 0"),
        ([str(rainbow), "--csv", out, "--threshold", "nan"], "--threshold nan: must be a finite number"),
    ]:
        with pytest.raises(CommandError, match=message) as err:
            call_command("match_report", *args, "--no-progress", stdout=io.StringIO())
        assert "\n" not in str(err.value)
    assert not (tmp_path / "r.csv").exists()  # nothing written by a failed run


# --- the ITM head ----------------------------------------------------------------------------------------------
def test_hard_negatives_are_other_titles_and_mostly_near_misses():
    import torch

    from mmsearch.training.itm import hard_negatives

    texts = torch.nn.functional.normalize(torch.tensor([[1.0, 0, 0], [0.99, 0.14, 0], [0, 1.0, 0], [0, 0, 1.0],
                                                        [1.0, 0, 0]]), dim=-1)
    title = torch.tensor([0, 1, 2, 3, 0])  # rows 0 and 4 share a title
    same = title[:, None] == title[None, :]
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([hard_negatives(texts, same, 0.05, gen) for _ in range(200)])
    assert not (draws == torch.arange(5)).any()
    assert not ((draws[:, 0] == 4) | (draws[:, 4] == 0)).any()  # never a product of the same title
    assert (draws[:, 0] == 1).float().mean() > 0.95  # row 1 is row 0's near miss


def test_the_itm_head_learns_to_separate_swapped_pairs_and_round_trips(tmp_path):
    import torch

    from mmsearch.training import itm

    rng = np.random.default_rng(0)
    n, kinds = 96, 6
    kind = np.arange(n) % kinds
    grids = rng.normal(0, 0.1, (n, 4, 1280 + 6)).astype(np.float16)
    grids[np.arange(n), :, 1280 + kind] += 1.0  # the kind is written in the cell colours
    texts = rng.normal(0, 0.05, (n, 16)).astype(np.float32)
    texts[np.arange(n), kind] += 1.0
    titles = [f"kind {k} item {i}" for i, k in enumerate(kind)]
    torch.set_num_threads(1)
    model, history = itm.train_head(grids, texts, titles, cfg=itm.ITMConfig(tokens=4, text_dim=16, width=32, heads=2,
                                                                           layers=1, dropout=0.0),
                                    epochs=40, batch_size=16, lr=3e-3, log=lambda m: None, progress=False)
    assert history[-1]["loss"] < history[0]["loss"]
    swapped = np.roll(np.arange(n), 1)  # every text moved to the next product: another kind
    positive = itm.head_scores(model, grids, texts)
    negative = itm.head_scores(model, grids, texts[swapped])
    assert M.roc_auc(np.r_[positive, negative], np.r_[np.ones(n, bool), np.zeros(n, bool)]) > 0.95
    key = itm.save_head(tmp_path / "head", model, {"arch": "x", "identity": "t"}, "sentence:test", {"note": "x"})
    assert key.startswith("itm:local:")
    loaded, config = itm.load_head(tmp_path / "head")
    assert config["text_model_key"] == "sentence:test" and config["head"]["width"] == 32
    assert itm.head_scores(loaded, grids, texts) == pytest.approx(positive, abs=1e-5)
    with pytest.raises(FileNotFoundError, match="not an ITM head folder"):
        itm.load_head(tmp_path)


def test_train_matcher_then_evaluate_with_the_itm_score(rainbow, tmp_path):
    """The real pieces: the package's EfficientNet-Lite0 trunk grids and the MiniLM text_embedder."""
    head = tmp_path / "head"
    exclude = rainbow.parent / "exclude.jsonl"
    exclude.write_text(rainbow.read_text().splitlines()[0] + "\n")
    out = io.StringIO()
    call_command("train_matcher", "--data", str(rainbow), "--exclude", str(exclude), "--out", str(head),
                 "--epochs", "1", "--batch-size", "4", "--cache-dir", str(tmp_path / "cache"), "--no-progress",
                 stdout=out)
    assert "11 products (1 skus excluded)" in out.getvalue()
    card = json.loads((head / "model_card.json").read_text())
    assert card["products"] == 11 and len(card["history"]) == 1
    report = tmp_path / "eval.json"
    call_command("evaluate_matching", "--data", str(rainbow), "--json", str(report), "--itm", str(head),
                 "--text", "title", "--cache-dir", str(tmp_path / "cache"), "--no-progress", stdout=io.StringIO())
    body = json.loads(report.read_text())
    assert body["itm"] == card["model_key"]
    run = body["by_text"]["title"]["runs"]["title@0.3"]["scores"]
    assert set(run) == {"cosine", "csls", "itm"} and 0 <= run["itm"]["roc_auc_all"] <= 1
    assert "itm" in body["by_text"]["title"]["top_mismatches"][0]
    with pytest.raises(CommandError, match="not an ITM head folder"):
        call_command("evaluate_matching", "--data", str(rainbow), "--json", str(report), "--itm", str(tmp_path),
                     "--no-progress")
    with pytest.raises(CommandError, match="fewer than --batch-size 128"):
        call_command("train_matcher", "--data", str(rainbow), "--out", str(head), "--no-progress")
