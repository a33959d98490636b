"""A fast, deterministic, dependency-free embedder for tests and smoke runs (no learned weights).

Images map to a normalised colour histogram projected to `dim`; texts to hashed word features projected
the same way, with colour words mapped onto their colour's histogram bin, so "red" text lands near red
images. It is a real plugin (it satisfies the Embedder contract) but it knows nothing about products.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

from mmsearch.plugins.runtime import CheapConstructor, empty, unit_rows

_COLOURS = {
    "red": (220, 30, 30), "green": (30, 160, 60), "blue": (30, 60, 220), "yellow": (230, 220, 40),
    "black": (10, 10, 10), "white": (245, 245, 245), "orange": (240, 140, 20), "purple": (130, 40, 160),
    "brown": (120, 70, 30), "pink": (240, 150, 190), "grey": (128, 128, 128), "navy": (20, 30, 90),
}
_BINS = 4  # per channel -> 64 histogram cells


def _cell(rgb) -> int:
    r, g, b = (min(int(c) * _BINS // 256, _BINS - 1) for c in rgb)
    return (r * _BINS + g) * _BINS + b


class HashingEmbedder(CheapConstructor):
    """Deterministic colour-histogram / hashed-token embedder."""

    def __init__(self, dim: int = 64, seed: int = 0):
        if dim < 8:
            raise ValueError(f"dim={dim!r} must be at least 8")
        self._dim = dim
        self.seed = seed
        rng = np.random.default_rng(seed)
        self._proj = rng.standard_normal((_BINS**3, dim)).astype(np.float32)
        self.model_key = f"hashing:{dim}:{seed}"

    @property
    def dim(self) -> int:
        return self._dim

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        rows = []
        for image in images:
            arr = np.asarray(image.convert("RGB").resize((16, 16)), dtype=np.int64).reshape(-1, 3) * _BINS // 256
            cells = (arr[:, 0] * _BINS + arr[:, 1]) * _BINS + arr[:, 2]
            rows.append(np.bincount(cells, minlength=_BINS**3).astype(np.float32))
        return unit_rows(np.stack(rows) @ self._proj) if rows else empty(self._dim)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        rows = []
        for text in texts:
            hist = np.zeros(_BINS**3, np.float32)
            for word in text.lower().split():
                word = word.strip(".,;:!?'\"()")
                if word in _COLOURS:
                    hist[_cell(_COLOURS[word])] += 4.0
                elif word:
                    h = int.from_bytes(hashlib.blake2b(f"{self.seed}:{word}".encode(), digest_size=4).digest(), "big")
                    hist[h % _BINS**3] += 0.25
            if not hist.any():
                hist[0] = 1e-3
            rows.append(hist)
        return unit_rows(np.stack(rows) @ self._proj) if rows else empty(self._dim)
