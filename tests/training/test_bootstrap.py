"""Bootstrapped training (train_embedder --bootstrap, mmsearch.training.bootstrap) end to end on a tiny catalog of
solid-colour images: corrupted titles, captions, the filter, the final model and its card."""

from __future__ import annotations

import json

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from mmsearch.training import data as D
from mmsearch.training.bootstrap import surviving_texts
from mmsearch.training.trainer import TrainConfig, Trainer, read_texts, write_texts

COLOURS = {"Red": (220, 20, 20), "Green": (20, 200, 40), "Blue": (30, 40, 220), "Yellow": (230, 220, 30)}
KINDS = {"Shirts": (12, 16), "Caps": (14, 14), "Socks": (16, 12)}


@pytest.fixture
def shop(colour_catalog):
    """36 products: 4 colours x 3 kinds x 3 brands, one solid-colour image each."""
    c = colour_catalog
    rows = []
    for colour, rgb in COLOURS.items():
        for kind, size in KINDS.items():
            for b, brand in enumerate(("Acme", "Bolt", "Cove")):
                sku = f"{colour}-{kind}-{brand}".lower()
                shade = tuple(max(0, v - 12 * b) for v in rgb)
                rows.append({"sku": sku, "title": f"{brand} {colour} {kind[:-1]}", "category": f"Apparel/{kind}",
                             "attributes": {"colour": colour, "article_type": kind},
                             "images": [c.png(f"{sku}.png", shade, size)]})
    return c.products("products.jsonl", rows)


