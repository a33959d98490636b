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


@pytest.fixture(scope="module")
def embedder_folder(tmp_path_factory):
    """An untrained effl0-128 embedder folder (train_embedder's format): its image head over the locked trunk."""
    import torch

    from mmsearch.training.model import ARCHS, build_new, save_model

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("qa-embedder") / "embedder"
    save_model(build_new(ARCHS["effl0-128"]), out, {"name": "test"})
    return out


def test_an_answerer_trained_with_the_embedder_reads_its_image_vector_of_the_same_grid(embedder_folder, tmp_path,
                                                                                      settings):
    """--embedder: the embedder's image vector (its head over the same trunk pass) is one more memory token and its
    zero-shot scores are combined per question group on the calibration split; the folder records the embedder
    by model_key and serves without it."""
    import torch

    from mmsearch.plugins.openclip import OpenClipEmbedder
    from mmsearch.training.qa.model import combined_logits, load_answerer, question_terms

    data = catalog_file(tmp_path / "cat", copies=6)
    out = tmp_path / "answerer"
    torch.set_num_threads(1)
    call_command("train_answerer", "--data", str(data), "--out", str(out), "--preset", "tiny", "--epochs", "4",
                 "--holdout", "0.1", "--holdout-products", "0.1", "--calibration", "0.3", "--embedder",
                 str(embedder_folder), "--cache-dir", str(tmp_path / "cache"), "--checkpoint-every", "0",
                 "--no-progress")
    config = json.loads((out / "answerer_config.json").read_text())
    embedder = OpenClipEmbedder(pretrained=f"local-dir:{embedder_folder}", device="cpu")
    assert config["embedder"]["model_key"] == embedder.model_key and config["model"]["embed_dim"] == 256
    groups = config["combination"]["groups"]
    assert "colour" in groups and any(g.startswith("yes_no|") for g in groups)
    assert all(len(w) == (4 if g.startswith("yes_no|") else 2) for g, w in groups.items())  # a, b (, scale, bias)
    card = json.loads((out / "model_card.json").read_text())
    assert card["architecture"]["parameters"]["embedder_head_locked"] > 0
    settings.MMSEARCH_MODELS = {**settings.MMSEARCH_MODELS, "answerer": {
        "BACKEND": "mmsearch.plugins.answerer.TrunkAnswerer", "OPTIONS": {"path": str(out), "threshold": 0.0}}}
    plugins.reset()
    answerer = plugins.get_model("answerer")
    assert answerer.describe()["embedder"] == embedder.model_key
    images = [Image.new("RGB", (14, 14), rgb) for rgb in RGB.values()]
    features = answerer.image_features(images)
    assert features.shape == (3, 16, 1286)
    # the vector the answerer computes from the grid is the embedder's own vector of the image
    _, net, _ = load_answerer(out)
    ours = net.image_vector(torch.from_numpy(features)).numpy()
    assert np.allclose(ours, embedder.embed_images(images), atol=1e-4)
    assert net.encode(torch.from_numpy(features)).shape[1] == 17  # 16 grid cells + the image vector
    # zero-shot scores: the image vector against each value's text vector, none for yes / no
    cos = answerer.zeroshot(features)
    assert cos.shape == (3, len(answerer.vocabulary)) and np.all(cos[:, :2] == 0)
    for name, image in zip(RGB, images):
        ans = answerer.answer("what colour is it?", ProductFacts("x", "A thing"), [image])
        assert ans.text == name and 0 < ans.confidence <= 1
    yes = answerer.answer("is it red?", ProductFacts("x", "A thing"), [images[0]])
    assert yes.kind == "yes_no" and yes.text in ("Yes", "No") and 0.5 <= yes.confidence <= 1
    # a yes/no question's "yes" gets b times the log-odds of its value under the zero-shot softmax at its
    # group's scale, plus its bias
    vocab = answerer.vocabulary
    terms = question_terms(vocab, [("yes_no", "colour", ("yes", "no"), "Red")],
                           {"groups": {"colour": [1.0, 3.0], "yes_no|colour": [1.0, 2.0, 10.0, 0.5]}})
    z, c = torch.zeros(1, len(vocab)), torch.zeros(1, len(vocab))
    c[0, [vocab.index[v] for v in vocab.values["colour"]]] = torch.tensor([0.1, 0.0, 0.0])  # Blue, Green, Red
    p_red = float(torch.softmax(torch.tensor([1.0, 0.0, 0.0]), 0)[2])
    got = combined_logits(z, c, **terms, yes=vocab.index["yes"])[0]
    assert np.isclose(float(got[vocab.index["yes"]]), 2 * np.log(p_red / (1 - p_red)) + 0.5, atol=1e-5)
    assert float(got[vocab.index["no"]]) == 0 and float(got[vocab.index["Red"]]) == -1e6
    plugins.reset()
    # a config that lost the embedder it was trained with is refused with the reason
    import shutil

    from mmsearch.plugins.answerer import TrunkAnswerer

    edited = tmp_path / "edited"
    shutil.copytree(out, edited)
    config.pop("embedder")
    (edited / "answerer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="names no embedder"):
        TrunkAnswerer(str(edited))


def test_a_stage_pooled_embedder_reaches_the_answerer_through_extra_feature_rows(tmp_path, settings):
    """An effl0-128-ms embedder's head reads every stage of the trunk and the colours: the answerer carries that
    input after the grid tokens, from the same trunk pass when serving and from the shared caches in training,
    and its image vector is the embedder's own."""
    import torch

    from mmsearch.plugins.openclip import OpenClipEmbedder
    from mmsearch.training.model import ARCHS, build_new, save_model
    from mmsearch.training.qa.evaluation import evaluate_qa
    from mmsearch.training.qa.model import load_answerer

    torch.manual_seed(0)
    built = build_new(ARCHS["effl0-128-ms"])
    norm = built.net.visual.head.norm
    norm.mean.normal_()
    norm.std.uniform_(0.5, 2.0)
    folder = tmp_path / "ms"
    save_model(built, folder, {"name": "test"})
    data = catalog_file(tmp_path / "cat", copies=6)
    out = tmp_path / "answerer"
    torch.set_num_threads(1)
    call_command("train_answerer", "--data", str(data), "--out", str(out), "--preset", "tiny", "--epochs", "1",
                 "--holdout", "0.1", "--holdout-products", "0.1", "--calibration", "0.3", "--embedder",
                 str(folder), "--cache-dir", str(tmp_path / "cache"), "--checkpoint-every", "0", "--no-progress")
    config = json.loads((out / "answerer_config.json").read_text())
    assert config["embedder"]["stage_pool"] == {"colour_bins": 4} and config["model"]["embed_input"] == 2132
    settings.MMSEARCH_MODELS = {**settings.MMSEARCH_MODELS, "answerer": {
        "BACKEND": "mmsearch.plugins.answerer.TrunkAnswerer", "OPTIONS": {"path": str(out), "threshold": 0.0}}}
    plugins.reset()
    answerer = plugins.get_model("answerer")
    images = [Image.new("RGB", (14, 14), rgb) for rgb in RGB.values()]
    features = answerer.image_features(images)
    assert features.shape == (3, 16 + 2, 1286)  # 2,132 head inputs in two extra rows of 1,286
    _, net, _ = load_answerer(out)
    embedder = OpenClipEmbedder(pretrained=f"local-dir:{folder}", device="cpu")
    assert np.allclose(net.image_vector(torch.from_numpy(features)).numpy(), embedder.embed_images(images),
                       atol=1e-4)
    assert net.encode(torch.from_numpy(features)).shape[1] == 17  # 16 grid cells + the image vector
    report = evaluate_qa(out, out / "heldout.jsonl", cache_dir=tmp_path / "cache", progress=False,
                         log=lambda m: None)
    assert report["overall"]["questions"] > 0 and report["data"]["visual_questions"] > 0
    plugins.reset()


def test_an_embedder_over_another_trunk_is_refused(tmp_path):
    from mmsearch.training.model import ARCHS, build_new, save_model

    other = tmp_path / "rn"
    save_model(build_new(ARCHS["rn-tiny-32"]), other, {"name": "test"})
    data = catalog_file(tmp_path / "cat", copies=1)
    with pytest.raises(CommandError, match="not an MLP head over the answerer's trunk"):
        call_command("train_answerer", "--data", str(data), "--out", str(tmp_path / "o"), "--preset", "tiny",
                     "--embedder", str(other), "--cache-dir", str(tmp_path / "cache"), "--no-progress")
    with pytest.raises(CommandError, match="no such folder"):
        call_command("train_answerer", "--data", str(data), "--out", str(tmp_path / "o"), "--embedder",
                     str(tmp_path / "missing"))


def test_the_demo_preset_answers_on_the_demo_catalog(tmp_path, settings):
    """`make demo` trains this preset on its own small catalog: its calibration split is too small for the
    Wilson bound, so the threshold is the point estimate and the image side answers instead of always abstaining."""
    from pathlib import Path

    data = Path(settings.BASE_DIR) / "demo" / "grocery" / "products.jsonl"
    out = tmp_path / "demo"
    call_command("train_answerer", "--data", str(data), "--out", str(out), "--preset", "demo",
                 "--cache-dir", str(tmp_path / "cache"), "--no-progress")
    cal = json.loads((out / "model_card.json").read_text())["calibration"]
    assert cal["threshold_confidence"] is None
    assert cal["threshold"] < 1.0 and cal["coverage"] > 0
