"""`manage.py evaluate` on a catalog whose every metric is computed by hand (ColourEmbedder test plugin)."""

from __future__ import annotations

import json
import math

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings

from mmsearch import plugins

COLOUR_MODELS = {"embedder": {"BACKEND": "tests.training.plugins.ColourEmbedder", "OPTIONS": {}}}


@pytest.fixture
def colour_model():
    plugins.reset()
    with override_settings(MMSEARCH_MODELS=COLOUR_MODELS):
        yield
    plugins.reset()


def product(sku, title, colour, image):
    return {"sku": sku, "title": title, "category": "Apparel/Shirts", "attributes": {"colour": colour},
            "images": [image]}


@pytest.fixture
def files(colour_catalog):
    c = colour_catalog
    # Image vectors (unit mean RGB): A [1,0,0]; B [.894,.447,0]; C [0,0,1]; D [.993,.117,0] (a green shirt
    # photographed red); corpus E [0,.426,.905], F [0,.365,.931].
    data = c.products("data.jsonl", [
        product("A", "Red Shirt", "Red", c.png("a.png", (255, 0, 0))),
        product("B", "red shirt", "Red", c.png("b.png", (200, 100, 0))),
        product("C", "Blue Shirt", "Blue", c.png("c.png", (0, 0, 255))),
        product("D", "Green Shirt", "Green", c.png("d.png", (255, 30, 0))),
    ])
    corpus = c.products("corpus.jsonl", [
        product("E", "Blue Shirt", "Blue", c.png("e.png", (0, 120, 255))),
        product("F", "Green Shirt", "Green", c.png("f.png", (0, 100, 255))),
        product("A", "Red Shirt", "Red", "images/a.png"),  # the same image file again: counted once
    ])
    (c.root / "photos").mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8), (250, 5, 5)).save(c.root / "photos" / "p1.png")
    Image.new("RGB", (8, 8), (0, 100, 255)).save(c.root / "photos" / "p2.png")
    photos = c.root / "photos.jsonl"
    photos.write_text('{"image": "photos/p1.png", "sku": "A"}\n{"image": "photos/p2.png", "sku": "E"}\n')
    return data, corpus, photos


def test_evaluate_matches_hand_computed_metrics(colour_model, files, tmp_path):
    data, corpus, photos = files
    out = tmp_path / "report.json"
    call_command("evaluate", "--data", str(data), "--corpus", str(corpus), "--photos", str(photos),
                 "--json", str(out), "--plots", str(tmp_path / "plots"), "--no-progress")
    report = json.loads(out.read_text())
    assert set(report) == {"model_key", "catalog_vectors", "calibration", "text_to_image", "zero_shot",
                           "photo_to_product", "timings"}
    assert report["model_key"] == "test-colour:v1" and report["catalog_vectors"] == "embedder"
    assert report["calibration"] is None  # the test plugin has no model folder, and no --calibration was given

    # Queries: "red shirt" -> A(1) D B(3); "blue shirt" -> C(1) F E(3); "green shirt" -> B E F(3) D(4).
    t2i = report["text_to_image"]
    assert (t2i["queries"], t2i["corpus"]) == (3, 6)
    ideal = 1 + 1 / math.log2(3)
    assert t2i["recall@1"] == pytest.approx((0.5 + 0.5 + 0) / 3)
    assert t2i["recall@10"] == pytest.approx(1.0)
    assert t2i["mrr"] == pytest.approx((1 + 1 + 1 / 3) / 3)
    ndcg_red = (1 + 1 / math.log2(4)) / ideal
    ndcg_green = (1 / math.log2(4) + 1 / math.log2(5)) / ideal
    assert t2i["ndcg@10"] == pytest.approx((ndcg_red + ndcg_red + ndcg_green) / 3, abs=1e-6)

    # Zero-shot colour: A, B, C right, D (labelled Green, looks red) wrong; one category value -> no task.
    zs = report["zero_shot"]
    assert set(zs) == {"colour"}
    assert zs["colour"]["accuracy"] == pytest.approx(0.75)
    assert zs["colour"]["majority_baseline"] == pytest.approx(0.5)
    assert zs["colour"]["ece"] == pytest.approx(0.25, abs=1e-3)  # every confidence is ~1.0 at scale 100
    assert len(zs["colour"]["reliability"]) == 15  # ECE over 15 equal-width bins (Guo et al. 2017)
    assert zs["colour"]["ece_calibrated"] is None and zs["colour"]["auto_accept"] is None

    # Photos: p1 finds A first; p2 (labelled E) finds F first, then E.
    p2p = report["photo_to_product"]
    assert (p2p["queries"], p2p["products"]) == (2, 6)
    assert p2p["accuracy@1"] == pytest.approx(0.5)
    assert p2p["accuracy@5"] == pytest.approx(1.0)
    assert p2p["mrr"] == pytest.approx(0.75)
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {"recall_at_k.png", "reliability.png"}