def embedder(products, out, cache, *extra):
    call_command("train_embedder", "--data", str(products), "--out", str(out), "--arch", "effl0-128-bag",
                 "--cached-views", "1", "--batch-size", "8", "--lr", "3e-3", "--epochs", "30", "--holdout", "0",
                 "--holdout-products", "0", "--text-mix", "0", "1", "0", "--facet-weight", "0",
                 "--cache-dir", str(cache), "--checkpoint-every", "0", "--no-progress", *extra)


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_bootstrap_captions_filters_and_retrains_on_what_survives(shop, tmp_path):
    cache = tmp_path / "cache"
    noisy = tmp_path / "noisy"
    embedder(shop, noisy, cache, "--corrupt-titles", "0.3", "--seed", "3")
    card = json.loads((noisy / "model_card.json").read_text())
    assert card["corruption"] == {"kind": "title", "fraction": 0.3, "seed": 3, "training_products": 36,
                                  "corrupted": 10, "products_file": "training-products.jsonl"}
    trained_on = D.load_products(noisy / "training-products.jsonl")
    catalog = {p.sku: p for p in D.load_products(shop)}
    swapped = {p.sku for p in trained_on if p.title != catalog[p.sku].title}
    assert len(swapped) == 10
    assert read_texts(noisy / "training-texts.jsonl") == {p.sku: [p.title] for p in trained_on}

    # The captioner the bootstrap uses is trained on the same noisy products.
    cap = tmp_path / "captioner"
    call_command("train_captioner", "--data", str(noisy / "training-products.jsonl"), "--out", str(cap),
                 "--preset", "tiny", "--epochs", "3", "--batch-size", "4", "--holdout", "0", "--cache-dir",
                 str(cache), "--checkpoint-every", "0", "--no-progress")

    out = tmp_path / "boot"
    embedder(shop, out, cache, "--corrupt-titles", "0.3", "--seed", "3", "--bootstrap", "--captioner", str(cap),
             "--top-p", "0.9", "--first-epochs", "30", "--folds", "2")
    card = json.loads((out / "model_card.json").read_text())
    boot = card["bootstrap"]
    assert card["training"]["finished"] and card["corruption"]["corrupted"] == 10
    assert boot["settings"]["top_p"] == 0.9 and boot["settings"]["folds"] == 2
    assert boot["settings"]["filter_score"] == "csls" and boot["settings"]["captioner"] == str(cap)
    assert boot["captioner"]["model_key"].endswith(":topp0.9-t1-s3")
    assert len(boot["filter"]["thresholds"]) == 2
    for k in (0, 1):  # the first models, each on one half of the products
        first = json.loads((out / "bootstrap" / f"first-{k}" / "model_card.json").read_text())
        assert 0 < first["data"]["train_products"] < 36
    captions = {r["sku"]: r for r in rows(out / "captions.jsonl")}
    assert len(captions) == 36 and all(r["caption"] for r in captions.values())
    # The filter scores every swapped title below the true titles on average, and drops swapped pairs.
    bad = [captions[s]["text_score"] for s in swapped]
    good = [r["text_score"] for s, r in captions.items() if s not in swapped]
    assert np.mean(bad) < np.mean(good)
    dropped = {s for s, r in captions.items() if not r["text_kept"]}
    assert dropped & swapped
    on_noise = boot["filter"]["on_corruption"]
    assert on_noise["dropped"] == len(dropped) and on_noise["dropped_corrupted"] == len(dropped & swapped)
    # The final model trains on what survived: kept titles and kept captions; a product with neither is left out.
    texts = read_texts(out / "training-texts.jsonl")
    for sku, r in captions.items():
        want = ([r["text"]] if r["text_kept"] else []) + (
            [r["caption"]] if r["caption_kept"] and r["caption"] != r["text"] else [])
        assert texts[sku] == want
    assert card["data"]["train_products"] == boot["products_trained"] == sum(1 for v in texts.values() if v)
    assert boot["texts_trained"] == sum(len(v) for v in texts.values())

    # Filter only: no captions, the same first models (trained once: their folder is shared and resumed).
    shared = out / "bootstrap"
    before = (shared / "first-0" / "open_clip_model.safetensors").stat().st_mtime_ns
    only = tmp_path / "filter-only"
    embedder(shop, only, cache, "--corrupt-titles", "0.3", "--seed", "3", "--bootstrap", "--no-captions",
             "--first-epochs", "30", "--first-dir", str(shared))
    texts = read_texts(only / "training-texts.jsonl")
    assert all(len(v) <= 1 for v in texts.values())
    assert {s for s, v in texts.items() if not v} == dropped
    assert json.loads((only / "model_card.json").read_text())["bootstrap"]["filter"]["thresholds"] == \
        boot["filter"]["thresholds"]
    assert (shared / "first-0" / "open_clip_model.safetensors").stat().st_mtime_ns >= before

    # A second filter round: first models trained only on what the first round kept rescore every title.
    two = tmp_path / "filter-2"
    embedder(shop, two, cache, "--corrupt-titles", "0.3", "--seed", "3", "--bootstrap", "--no-captions",
             "--first-epochs", "30", "--first-dir", str(shared), "--filter-rounds", "2")
    rounds = json.loads((two / "model_card.json").read_text())["bootstrap"]["filter"]["rounds"]
    assert len(rounds) == 2 and rounds[0]["originals_kept"] == 36 - len(dropped)
    assert rounds[0]["on_corruption"]["dropped_corrupted"] == len(dropped & swapped)
    for k in (0, 1):  # round 2's first models never train on a text round 1 dropped
        given = read_texts(shared / f"round2-first-{k}-texts.jsonl")
        assert all(given[sku] == [] for sku in dropped)
        assert any(given.values()) and (shared / f"round2-first-{k}" / "model_card.json").exists()
    texts = read_texts(two / "training-texts.jsonl")
    assert 36 - sum(1 for v in texts.values() if v) == rounds[1]["on_corruption"]["dropped"]

    # evaluate --cached-trunk reads the catalog's image vectors from the trunk-feature cache: the plugin's numbers.
    reports = {}
    for extra in ([], ["--cached-trunk"]):
        path = tmp_path / f"eval{len(extra)}.json"
        call_command("evaluate", "--data", str(shop), "--model", str(only), "--json", str(path), "--cache-dir",
                     str(cache), "--no-calibration", "--no-progress", *extra)
        reports[len(extra)] = json.loads(path.read_text())
    plugin, cached = reports[0], reports[1]
    assert (plugin["catalog_vectors"], cached["catalog_vectors"]) == ("embedder", "given")
    assert cached["text_to_image"]["mrr"] == pytest.approx(plugin["text_to_image"]["mrr"], abs=0.02)
    assert cached["zero_shot"]["colour"]["accuracy"] == plugin["zero_shot"]["colour"]["accuracy"]
    with pytest.raises(CommandError, match="--cached-trunk needs --model to be a trained folder"):
        call_command("evaluate", "--data", str(shop), "--model", "embedder", "--json", str(tmp_path / "x.json"),
                     "--no-calibration", "--no-progress", "--cached-trunk")


