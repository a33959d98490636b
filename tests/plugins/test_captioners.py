"""The captioner contract, run against every captioner backend, each built through settings + the handler:
the project's TrunkCaptioner (a tiny saved folder) and TransformersCaptioner with tiny random BLIP, GIT and
VisionEncoderDecoder models saved locally with save_pretrained (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from django.test import override_settings

from mmsearch import plugins
from mmsearch.plugins.base import Caption, Captioner
from mmsearch.plugins.registry import PluginError
from tests.plugins.builders import BERT_VOCAB, MINILM_DIR
from tests.plugins.test_contract import build_from, make_images

TRUNK = "mmsearch.plugins.captioner.TrunkCaptioner"
TRANSFORMERS = "mmsearch.plugins.transformers_captioner.TransformersCaptioner"
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
TINY_VISION = {**TINY, "image_size": 32, "patch_size": 8}


# --- tiny models ---------------------------------------------------------------------------------------------------
def save_trunk_captioner(folder: Path, seed: int = 0) -> Path:
    """A TrunkCaptioner folder: the EfficientNet-Lite0 trunk (random weights) and a 1-layer decoder."""
    import torch

    from mmsearch.training.caption.folder import trunk_spec
    from mmsearch.training.caption.model import CaptionConfig, Captioner as Decoder, save_captioner
    from mmsearch.training.caption.vocab import Vocab
    from mmsearch.training.model import ARCHS, build_trunk
    from mmsearch.training.trainer import module_identity

    torch.manual_seed(seed)
    arch = ARCHS["effl0-128"]
    trunk = build_trunk(arch, pretrained=False)
    vocab = Vocab.build([["men", "women", "red", "blue", "shirt", "kurta", "printed"]], min_count=1)
    decoder = Decoder(CaptionConfig(vocab_size=len(vocab), block_size=10, colour_dim=6, n_layer=1, n_head=2, n_embd=32))
    save_captioner(folder, decoder, trunk, trunk_spec(arch, module_identity(trunk)), vocab, {"name": folder.name})
    return folder


def _tokenizer():
    from transformers import BertTokenizerFast

    return BertTokenizerFast.from_pretrained(str(MINILM_DIR))


def save_tiny_blip(folder: Path, seed: int = 0) -> Path:
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor

    torch.manual_seed(seed)
    tok = _tokenizer()
    tok.add_special_tokens({"bos_token": "[DEC]"})  # BLIP's decoder start token (id 30522)
    config = BlipConfig(text_config={**TINY, "vocab_size": BERT_VOCAB + 2, "max_position_embeddings": 64,
                                     "bos_token_id": BERT_VOCAB, "sep_token_id": 102, "pad_token_id": 0},
                        vision_config=TINY_VISION)
    BlipForConditionalGeneration(config).eval().save_pretrained(folder)
    BlipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def save_tiny_git(folder: Path, seed: int = 0) -> Path:
    import torch
    from transformers import CLIPImageProcessor, GitConfig, GitForCausalLM

    torch.manual_seed(seed)
    config = GitConfig(vision_config=TINY_VISION, vocab_size=BERT_VOCAB, max_position_embeddings=64,
                       bos_token_id=101, eos_token_id=102, pad_token_id=0, **TINY)
    GitForCausalLM(config).eval().save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    _tokenizer().save_pretrained(folder)
    return folder


def save_tiny_vision_encoder_decoder(folder: Path, seed: int = 0) -> Path:
    import torch
    from transformers import (BertConfig, ViTConfig, ViTImageProcessor, VisionEncoderDecoderConfig,
                              VisionEncoderDecoderModel)

    torch.manual_seed(seed)
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(
        ViTConfig(**TINY_VISION),
        BertConfig(vocab_size=BERT_VOCAB, max_position_embeddings=64, is_decoder=True, add_cross_attention=True,
                   **TINY))
    model = VisionEncoderDecoderModel(config).eval()
    for cfg in (model.config, model.generation_config):  # [CLS] starts a caption, [SEP] ends it
        cfg.decoder_start_token_id, cfg.pad_token_id, cfg.eos_token_id = 101, 0, 102
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    _tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def caption_models(tmp_path_factory):
    """Each tiny captioner folder, built once per session on first request."""
    root = tmp_path_factory.mktemp("tiny-captioners")
    made: dict[str, Path] = {}

    def get(name: str, seed: int = 0) -> Path:
        key = f"{name}-{seed}"
        if key not in made:
            make = {"trunk": save_trunk_captioner, "blip": save_tiny_blip, "git": save_tiny_git,
                    "ved": save_tiny_vision_encoder_decoder}[name]
            made[key] = make(root / key, seed)
        return made[key]

    return get


# --- the contract ---------------------------------------------------------------------------------------------------
class CaptionerContract:
    key_prefix = ""

    def conf(self, caption_models) -> dict:
        raise NotImplementedError

    def other_conf(self, caption_models) -> dict:
        raise NotImplementedError

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls, caption_models):
        """One instance per backend class: loading weights once keeps the suite fast."""
        return build_from(cls().conf(caption_models), "captioner")

    def test_satisfies_the_protocol(self, model):
        assert isinstance(model, Captioner)

    def test_one_caption_per_image_of_any_size_and_mode(self, model):
        images = make_images()
        caps = model.caption(images)
        assert len(caps) == len(images)
        for c in caps:
            assert isinstance(c, Caption) and isinstance(c.text, str)
            assert c.model_key == model.model_key
            assert c.score is None or (np.isfinite(c.score) and c.score <= 1e-6)

    def test_empty_input(self, model):
        assert model.caption([]) == []

    def test_captions_are_deterministic_and_batch_independent(self, model):
        images = make_images()
        whole = [c.text for c in model.caption(images)]
        assert [c.text for c in model.caption(images)] == whole
        assert model.caption(images[2:3])[0].text == whole[2]

    def test_model_key_names_backend_weights_and_decoding(self, model, caption_models):
        assert model.model_key.startswith(self.key_prefix)
        other = build_from(self.other_conf(caption_models), "captioner")
        assert other.model_key != model.model_key


class TestTrunkCaptioner(CaptionerContract):
    key_prefix = "captioner:local:"

    def conf(self, caption_models):
        return {"BACKEND": TRUNK, "OPTIONS": {"path": str(caption_models("trunk")), "device": "cpu"}}

    def other_conf(self, caption_models):
        return {"BACKEND": TRUNK, "OPTIONS": {"path": str(caption_models("trunk", seed=1))}}

    def test_grids_are_shared_by_the_heads(self, model):
        images = make_images()
        grids = model.grids(images)
        assert model.grid_shape == (16, 1286) and model.trunk_channels == 1280
        assert grids.shape == (len(images), 16, 1286) and grids.dtype == np.float32
        assert [c.text for c in model.caption_grids(grids)] == [c.text for c in model.caption(images)]
        # the trunk's channels are its own forward_features output, one token per 32 x 32 cell
        import torch

        from mmsearch.training.data import squash

        x = torch.from_numpy(np.stack([squash(im.convert("RGB"), 128) for im in images[:2]])).permute(0, 3, 1, 2)
        with torch.no_grad():
            trunk = model._trunk.forward_features((x.float() / 255 - 0.5) / 0.5)
        np.testing.assert_allclose(grids[:2, :, :1280], trunk.flatten(2).transpose(1, 2).numpy(), atol=1e-4)
        # the cell colours: a solid red image has mean (220, 30, 30) / 255 and no spread in every cell
        np.testing.assert_allclose(grids[0, :, 1280:1283], np.tile([220 / 255, 30 / 255, 30 / 255], (16, 1)), atol=1e-5)
        np.testing.assert_allclose(grids[0, :, 1283:], 0, atol=1e-5)
        with pytest.raises(ValueError, match="cell colours"):
            model.caption_grids(grids[..., :1280])
        assert model.trunk_key.startswith("trunk:tf_efficientnet_lite0:")

    def test_decoding_options(self, caption_models):
        path = str(caption_models("trunk"))
        keys = set()
        for options in ({"beam_size": 1}, {"beam_size": 3}, {"top_p": 0.9, "seed": 1}, {"top_p": 0.9, "seed": 2},
                        {"max_words": 3}):
            model = build_from({"BACKEND": TRUNK, "OPTIONS": {"path": path, **options}}, "captioner")
            caps = model.caption(make_images()[:2])
            assert len(caps) == 2
            if "max_words" in options:
                assert all(len(c.text.split()) <= 3 for c in caps)
            keys.add(model.model_key)
        assert len(keys) == 5  # decoding changes the captions, so it is part of model_key
        sampled = build_from({"BACKEND": TRUNK, "OPTIONS": {"path": path, "top_p": 0.9, "seed": 1}}, "captioner")
        again = build_from({"BACKEND": TRUNK, "OPTIONS": {"path": path, "top_p": 0.9, "seed": 1}}, "captioner")
        assert [c.text for c in sampled.caption(make_images())] == [c.text for c in again.caption(make_images())]

    @pytest.mark.parametrize("options, message", [
        ({"beam_size": 0}, "beam_size"), ({"top_p": 1.5}, "top_p"), ({"temperature": 0}, "temperature"),
        ({"max_words": 99}, "max_words"),
    ])
    def test_bad_options_are_rejected_at_start_up(self, caption_models, options, message):
        conf = {"BACKEND": TRUNK, "OPTIONS": {"path": str(caption_models("trunk")), **options}}
        with override_settings(MMSEARCH_MODELS={"captioner": conf}):
            plugins.reset()
            with pytest.raises(PluginError, match=message):
                plugins.build("captioner")

    def test_a_missing_folder_names_the_fix(self, tmp_path):
        conf = {"BACKEND": TRUNK, "OPTIONS": {"path": str(tmp_path / "nothing")}}
        with override_settings(MMSEARCH_MODELS={"captioner": conf}):
            with pytest.raises(PluginError, match="train_captioner"):
                plugins.build("captioner")
        (tmp_path / "empty").mkdir()
        with override_settings(MMSEARCH_MODELS={"captioner": {**conf, "OPTIONS": {"path": str(tmp_path / "empty")}}}):
            with pytest.raises(PluginError, match="captioner_config.json is missing"):
                plugins.build("captioner")


class TransformersContract(CaptionerContract):
    key_prefix = "transformers:local:"
    kind = ""

    def conf(self, caption_models):
        return {"BACKEND": TRANSFORMERS, "OPTIONS": {"model": str(caption_models(self.kind)), "max_new_tokens": 6}}

    def other_conf(self, caption_models):
        return {"BACKEND": TRANSFORMERS, "OPTIONS": {"model": str(caption_models(self.kind)), "num_beams": 3,
                                                     "max_new_tokens": 6}}

    def test_beam_search_runs_and_weights_change_the_key(self, caption_models):
        beam = build_from(self.other_conf(caption_models), "captioner")
        assert beam.model_key.endswith(":beam3") and len(beam.caption(make_images()[:2])) == 2
        seeded = build_from({"BACKEND": TRANSFORMERS, "OPTIONS": {"model": str(caption_models(self.kind, seed=1))}},
                            "captioner")
        plain = build_from(self.conf(caption_models), "captioner")
        assert seeded.model_key.split(":")[2] != plain.model_key.split(":")[2]


class TestBlip(TransformersContract):
    kind = "blip"

    def test_a_prompt_starts_the_caption(self, caption_models):
        prompted = build_from({"BACKEND": TRANSFORMERS, "OPTIONS": {"model": str(caption_models("blip")),
                                                                    "prompt": "a photo of", "max_new_tokens": 4}},
                              "captioner")
        assert ":prompt-" in prompted.model_key
        assert all(not c.text.startswith("a photo of") for c in prompted.caption(make_images()[:2]))


class TestGit(TransformersContract):
    kind = "git"


class TestVisionEncoderDecoder(TransformersContract):
    kind = "ved"

    def test_prompts_are_refused_where_unsupported(self, caption_models):
        conf = {"BACKEND": TRANSFORMERS, "OPTIONS": {"model": str(caption_models("ved")), "prompt": "a photo of"}}
        with override_settings(MMSEARCH_MODELS={"captioner": conf}):
            with pytest.raises(PluginError, match="prompt is supported for BLIP and GIT"):
                plugins.build("captioner")


def test_hub_names_are_accepted_without_loading():
    model = build_from({"BACKEND": TRANSFORMERS, "OPTIONS": {"model": "Salesforce/blip-image-captioning-base"}},
                       "captioner")
    assert model.model_key == "transformers:Salesforce/blip-image-captioning-base:greedy"
    assert not model.loaded
