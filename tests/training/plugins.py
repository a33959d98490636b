"""A real test plugin whose vectors are known by hand: images by mean colour, texts by colour words."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

WORDS = ("red", "green", "blue")


class ColourEmbedder:
    """dim 3: an image is its mean RGB, a text counts the words red/green/blue (all three when none)."""

    model_key = "test-colour:v1"
    dim = 3

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        rows = np.array([np.asarray(im.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(0) for im in images])
        return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        rows = []
        for text in texts:
            words = text.lower().replace(":", " ").split()
            v = np.array([words.count(w) for w in WORDS], dtype=np.float64)
            rows.append(v if v.any() else np.ones(3))
        rows = np.array(rows)
        return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


class ColourCaptioner:
    """Captions an image with the name of its strongest channel: "a red product", "a green product"..."""

    model_key = "test-colour-captioner:v1"

    def caption(self, images: Sequence[Image.Image]):
        from mmsearch.plugins.base import Caption

        out = []
        for im in images:
            mean = np.asarray(im.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(0)
            out.append(Caption(f"a {WORDS[int(mean.argmax())]} product", self.model_key, -0.5))
        return out
