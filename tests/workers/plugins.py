"""Test plugins: real Embedders built on the hashing embedder, with a controllable forward-pass delay."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from PIL import Image

from mmsearch.plugins.captioner import TrunkCaptioner
from mmsearch.plugins.hashing import HashingEmbedder
from mmsearch.plugins.zeroshot import ZeroShotTagger


class SlowEmbedder(HashingEmbedder):
    """The hashing embedder with `delay` seconds per image batch, so a test can kill a worker mid-batch."""

    def __init__(self, dim: int = 16, seed: int = 7, delay: float = 0.5):
        super().__init__(dim=dim, seed=seed)
        self.delay = delay
        self.model_key = f"slow-hashing:{dim}:{seed}"

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        time.sleep(self.delay)
        return super().embed_images(images)


class SlowTagger(ZeroShotTagger):
    """The zero-shot tagger, `delay` seconds slower per batch of products, so a test can kill a worker mid-job."""

    def __init__(self, delay: float = 0.3, **options):
        super().__init__(**options)
        self.delay = delay

    def score_vectors(self, vectors, group):
        time.sleep(self.delay / 3)  # the demo vocabulary has 3 groups: ~delay per batch
        return super().score_vectors(vectors, group)


class SlowCaptioner(TrunkCaptioner):
    """The trained captioner, `delay` seconds slower per batch of images, so a test can cancel a job mid-way."""

    def __init__(self, delay: float = 0.4, **options):
        super().__init__(**options)
        self.delay = delay

    def caption(self, images):
        time.sleep(self.delay)
        return super().caption(images)
