"""Photo queries: a shopper's photo is embedded as the mean of several views of it (test-time augmentation).

A shopper photo shows the product somewhere in a cluttered scene, and a small image tower sees it squashed to
its input size; the centre crops zoom in on the product and the mirrored copies cancel left/right quirks of
the model. The query vector is the normalised mean of the views' unit vectors. Catalog images are indexed as
they are (one vector each), so this costs only the query: len(scales) x (2 if mirror) image embeddings.

Search by photo (`engine.search`) and `manage.py evaluate`'s photo_to_product both embed through
`embed_views`, with the views set in settings.MMSEARCH_SEARCH (PHOTO_QUERY_SCALES, PHOTO_QUERY_MIRROR).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mmsearch.plugins.runtime import unit_rows

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

# Chosen on the grocery val photos over ten trained models (README, "Query views").
DEFAULT_SCALES = (1.0, 0.7, 0.5)
DEFAULT_MIRROR = True
# A larger photo is shrunk to this longest side before its views are cut: a 40-megapixel upload would
# otherwise be copied six times at full size, and no image tower looks at more than a few hundred pixels.
MAX_SIDE = 1024


@dataclass(frozen=True)
class PhotoViews:
    """Centre crops keeping `scales` of the photo's width and height (1.0 = the whole photo), each also
    mirrored left-right when `mirror`."""

    scales: tuple[float, ...] = DEFAULT_SCALES
    mirror: bool = DEFAULT_MIRROR

    def __post_init__(self) -> None:
        problem = views_problem(self.scales, self.mirror)
        if problem:
            raise ValueError(problem)
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))

    @classmethod
    def from_config(cls, conf: dict) -> PhotoViews:
        """From a search config (mmsearch.search.config.config()): PHOTO_QUERY_SCALES and PHOTO_QUERY_MIRROR."""
        return cls(conf["PHOTO_QUERY_SCALES"], conf["PHOTO_QUERY_MIRROR"])

    @property
    def count(self) -> int:
        return len(self.scales) * (2 if self.mirror else 1)

    @property
    def whole_index(self) -> int | None:
        """Where the whole, unmirrored photo is among the views of `of`, or None when the scales lack 1.0."""
        return self.scales.index(1.0) * (2 if self.mirror else 1) if 1.0 in self.scales else None

    def of(self, image: Image.Image) -> list[Image.Image]:
        """The views of one image: per scale, the centre crop, then (with mirror) its mirror image."""
        from PIL import ImageOps

        if max(image.size) > MAX_SIDE:
            image = image.copy()
            image.thumbnail((MAX_SIDE, MAX_SIDE))
        w, h = image.size
        out = []
        for s in self.scales:
            cw, ch = max(1, round(w * s)), max(1, round(h * s))
            left, top = (w - cw) // 2, (h - ch) // 2
            view = image if (cw, ch) == (w, h) else image.crop((left, top, left + cw, top + ch))
            out.append(view)
            if self.mirror:
                out.append(ImageOps.mirror(view))
        return out

    def as_dict(self) -> dict:
        return {"scales": list(self.scales), "mirror": self.mirror, "count": self.count}


def views_problem(scales, mirror) -> str | None:
    """What is wrong with these settings, in one line, or None."""
    if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence) or not scales:
        return f"PHOTO_QUERY_SCALES must be a non-empty list of numbers in (0, 1], not {scales!r}"
    for s in scales:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s <= 1:
            return f"PHOTO_QUERY_SCALES must hold numbers in (0, 1] (1 = the whole photo), not {s!r}"
    if not isinstance(mirror, bool):
        return f"PHOTO_QUERY_MIRROR must be True or False, not {mirror!r}"
    return None


def embed_views(embedder, images: Sequence[Image.Image], views: PhotoViews) -> np.ndarray:
    """(views.count, len(images), dim) unit rows: every view of every image, embedded in one call."""
    per_image = [views.of(im if im.mode == "RGB" else im.convert("RGB")) for im in images]
    flat = [v for group in per_image for v in group]
    if not flat:
        return np.zeros((views.count, 0, embedder.dim), np.float32)
    rows = unit_rows(embedder.embed_images(flat))
    return rows.reshape(len(images), views.count, -1).transpose(1, 0, 2)


def query_vectors(per_view: np.ndarray) -> np.ndarray:
    """(n, dim) unit query vectors: the normalised mean of each image's view vectors."""
    return unit_rows(per_view.mean(axis=0))
