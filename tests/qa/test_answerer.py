"""The project's answerer end to end: a tiny model trained for a few steps on a fixture catalog, saved, loaded
through the plugin, evaluated by evaluate_qa; the late-fusion baseline over the zero-shot tagger."""

from __future__ import annotations

import json

import numpy as np
import pytest
from django.core.management import CommandError, call_command
from PIL import Image

from mmsearch import plugins
from mmsearch.plugins.base import Answerer, FeatureAnswerer, ProductFacts
from tests.qa.conftest import catalog_file
from tests.plugins.test_checks import run_fresh
from tests.qa.plugins import RGB


def test_trained_answerer_loads_through_the_plugin(trained_answerer, settings):
    card = json.loads((trained_answerer / "model_card.json").read_text())
    assert card["training"]["finished"] and card["training"]["epochs_done"] == 8
    assert card["architecture"]["trunk"]["grid"] == [16, 1280] and card["architecture"]["model"]["colour_dim"] == 6
    assert set(card["data"]["question_types"]) == {"colour", "article_type", "gender", "yes_no", "choice"}
    cal = card["calibration"]
    # temperature scaling minimises the calibration split's NLL; the threshold reaches 0.90 answered accuracy there
    assert cal["temperature"] > 0 and cal["nll"] <= cal["nll_uncalibrated"] + 1e-9 and 0 <= cal["threshold"] <= 1
    assert cal["coverage"] == 0 or cal["answered_accuracy"] >= 0.9
    assert (trained_answerer / "heldout.jsonl").is_file()
    settings.MMSEARCH_MODELS = {**settings.MMSEARCH_MODELS, "answerer": {
        "BACKEND": "mmsearch.plugins.answerer.TrunkAnswerer", "OPTIONS": {"path": str(trained_answerer),
                                                                         "threshold": 0.0}}}
    plugins.reset()
    answerer = plugins.get_model("answerer")
    assert isinstance(answerer, Answerer) and isinstance(answerer, FeatureAnswerer)
    assert answerer.model_key.startswith("answerer:local:")
    red = Image.new("RGB", (30, 40), RGB["Red"])
    facts = ProductFacts("x", "A thing")
    features = answerer.image_features([red])
    assert features.shape == (1, 16, 1286)
    ans = answerer.answer("what colour is it?", facts, [red])
    assert ans.kind == "colour" and ans.text in RGB and 0 <= ans.confidence <= 1 and ans.model_key == answerer.model_key
    assert answerer.answer_features("what colour is it?", facts, features) == ans  # the cached path is the same
    yes_no = answerer.answer("is it red?", facts, [red])
    assert yes_no.kind == "yes_no" and yes_no.text in ("Yes", "No")
    choice = answerer.answer("is it green or blue?", facts, [red])
    assert choice.kind == "choice" and choice.text in ("Green", "Blue")
    # colour is what solid-colour images teach first: the trained model sees it
    for name, rgb in RGB.items():
        assert answerer.answer("what colour is it?", facts, [Image.new("RGB", (14, 14), rgb)]).text == name
    plugins.reset()


def test_default_settings_find_the_answerer_folder_without_loading_torch(trained_answerer, tmp_path):
    result = run_fresh({"MMSEARCH_ANSWERER_PATH": str(trained_answerer),
                        "MMSEARCH_EMBEDDER_PATH": str(tmp_path / "none"), "MMSEARCH_CAPTIONER_PATH": str(tmp_path / "none")})
    assert result["models"]["answerer"]["OPTIONS"]["path"] == str(trained_answerer)
    assert not [i for i in result["ids"] if i.startswith("mmsearch.E")]  # the checks validated the folder
    assert result["heavy"] == []  # start-up and checks import no torch