def test_photo_to_product_is_null_without_photos(colour_model, files, tmp_path):
    data, _, _ = files
    out = tmp_path / "r.json"
    call_command("evaluate", "--data", str(data), "--json", str(out), "--no-progress")
    report = json.loads(out.read_text())
    assert report["photo_to_product"] is None
    assert report["text_to_image"]["corpus"] == 4


def test_bad_input_is_one_line_command_error(colour_model, files, tmp_path):
    data, _, photos = files
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"sku": "x", "title": "ok", "images": []}\n{not json\n')
    cases = [
        (["--data", str(tmp_path / "missing.jsonl")], "no such file"),
        (["--data", str(bad)], "bad JSON"),
        (["--data", str(data), "--model", "no-such-model"], "neither an alias"),
    ]
    for args, message in cases:
        with pytest.raises(CommandError) as exc:
            call_command("evaluate", *args, "--json", str(tmp_path / "x.json"), "--no-progress")
        assert message in str(exc.value)
        assert "\n" not in str(exc.value)
    photos_bad = tmp_path / "photos.jsonl"
    photos_bad.write_text('{"image": "nope.png", "sku": "ZZZ"}\n')
    with pytest.raises(CommandError, match="not in the given products"):
        call_command("evaluate", "--data", str(data), "--photos", str(photos_bad), "--json",
                     str(tmp_path / "x.json"), "--no-progress")


def test_photos_are_embedded_with_the_search_views(colour_model, colour_catalog, tmp_path, settings):
    # A red product photographed in the middle 60 % of a blue scene: the whole photo alone is closer to the
    # blue product; the mean of the views (the centre crops are mostly or all red) finds the red one.
    c = colour_catalog
    data = c.products("data.jsonl", [product("A", "Red Shirt", "Red", c.png("a.png", (255, 0, 0))),
                                     product("C", "Blue Shirt", "Blue", c.png("c.png", (0, 0, 255)))])
    from PIL import Image

    scene = Image.new("RGB", (100, 100), (0, 0, 255))
    scene.paste(Image.new("RGB", (60, 60), (255, 0, 0)), (20, 20))
    scene.save(c.root / "scene.png")
    photos = c.root / "photos.jsonl"
    photos.write_text('{"image": "scene.png", "sku": "A"}\n')

    def run() -> dict:
        out = tmp_path / "r.json"
        call_command("evaluate", "--data", str(data), "--photos", str(photos), "--json", str(out), "--no-progress")
        return json.loads(out.read_text())["photo_to_product"]

    p2p = run()
    assert p2p["views"] == {"scales": [1.0, 0.7, 0.5], "mirror": True, "count": 6}
    assert (p2p["accuracy@1"], p2p["mrr"]) == (1.0, 1.0)
    assert p2p["single_view"] == {"accuracy@1": 0.0, "accuracy@5": 1.0, "mrr": 0.5}

    settings.MMSEARCH_SEARCH = {**settings.MMSEARCH_SEARCH, "PHOTO_QUERY_SCALES": [0.5, 1.0], "PHOTO_QUERY_MIRROR": False}
    p2p = run()
    assert p2p["views"] == {"scales": [0.5, 1.0], "mirror": False, "count": 2}
    assert p2p["accuracy@1"] == 1.0 and p2p["single_view"]["accuracy@1"] == 0.0
    settings.MMSEARCH_SEARCH = {**settings.MMSEARCH_SEARCH, "PHOTO_QUERY_SCALES": [0.5], "PHOTO_QUERY_MIRROR": False}
    p2p = run()  # the whole photo is not among the views: single_view embeds it on its own
    assert p2p["accuracy@1"] == 1.0 and p2p["single_view"]["accuracy@1"] == 0.0


def test_image_vectors_are_cached_per_model_key_and_file(colour_model, files, tmp_path, monkeypatch):
    data, corpus, _ = files
    from tests.training.plugins import ColourEmbedder

    calls = []
    original = ColourEmbedder.embed_images
    monkeypatch.setattr(ColourEmbedder, "embed_images", lambda self, ims: calls.append(len(ims)) or original(self, ims))

    def run() -> dict:
        out = tmp_path / "r.json"
        call_command("evaluate", "--data", str(data), "--corpus", str(corpus), "--json", str(out), "--no-progress",
                     "--cache-dir", str(tmp_path / "cache"))
        report = json.loads(out.read_text())
        report.pop("timings")
        return report

    first = run()
    assert calls == [6]
    assert run() == first and calls == [6]  # every vector from the cache, the same numbers
    # A file that changes is embedded again (the key holds its size and modification time).
    from PIL import Image

    Image.new("RGB", (12, 16), (0, 255, 0)).save(data.parent / "images" / "a.png")
    run()
    assert calls == [6, 1]


def test_calibration_options(colour_model, files, tmp_path):
    data, _, _ = files
    from mmsearch.plugins.base import VocabGroup, VocabTag
    from mmsearch.plugins.zeroshot import group_to_json
    from mmsearch.training import calibration as C

    tags = (VocabTag("blue", "Blue"), VocabTag("green", "Green"), VocabTag("red", "Red"))
    group = VocabGroup("colour", "colour", tags)
    entry = {**group_to_json(group), "temperature": 50.0, "target_precision": 0.95, "threshold": 0.5, "precision": 1.0,
             "coverage": 1.0, "adapter": None, "zero_shot": {"temperature": 50.0}}
    mine = tmp_path / "tagger.json"
    C.write_calibration(mine, "test-colour:v1", [C.GroupFit(group, entry, {}, {})])
    other = tmp_path / "other.json"
    C.write_calibration(other, "openclip:local:else", [C.GroupFit(group, entry, {}, {})])
    out = tmp_path / "r.json"
    call_command("evaluate", "--data", str(data), "--calibration", str(mine), "--json", str(out), "--no-progress")
    task = json.loads(out.read_text())["zero_shot"]["colour"]
    # A, B, C right (first images red, red-orange, blue), D wrong: at T = 50 the confidences spread out.
    assert task["tagger"]["accuracy"] == pytest.approx(0.75)
    assert task["tagger"]["zero_shot_accuracy"] == pytest.approx(0.75)
    assert task["ece_calibrated"] < task["ece"]
    assert task["auto_accept"]["target"] == 0.95 and task["auto_accept"]["threshold"] == 0.5
    assert "adapted_accuracy" not in task  # no adapter in this file
    for args, message in [(["--calibration", str(other)], "was fitted for the embedder openclip:local:else"),
                          (["--calibration", str(tmp_path / "none.json")], "no such calibration file"),
                          (["--calibration", str(mine), "--no-calibration"], "exclude each other"),
                          (["--target-precision", "0"], "between 0 and 1")]:
        with pytest.raises(CommandError) as exc:
            call_command("evaluate", "--data", str(data), *args, "--json", str(out), "--no-progress")
        assert message in str(exc.value) and "\n" not in str(exc.value)