def test_surviving_texts_keep_what_passes_the_filter():
    originals, captions = ["Acme Red Cap", "Bolt Blue Sock", "Cove Green Shirt"], ["red cap", "blue sock", "x"]
    keep_o, keep_c = np.array([True, False, False]), np.array([True, True, False])
    assert surviving_texts(originals, captions, keep_o, keep_c) == [["Acme Red Cap", "red cap"], ["blue sock"], []]
    assert surviving_texts(originals, captions, keep_o, keep_c, "dropped") == [["Acme Red Cap"], ["blue sock"], []]
    assert surviving_texts(originals, None, keep_o, keep_c) == [["Acme Red Cap"], [], []]
    assert surviving_texts(["red cap"], ["red cap"], np.array([True]), np.array([True])) == [["red cap"]]


def test_training_texts_replace_titles_and_leave_out_products_without_any(shop, tmp_path):
    products = D.load_products(shop)
    texts = {products[0].sku: ["a caption", products[0].title], products[1].sku: []}
    path = write_texts(texts, tmp_path / "texts.jsonl")
    cfg = TrainConfig(data=[str(shop)], out=str(tmp_path / "o"), arch="rn-tiny-32", batch_size=4, holdout=0.0,
                      cache_dir=str(tmp_path / "cache"), texts=str(path), text_mix=(0.5, 0.5, 0.0))
    t = Trainer(cfg, log=lambda m: None, progress=False)
    t.prepare()
    skus = [p.sku for p in t.train_products]
    assert products[1].sku not in skus and len(skus) == len(products) - 1
    full, own, _ = t.variants[skus.index(products[0].sku)]
    assert full == -1 and [t.bank.texts[i] for i in own] == ["a caption", products[0].title]
    drawn = {t.bank.texts[i] for i in t._choose_texts(np.zeros(200, np.int64), np.random.default_rng(0))}
    assert drawn == {"a caption", products[0].title}  # full-text and title draws alike take a given text
    full, own, _ = t.variants[skus.index(products[2].sku)]
    assert t.bank.texts[full] == products[2].text and [t.bank.texts[i] for i in own] == [products[2].title]
    # The run is keyed by the texts' content: other texts are another run.
    key = cfg.run_key()
    write_texts({products[1].sku: []}, path)
    assert cfg.run_key() != key


def test_bootstrap_bad_input_is_one_line(shop, tmp_path):
    with pytest.raises(CommandError, match="needs --captioner"):
        call_command("train_embedder", "--data", str(shop), "--out", str(tmp_path / "o"), "--preset", "tiny",
                     "--bootstrap", "--no-progress")
    with pytest.raises(CommandError, match="would change nothing"):
        call_command("train_embedder", "--data", str(shop), "--out", str(tmp_path / "o"), "--preset", "tiny",
                     "--bootstrap", "--no-captions", "--no-filter", "--no-progress")
    with pytest.raises(CommandError, match="--texts .*no such file"):
        call_command("train_embedder", "--data", str(shop), "--out", str(tmp_path / "o"), "--preset", "tiny",
                     "--texts", str(tmp_path / "none.jsonl"), "--no-progress")
    with pytest.raises(CommandError, match="--filter-rounds must be at least 1"):
        call_command("train_embedder", "--data", str(shop), "--out", str(tmp_path / "o"), "--preset", "tiny",
                     "--bootstrap", "--no-captions", "--filter-rounds", "0", "--no-progress")
    with pytest.raises(CommandError, match="corrupt-titles 1.5"):
        call_command("train_embedder", "--data", str(shop), "--out", str(tmp_path / "o"), "--preset", "tiny",
                     "--corrupt-titles", "1.5", "--no-progress")
    with pytest.raises(CommandError, match="--captioner: captioner folder"):
        call_command("train_embedder", "--data", str(shop), "--out", str(tmp_path / "o"), "--preset", "tiny",
                     "--bootstrap", "--captioner", str(tmp_path / "nowhere"), "--no-progress")
    bad = tmp_path / "texts.jsonl"
    bad.write_text('{"sku": "x", "texts": "not a list"}\n')
    with pytest.raises(D.DataError, match="texts.jsonl:1"):
        read_texts(bad)