def test_evaluate_qa_reports_every_type(trained_answerer, tmp_path):
    out = tmp_path / "qa.json"
    call_command("evaluate_qa", "--model", str(trained_answerer), "--data", str(trained_answerer / "heldout.jsonl"),
                 "--cache-dir", str(trained_answerer.parent / "cache"), "--embedder", "none", "--json", str(out),
                 "--no-progress")
    report = json.loads(out.read_text())
    for name in ("colour", "article_type", "gender", "yes_no", "choice", "overall"):
        r = report[name]
        assert {"accuracy", "majority_baseline", "late_fusion_accuracy", "coverage", "answered_accuracy",
                "ms_per_question", "ece", "questions"} <= set(r), name
        assert r["questions"] > 0 and 0 <= r["accuracy"] <= 1 and r["ms_per_question"] > 0
    assert report["colour"]["accuracy"] >= report["colour"]["majority_baseline"] + 0.3
    assert report["overall"]["ms_first_question"] > 0
    assert report["data"]["visual_questions"] == report["overall"]["questions"]


def test_training_is_deterministic_and_resumable(tmp_path):
    data = catalog_file(tmp_path / "cat", copies=1)
    cache = tmp_path / "cache"

    def train(out, *extra):
        call_command("train_answerer", "--data", str(data), "--out", str(out), "--preset", "tiny", "--epochs", "2",
                     "--batch-size", "4", "--holdout", "0.2", "--calibration", "0.2", "--cache-dir", str(cache),
                     "--checkpoint-every", "0", "--no-progress", *extra)

    train(tmp_path / "a")
    steps = json.loads((tmp_path / "a" / "model_card.json").read_text())["metrics"]["per_epoch"][0]["steps"]
    train(tmp_path / "b", "--max-steps", str(steps + 1))
    assert not json.loads((tmp_path / "b" / "model_card.json").read_text())["training"]["finished"]
    train(tmp_path / "b")  # resumes after epoch 1
    sha = [json.loads((tmp_path / d / "model_card.json").read_text())["weights"]["sha256"] for d in "ab"]
    assert sha[0] == sha[1]
    with pytest.raises(CommandError, match="different training run"):
        train(tmp_path / "a", "--lr", "0.1")


def test_bad_training_input_is_one_clear_error(tmp_path):
    data = tmp_path / "p.jsonl"
    (tmp_path / "i.png").write_bytes(b"")
    Image.new("RGB", (8, 8)).save(tmp_path / "i.png")
    data.write_text(json.dumps({"sku": "a", "title": "A", "attributes": {"colour": "Red"}, "images": ["i.png"]}) + "\n")
    with pytest.raises(CommandError, match="nothing to ask about"):
        call_command("train_answerer", "--data", str(data), "--out", str(tmp_path / "o"), "--preset", "tiny",
                     "--holdout", "0", "--holdout-products", "0", "--calibration", "0", "--no-progress",
                     "--cache-dir", str(tmp_path / "c"))
    with pytest.raises(CommandError, match="must be in"):
        call_command("train_answerer", "--data", str(data), "--out", str(tmp_path / "o"), "--holdout", "1.5")
    with pytest.raises(CommandError, match="no such folder"):
        call_command("evaluate_qa", "--model", str(tmp_path / "missing"), "--data", str(data))


def test_late_fusion_answers_through_the_zero_shot_tagger(trained_answerer, settings):
    """The baseline over a real tagger (the hashing embedder's colour histograms), with the same routing."""
    settings.MMSEARCH_MODELS = {**settings.MMSEARCH_MODELS,
                                "embedder": {"BACKEND": "mmsearch.plugins.hashing.HashingEmbedder",
                                             "OPTIONS": {"dim": 64}},
                                "answerer": {"BACKEND": "mmsearch.plugins.answerer.LateFusionAnswerer",
                                             "OPTIONS": {"vocabulary": str(trained_answerer), "threshold": 0.0}}}
    plugins.reset()
    lf = plugins.get_model("answerer")
    assert isinstance(lf, Answerer) and lf.model_key.startswith("latefusion:zeroshot:")
    facts = ProductFacts("x", "A thing")
    image = Image.new("RGB", (20, 20), RGB["Green"])
    ans = lf.answer("what colour is it?", facts, [image])
    assert ans.kind == "colour" and ans.text in RGB and ans.evidence[0].source == "image"
    yes_no = lf.answer("is it green?", facts, [image])
    assert yes_no.text in ("Yes", "No") and np.isclose(
        yes_no.confidence, max(yes_no.confidence, 1 - yes_no.confidence))
    plugins.reset()
