"""Test plugins: real Embedders built on the hashing embedder, with a controllable forward-pass delay."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from PIL import Image

from mmsearch.plugins.hashing import HashingEmbedder


class SlowEmbedder(HashingEmbedder):
    """The hashing embedder with `delay` seconds per image batch, so a test can kill a worker mid-batch."""

    def __init__(self, dim: int = 16, seed: int = 7, delay: float = 0.5):
        super().__init__(dim=dim, seed=seed)
        self.delay = delay
        self.model_key = f"slow-hashing:{dim}:{seed}"

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        time.sleep(self.delay)
        return super().embed_images(images)
