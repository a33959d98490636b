"""A test-only answerer: the shared answering logic of mmsearch.plugins.answerer with a colour-meter for eyes.

Its image features are the image's mean RGB; a colour question is answered by the nearest named colour, with a
confidence that falls with the distance. Real computation, instant, so the API tests need no trained model
(tests/qa/test_answerer.py exercises the trained TrunkAnswerer)."""

from __future__ import annotations

import numpy as np

from mmsearch.plugins.answerer import ProductAnswerer
from mmsearch.training.qa import questions as Q

RGB = {"Red": (220, 20, 20), "Green": (20, 200, 40), "Blue": (30, 40, 220)}


class ColourMeterAnswerer(ProductAnswerer):
    model_key = "colourmeter:1"
    built_features = 0  # image passes, to observe the feature cache

    def __init__(self, threshold: float = 0.9, text_embedder: str = "text_embedder"):
        super().__init__(text_embedder=text_embedder, threshold=threshold)
        self._vocab = Q.Vocabulary({"colour": {name: 1 for name in RGB}})

    @property
    def vocabulary(self) -> Q.Vocabulary:
        return self._vocab

    def image_features(self, images):
        type(self).built_features += 1
        return np.stack([np.asarray(im.convert("RGB"), np.float32).reshape(-1, 3).mean(0) for im in images])

    def visual_probabilities(self, question, parsed, features):
        mean = features[0]
        dist = np.array([np.linalg.norm(mean - np.array(RGB[c])) if c in RGB else 1e3 for c in
                         (parsed.candidates if parsed.type != Q.YES_NO else parsed.values)])
        if parsed.type == Q.YES_NO:
            # P(the named colour) from how near the image is to it, against the nearest other colour
            near = min(np.linalg.norm(mean - np.array(v)) for k, v in RGB.items() if k != parsed.values[0])
            p = float(np.exp(-dist[0] / 40) / (np.exp(-dist[0] / 40) + np.exp(-near / 40)))
            return np.array([p, 1 - p])
        logits = -dist / 20
        e = np.exp(logits - logits.max())
        return e / e.sum()
