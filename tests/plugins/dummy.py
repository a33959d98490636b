"""A real test plugin, switched on by test settings (like NetBox's dummy plugin): deterministic and tiny."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
from PIL import Image


def _unit(seed_text: str, dim: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(seed_text.encode()).digest()[:8], "big")
    row = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return row / np.linalg.norm(row)


class DummyEmbedder:
    """Embeds a text by its hash and an image by its mean colour; counts its constructions."""

    built = 0

    def __init__(self, dim: int = 8, salt: str = ""):
        if dim < 2:
            raise ValueError(f"dim={dim!r} must be at least 2")
        type(self).built += 1
        self.dim = dim
        self.salt = salt
        self.model_key = f"dummy:{dim}:{salt or 'plain'}"

    @classmethod
    def check_options(cls, options: dict) -> list[str]:
        """The optional hook the system checks call: validate OPTIONS without loading anything."""
        dim = options.get("dim", 8)
        return [] if isinstance(dim, int) and dim >= 2 else [f"dim={dim!r} must be at least 2"]

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([_unit(self.salt + t, self.dim) for t in texts])

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        keys = [repr(np.asarray(im.convert("RGB")).mean(axis=(0, 1)).round(1).tolist()) for im in images]
        return self.embed_texts(keys)


class DummyTextEmbedder:
    """Text only: a valid text_embedder, not an embedder."""

    model_key = "dummy-text"
    dim = 4

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([_unit(t, 4) for t in texts]) if texts else np.zeros((0, 4), np.float32)


class KeylessEmbedder:
    """Has the methods but never sets model_key: caught when built."""

    dim = 4

    def embed_texts(self, texts):
        return np.zeros((len(texts), 4), np.float32)

    def embed_images(self, images):
        return np.zeros((len(images), 4), np.float32)


not_a_class = DummyEmbedder(dim=4)
