"""The zero-shot tagger plugin: prompts, the vocabulary helper, scoring through a composed embedder alias, the
calibration file (temperature, adapter, threshold, versions) and the system checks of its OPTIONS."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
from django.test import override_settings
from PIL import Image

from mmsearch import plugins
from mmsearch.plugins import zeroshot as Z
from mmsearch.plugins.base import DEFAULT_TAG_TEMPLATES, Tagger, TagSuggestions, VocabGroup, VocabTag
from mmsearch.plugins.checks import check_models
from mmsearch.plugins.hashing import HashingEmbedder

TAGGER = "mmsearch.plugins.zeroshot.ZeroShotTagger"
HASHING = {"BACKEND": "mmsearch.plugins.hashing.HashingEmbedder", "OPTIONS": {"dim": 64}}
COLOURS = VocabGroup("colour", "colour", (VocabTag("blue", "Blue"), VocabTag("green", "Green", ("lime",)),
                                           VocabTag("red", "Red", ("crimson", "scarlet"))))


class SidedHashing(HashingEmbedder):
    """The hashing embedder of an image's left half only (its model_key is the hashing embedder's): a mirror image
    is another picture to it, as to a real model, where the colour histogram of the whole image is not."""

    def embed_images(self, images):
        return super().embed_images([im.crop((0, 0, max(1, im.width // 2), im.height)) for im in images])


SIDED = {"BACKEND": "tests.plugins.test_zeroshot.SidedHashing", "OPTIONS": {"dim": 64}}


def tagger_with(options: dict | None = None, embedder: dict = HASHING):
    models = {"embedder": embedder, "tagger": {"BACKEND": TAGGER, "OPTIONS": options or {}}}
    with override_settings(MMSEARCH_MODELS=models):
        plugins.reset()
        tagger = plugins.get_model("tagger")
        tagger.embedder_model  # noqa: B018  (build the composed alias while the settings hold)
        return tagger


# ---- prompts -------------------------------------------------------------------------------------------------------
def test_prompt_texts_are_every_template_times_every_wording():
    group = VocabGroup("pattern", "pattern", (VocabTag("striped", "Striped", ("stripes", "Striped")),),
                       ("{group}: {tag}", "a {tag} {group} shirt {x}"))
    assert Z.prompt_texts(group) == [[
        "pattern: Striped", "a Striped pattern shirt {x}", "pattern: stripes", "a stripes pattern shirt {x}",
    ]]  # a synonym equal to the name counts once; an unknown brace is left alone


def test_prompt_vectors_are_the_mean_of_unit_wording_vectors():
    emb = HashingEmbedder(dim=32)
    vecs = Z.prompt_vectors(emb, COLOURS)
    assert vecs.shape == (3, 32) and vecs.dtype == np.float32
    texts = Z.prompt_texts(COLOURS)
    for row, words in zip(vecs, texts):
        mean = emb.embed_texts(words).mean(axis=0)
        np.testing.assert_allclose(row, mean / np.linalg.norm(mean), atol=1e-6)
    assert len(texts[2]) == 9 and len(texts[0]) == 3


# ---- the vocabulary helper -------------------------------------------------------------------------------------
class Row:
    def __init__(self, **attributes):
        self.attributes = attributes


def test_vocabulary_from_products_merges_spellings_and_is_order_free():
    products = [Row(colour="Navy Blue", article_type="Tshirts", size=""), Row(colour="navy-blue"),
                Row(colour="Red", article_type="Tshirts"), {"colour": "Navy Blue", "year": 2012},
                {"colour": ["not", "a", "value"], "year": 2013}]
    groups = Z.vocabulary_from_products(products, ["colour", "article_type", "year", "size"])
    # article_type has one value and size none: a softmax over one tag means nothing, so no group.
    assert [g.slug for g in groups] == ["colour", "year"]
    colour, year = groups
    assert colour.name == "colour" and colour.templates == DEFAULT_TAG_TEMPLATES
    assert colour.tags == (VocabTag("navy-blue", "Navy Blue", ("navy-blue",)), VocabTag("red", "Red"))
    assert [t.slug for t in year.tags] == ["2012", "2013"]
    again = Z.vocabulary_from_products(list(reversed(products)), ["colour", "year"])
    assert [g.version for g in again] == [g.version for g in groups]
    assert Z.vocabulary_from_products([Row(article_type="Tshirts"), Row(article_type="Kurtas")],
                                      ["article_type"])[0].name == "article type"
    # Every spelling is a label of its tag; an unknown value is -2, no value -1.
    labels = Z.labels_for(colour, ["Navy Blue", "NAVY BLUE", "navy-blue", "Red", "Teal", None])
    assert labels.tolist() == [0, 0, 0, 1, -2, -1]


# ---- the plugin --------------------------------------------------------------------------------------------------
def test_tags_images_through_the_embedder_alias_uncalibrated():
    tagger = tagger_with({"top_k": 2})
    assert isinstance(tagger, Tagger)
    assert tagger.embedder_model_key == "hashing:64:0"
    assert tagger.model_key == "zeroshot:hashing:64:0:uncalibrated"
    assert tagger.group_key(COLOURS) == f"zeroshot:hashing:64:0:uncalibrated:colour@{COLOURS.version}"
    images = [Image.new("RGB", (16, 16), (220, 30, 30)), Image.new("RGB", (16, 16), (30, 60, 220))]
    out = tagger.tag(images, [COLOURS])
    assert all(isinstance(s, TagSuggestions) and s.model_key == tagger.model_key for s in out)
    assert [[t.tag for t in s.tags] for s in out][0][0] == "red" and out[1].tags[0].tag == "blue"
    assert all(len(s.tags) == 2 and not any(t.calibrated for t in s.tags) for s in out)
    assert out[0].tags[0].score > out[0].tags[1].score
    probs, calibrated = tagger.score_vectors(HashingEmbedder(dim=64).embed_images(images), COLOURS)
    assert not calibrated and probs.shape == (2, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert probs[0, 2] == pytest.approx(out[0].tags[0].score)
    assert tagger.threshold(COLOURS) is None
    assert tagger.tag([], [COLOURS]) == []


def test_prompt_vectors_are_embedded_once_per_group_version():
    tagger = tagger_with()
    calls = []
    emb = tagger.embedder_model
    original = emb.embed_texts
    emb.embed_texts = lambda texts: calls.append(len(texts)) or original(texts)
    x = np.eye(64, dtype=np.float32)[:2]
    tagger.score_vectors(x, COLOURS)
    tagger.score_vectors(x, COLOURS)
    assert calls == [18]  # 3 templates x (1 + 2 + 3 wordings)
    edited = VocabGroup("colour", "colour", COLOURS.tags[:2])
    tagger.score_vectors(x, edited)
    assert calls == [18, 9]


def fitted_file(tmp_path, embedder_key="hashing:64:0", adapter=True, name="tagger.json", flip=False):
    """A calibration file for COLOURS written by the training side, with a known temperature and adapter."""
    from mmsearch.training import calibration as C

    rng = np.random.default_rng(0)
    emb = HashingEmbedder(dim=64)
    prompts = Z.prompt_vectors(emb, COLOURS)
    weight = (prompts + rng.normal(0, 0.05, prompts.shape)).astype(np.float32)
    bias = np.array([0.5, -0.25, 0.0])
    entry = {**Z.group_to_json(COLOURS), "temperature": 2.5, "target_precision": 0.95, "threshold": 0.8,
             "precision": 0.96, "coverage": 0.6,
             "operating_points": [{"target": 0.9, "threshold": 0.7, "precision": 0.91, "coverage": 0.7},
                                  {"target": 0.99, "threshold": None, "precision": None, "coverage": 0.0}],
             "adapter": {"weight": "colour.weight", "bias": "colour.bias"} if adapter else None}
    fit = C.GroupFit(COLOURS, entry, {"colour.weight": weight, "colour.bias": bias} if adapter else {}, {})
    path = tmp_path / name
    raw = C.write_calibration(path, embedder_key, [fit], flip=flip)
    return path, raw, weight, bias, prompts


def test_a_calibration_file_gives_the_adapter_and_temperature(tmp_path):
    path, raw, weight, bias, _ = fitted_file(tmp_path)
    tagger = tagger_with({"calibration": str(path)})
    assert tagger.model_key == f"zeroshot:hashing:64:0:{raw['version']}"
    x = Z.unit_rows(np.random.default_rng(1).normal(size=(4, 64)).astype(np.float32))
    probs, calibrated = tagger.score_vectors(x, COLOURS)
    assert calibrated
    logits = Z.LOGIT_SCALE * x @ weight.T + bias
    np.testing.assert_allclose(probs, Z.softmax(logits / 2.5), rtol=1e-5)
    assert tagger.threshold(COLOURS) == 0.8
    assert tagger_with({"calibration": str(path), "target_precision": 0.9}).threshold(COLOURS) == 0.7
    assert tagger_with({"calibration": str(path), "target_precision": 0.97}).threshold(COLOURS) is None
    assert tagger_with({"calibration": str(path), "target_precision": 0.85}).threshold(COLOURS) == 0.7
    # The merchant edits the group: another version, so the file no longer applies to it.
    edited = VocabGroup("colour", "colour", COLOURS.tags, ("{tag} clothes",))
    probs, calibrated = tagger.score_vectors(x, edited)
    assert not calibrated and tagger.threshold(edited) is None
    assert tagger.tag([Image.new("RGB", (8, 8), (220, 30, 30))], [COLOURS])[0].tags[0].calibrated


def test_a_zero_shot_calibration_scales_the_prompt_logits(tmp_path):
    path, _, _, _, prompts = fitted_file(tmp_path, adapter=False)
    assert not (tmp_path / "tagger.npz").exists()
    tagger = tagger_with({"calibration": str(path)})
    x = Z.unit_rows(np.random.default_rng(2).normal(size=(3, 64)).astype(np.float32))
    probs, calibrated = tagger.score_vectors(x, COLOURS)
    assert calibrated
    np.testing.assert_allclose(probs, Z.softmax(Z.LOGIT_SCALE * x @ prompts.T / 2.5), rtol=1e-5)


def test_a_flip_calibration_scores_each_image_with_its_mirror(tmp_path):
    plain_path, plain_raw, weight, bias, _ = fitted_file(tmp_path)
    path, raw, _, _, _ = fitted_file(tmp_path, name="flip.json", flip=True)
    assert raw["flip"] is True and plain_raw["flip"] is False and raw["version"] != plain_raw["version"]
    plain = tagger_with({"calibration": str(plain_path)}, SIDED)
    tagger = tagger_with({"calibration": str(path)}, SIDED)
    assert tagger.flip and not plain.flip and tagger.model_key.endswith(raw["version"])
    # Red on the left, blue on the right: the mirror is another picture, so its vector differs.
    left = np.zeros((16, 16, 3), np.uint8)
    left[:, :8] = (220, 30, 30)
    left[:, 8:] = (30, 60, 220)
    images = [Image.fromarray(left), Image.new("RGB", (16, 16), (30, 160, 40))]
    emb = SidedHashing(dim=64)
    mirrors = [im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in images]
    own, mirror = emb.embed_images(images), emb.embed_images(mirrors)
    assert float(own[0] @ mirror[0]) < 0.99 and float(own[1] @ mirror[1]) == pytest.approx(1.0)
    expected = Z.unit_rows(own + mirror)
    np.testing.assert_allclose(tagger.image_vectors(images), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tagger.image_vectors(images, own), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(plain.image_vectors(images), own, rtol=1e-5, atol=1e-6)
    # tag() scores what image_vectors gives: the flip-averaged vector through the adapter and temperature.
    top = tagger.tag(images, [COLOURS])[0].tags[0]
    probs = Z.softmax((Z.LOGIT_SCALE * expected @ weight.T + bias) / 2.5)
    assert top.tag == COLOURS.tags[int(probs[0].argmax())].slug and top.score == pytest.approx(probs[0].max())
    # A file whose flip is not true or false is refused with one line.
    broken = json.loads(path.read_text())
    broken["flip"] = "yes"
    path.write_text(json.dumps(broken))
    with pytest.raises(Z.CalibrationError, match="'flip' must be true or false") as exc:
        Z.TaggerCalibration.load(path)
    assert "\n" not in str(exc.value)


def test_a_calibration_for_another_embedder_is_ignored_with_a_warning(tmp_path, caplog):
    path, _, _, _, _ = fitted_file(tmp_path, embedder_key="openclip:local:other")
    with caplog.at_level(logging.WARNING, logger="mmsearch.plugins.zeroshot"):
        tagger = tagger_with({"calibration": str(path)})
        assert tagger.model_key == "zeroshot:hashing:64:0:uncalibrated"
    assert "fitted for the embedder openclip:local:other, not hashing:64:0" in caplog.text
    assert not tagger.score_vectors(np.eye(64, dtype=np.float32)[:1], COLOURS)[1]


def test_a_broken_calibration_file_is_an_error_when_named(tmp_path):
    path, raw, _, _, _ = fitted_file(tmp_path)
    np.savez(tmp_path / "tagger.npz", **{"colour.weight": np.zeros((3, 64), np.float32), "colour.bias": np.zeros(3)})
    with pytest.raises(Z.CalibrationError, match="does not hold the adapters"):
        tagger_with({"calibration": str(path)}).model_key
    path.write_text("{not json")
    with pytest.raises(Z.CalibrationError, match="not a readable calibration file"):
        Z.TaggerCalibration.load(path)


def test_auto_finds_tagger_json_beside_a_model_folder(tmp_path, tiny_models, caplog):
    folder = tmp_path / "model"
    shutil.copytree(tiny_models.openclip_folder(0), folder)
    embedder = {"BACKEND": "mmsearch.plugins.openclip.OpenClipEmbedder",
                "OPTIONS": {"pretrained": f"local-dir:{folder}"}}
    tagger = tagger_with({}, embedder)
    key = tagger.embedder_model_key
    assert key.startswith("openclip:local:") and tagger.calibration_path is None
    assert tagger.model_key == f"zeroshot:{key}:uncalibrated"
    # A file fitted for this model, beside it, is picked up; calibration=None turns it off.
    from mmsearch.training import calibration as C

    group = VocabGroup("shade", "shade", (VocabTag("a", "light"), VocabTag("b", "dark")))
    entry = {**Z.group_to_json(group), "temperature": 3.0, "target_precision": 0.95, "threshold": None,
             "precision": None, "coverage": 0.0, "adapter": None}
    raw = C.write_calibration(folder / "tagger.json", key, [C.GroupFit(group, entry, {}, {})])
    tagger = tagger_with({}, embedder)
    assert tagger.calibration_path == folder / "tagger.json"
    assert tagger.model_key == f"zeroshot:{key}:{raw['version']}"
    x = tagger.embedder_model.embed_images([Image.new("RGB", (20, 20), (10, 200, 10))])
    probs, calibrated = tagger.score_vectors(x, group)
    prompts = Z.prompt_vectors(tagger.embedder_model, group)
    assert calibrated
    np.testing.assert_allclose(probs, Z.softmax(Z.LOGIT_SCALE * x @ prompts.T / 3.0), rtol=1e-5)
    assert tagger_with({"calibration": None}, embedder).model_key == f"zeroshot:{key}:uncalibrated"
    # "auto" tolerates a broken file (a warning); a named file does not.
    (folder / "tagger.json").write_text("[]")
    with caplog.at_level(logging.WARNING, logger="mmsearch.plugins.zeroshot"):
        assert tagger_with({}, embedder).model_key.endswith(":uncalibrated")
    assert "tagger calibration ignored" in caplog.text


def test_system_checks_validate_the_tagger_options(tmp_path):
    def found(options, embedder=HASHING):
        models = {"embedder": embedder, "text_embedder": HASHING | {"ROLE": "text_embedder"},
                  "tagger": {"BACKEND": TAGGER, "OPTIONS": options}}
        with override_settings(MMSEARCH_MODELS=models):
            return [f"{m.id} {m.msg}" for m in check_models()]

    assert found({}) == []
    assert found({"embedder": "embedder", "top_k": 5, "calibration": None, "target_precision": 0.9}) == []
    assert "embedder='nope' is not an alias" in found({"embedder": "nope"})[0]
    assert "is a text_embedder alias" in found({"embedder": "text_embedder"})[0]
    assert "top_k=0" in found({"top_k": 0})[0]
    assert "target_precision=1.5" in found({"target_precision": 1.5})[0]
    assert "no such file" in found({"calibration": str(tmp_path / "missing.json")})[0]
    assert found({"embeder": "embedder"})[0].startswith("mmsearch.E006")
    json.dumps(Z.group_to_json(COLOURS))  # the recorded group is plain JSON
