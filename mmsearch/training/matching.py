"""Image-text match scores: does a product's text describe its images? (the filter of BLIP's CapFilt, for a catalog)

Scores (higher = the text matches the images better), from any Embedder plugin:
- cosine: the cosine between the product's image vector (the unit mean of its images' vectors) and its text's
  vector.
- csls: cross-domain similarity local scaling (Lample et al. 2018, "Word translation without parallel data"):
  2 cosine - r_image - r_text, where r_image is the mean cosine of the image to its CSLS_K nearest texts of the
  catalog and r_text that of the text to its CSLS_K nearest images. It removes what a plain cosine carries
  about the item rather than the pair (some photos are close to every text, some titles to every photo), so
  one threshold serves every kind of product.
The text is the product's title by default (`text="title"`); `text="product"` scores the whole product text
the models are trained on (mmsearch.text.product_text: title, category path and attributes).

Evaluation by injected corruption (`corrupt`, `evaluate_matching`): a copy of the catalog in which a share of
the products swap titles (or images) in pairs with products of another article type or colour; every score is
measured as a detector of the swapped products: ROC AUC, and precision and recall at the default threshold,
chosen on one half of the products (split by sku) for a stated precision and measured on the other half.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from mmsearch.plugins.runtime import unit_rows
from mmsearch.training import data as D
from mmsearch.training import metrics as M

SCORES = ("cosine", "csls")
DEFAULT_SCORE = "csls"
TEXTS = ("title", "product")
CSLS_K = 10
CORRUPTION_KINDS = ("title", "image")
FRACTIONS = (0.1, 0.3)
# The default threshold flags mismatches at this precision; it is chosen at DEFAULT_THRESHOLD_FRACTION of the
# products corrupted (a catalog with more mismatches than that needs a bulk fix, not a review queue).
TARGET_PRECISION = 0.9
DEFAULT_THRESHOLD_FRACTION = 0.1
TEXT_BATCH = 256
_CHUNK = 1024


class MatchingError(ValueError):
    """Bad input to the matching tools; the message names the value and what would be valid."""


def match_text(product: D.Product, text: str = "title") -> str:
    """The text of a product that is matched against its images."""
    if text == "title":
        return product.title
    if text == "product":
        return product.text
    raise MatchingError(f"text={text!r}: use one of {', '.join(TEXTS)}")


def _check_score(score: str) -> str:
    if score not in SCORES:
        raise MatchingError(f"score {score!r}: use one of {', '.join(SCORES)}")
    return score


@dataclass(frozen=True)
class Vectors:
    """Unit vectors of each product's images (the mean of its image vectors, renormalised) and of its text."""

    images: np.ndarray
    texts: np.ndarray
    model_key: str  # the embedder's
    text: str = "title"

    def score_key(self, score: str = DEFAULT_SCORE) -> str:
        """The model_key of a stored match score: the score, the text it reads and the embedder."""
        return f"match:{_check_score(score)}:{self.text}:{self.model_key}"


def product_vectors(embedder, products: Sequence[D.Product], *, text: str = "title", cache_dir: Path | None = None,
                    progress: Callable[[str, int, int], None] | None = None) -> Vectors:
    """Embed every product's images (each file once, cached per (model_key, file) under cache_dir as `evaluate`
    caches them) and texts. progress(stage, done, total) is called as the work advances."""
    from mmsearch.training.evaluation import image_vectors

    texts = [match_text(p, text) for p in products]
    index: dict[Path, int] = {}
    paths: list[Path] = []
    owner: list[int] = []
    for i, p in enumerate(products):
        for img in p.images:
            key = img.resolve()
            if key not in index:
                index[key] = len(paths)
                paths.append(img)
            owner.append(i)
    rows = image_vectors(embedder, paths, cache_dir, (lambda n: progress("images", n, len(paths))) if progress else None)
    flat = np.array([index[img.resolve()] for p in products for img in p.images], dtype=np.int64)
    sums = np.zeros((len(products), rows.shape[1]), np.float32)
    np.add.at(sums, np.asarray(owner, dtype=np.int64), rows[flat])
    txt = []
    for start in range(0, len(texts), TEXT_BATCH):
        txt.append(unit_rows(embedder.embed_texts(texts[start:start + TEXT_BATCH])))
        if progress:
            progress("texts", min(start + TEXT_BATCH, len(texts)), len(texts))
    return Vectors(unit_rows(sums), np.concatenate(txt) if txt else np.zeros((0, rows.shape[1]), np.float32),
                   embedder.model_key, text)


def _mean_top_k(queries: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """The mean cosine of each query row to its k most similar item rows (in chunks: catalogs are large)."""
    out = np.empty(len(queries), np.float32)
    for start in range(0, len(queries), _CHUNK):
        sims = queries[start:start + _CHUNK] @ items.T
        out[start:start + _CHUNK] = np.partition(sims, sims.shape[1] - k, axis=1)[:, -k:].mean(axis=1)
    return out


def scores(images: np.ndarray, texts: np.ndarray, k: int = CSLS_K) -> dict[str, np.ndarray]:
    """Every score of SCORES for the pairs (images[i], texts[i]) of one catalog (unit rows)."""
    if len(images) != len(texts):
        raise MatchingError(f"{len(images)} image rows against {len(texts)} text rows")
    cosine = np.einsum("ij,ij->i", images, texts).astype(np.float32)
    if len(images) < 2:
        return {"cosine": cosine, "csls": cosine.copy()}
    k = min(k, len(images))
    csls = 2 * cosine - _mean_top_k(images, texts, k) - _mean_top_k(texts, images, k)
    return {"cosine": cosine, "csls": csls.astype(np.float32)}


# --- corruption ------------------------------------------------------------------------------------------------
def kind_of(product: D.Product) -> tuple[str, str]:
    """(article type, colour) of a product: the attributes when present, else the category's last level."""
    attrs = product.attributes
    article = attrs.get("article_type") or (product.category.rsplit("/", 1)[-1] if product.category else "")
    return str(article).strip().lower(), str(attrs.get("colour") or attrs.get("color") or "").strip().lower()


def _different(a: D.Product, b: D.Product) -> bool:
    ka, kb = kind_of(a), kind_of(b)
    return (ka[0] != kb[0] or ka[1] != kb[1]) and D.title_key(a.title) != D.title_key(b.title)


@dataclass(frozen=True)
class Corruption:
    """A corrupted copy of a catalog: `partner[i]` is the product whose title (kind "title") or images (kind
    "image") product i now has, or -1 when product i is untouched."""

    products: list[D.Product]
    partner: np.ndarray
    kind: str
    fraction: float
    seed: int

    @property
    def corrupted(self) -> np.ndarray:
        return self.partner >= 0

    def sources(self) -> tuple[np.ndarray, np.ndarray]:
        """(image source, text source) per product: the original products whose images and text it now has."""
        own = np.arange(len(self.partner))
        swapped = np.where(self.partner >= 0, self.partner, own)
        return (swapped, own) if self.kind == "image" else (own, swapped)


def corrupt(products: Sequence[D.Product], fraction: float, seed: int, kind: str = "title") -> Corruption:
    """Swap the titles (or the image lists) of `fraction` of the products in pairs, each pair of a different
    article type or colour (and different titles); the same (products, fraction, seed, kind) always gives the
    same copy. The originals are not changed."""
    if kind not in CORRUPTION_KINDS:
        raise MatchingError(f"corruption kind {kind!r}: use one of {', '.join(CORRUPTION_KINDS)}")
    if not 0 < fraction <= 1:
        raise MatchingError(f"fraction {fraction!r} must be in (0, 1]")
    n = len(products)
    rng = np.random.default_rng(seed)
    wanted = int(round(fraction * n / 2))  # pairs
    partner = np.full(n, -1, dtype=np.int64)
    free = list(rng.permutation(n))
    pairs = 0
    while pairs < wanted and len(free) >= 2:
        a = free.pop()
        # The first product in the (random) order that differs from `a`; almost always the next one.
        for pos in range(len(free) - 1, -1, -1):
            if _different(products[a], products[free[pos]]):
                b = free.pop(pos)
                partner[a], partner[b] = b, a
                pairs += 1
                break
    out = list(products)
    for i in np.flatnonzero(partner >= 0):
        j = partner[i]
        out[i] = (replace(products[i], title=products[j].title) if kind == "title"
                  else replace(products[i], images=products[j].images))
    return Corruption(out, partner, kind, float(fraction), int(seed))


def swap_threshold(images: np.ndarray, texts: np.ndarray, products: Sequence[D.Product], recall: float = 0.9,
                   score: str = DEFAULT_SCORE, seed: int = 0, k: int = CSLS_K) -> float:
    """A threshold fitted on a catalog itself, with no labels: the score at or below which a share `recall` of
    freshly injected title swaps fall (DEFAULT_THRESHOLD_FRACTION of the products swapped, as `corrupt` swaps
    them). The catalog's own mismatches need not be known: an injected swap is a mismatch whatever the text was."""
    if not 0 < recall <= 1:
        raise MatchingError(f"recall {recall!r} must be in (0, 1]")
    c = corrupt(products, DEFAULT_THRESHOLD_FRACTION, seed, "title")
    if not c.corrupted.any():
        raise MatchingError(f"{len(products)} products: too few of different kinds to inject a title swap")
    img_src, txt_src = c.sources()
    swapped = scores(images[img_src], texts[txt_src], k)[_check_score(score)][c.corrupted]
    return float(np.quantile(swapped, recall))


# --- evaluation ------------------------------------------------------------------------------------------------
def calibration_half(products: Sequence[D.Product]) -> np.ndarray:
    """True for the products whose default threshold is fitted (a stable half by sku); the rest measure it."""
    return np.array([D.in_share("matching:" + p.sku, 0.5) for p in products])


def _auc(score: np.ndarray, corrupted: np.ndarray) -> float | None:
    """ROC AUC of flagging low scores, or None when the products are all corrupted or all clean."""
    return M.roc_auc(-score, corrupted) if 0 < corrupted.sum() < len(corrupted) else None


def detection(score: np.ndarray, corrupted: np.ndarray, threshold: float | None) -> dict:
    """A score as a detector of corrupted products (low score = flagged): ROC AUC, and precision and recall of
    flagging score <= threshold."""
    out = {"roc_auc": _auc(score, corrupted)}
    if threshold is not None:
        pr = M.precision_recall_at(-score, corrupted, -threshold)
        out.update(threshold=threshold, flagged=pr["flagged"], precision=pr["precision"], recall=pr["recall"])
    else:
        out.update(threshold=None, flagged=0, precision=None, recall=0.0)
    return out


def fit_threshold(score: np.ndarray, corrupted: np.ndarray, target: float = TARGET_PRECISION) -> float | None:
    """The highest score threshold (flag score <= threshold) whose flags are corrupted products with precision
    >= target; None when none reaches it."""
    t = M.threshold_for_precision(-score, corrupted, target)
    return None if t is None else -t


def evaluate_matching(vectors: Vectors, products: Sequence[D.Product], *, seed: int = 0,
                      fractions: Sequence[float] = FRACTIONS, kinds: Sequence[str] = CORRUPTION_KINDS,
                      target_precision: float = TARGET_PRECISION, top: int = 20, k: int = CSLS_K,
                      extra: Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]] | None = None) -> dict:
    """Every score on every corruption of the catalog (its vectors from product_vectors), and the `top` products
    of the uncorrupted catalog the default score ranks as the worst matches. The default threshold of each score
    is fitted on the calibration half of the title corruption at DEFAULT_THRESHOLD_FRACTION (or the first
    fraction) and measured on the other half of every corruption. `extra(image_source, text_source)` adds scores
    of another model (the ITM head) for the pairs (product image_source[i]'s images, product text_source[i]'s text)."""
    if len(products) != len(vectors.images):
        raise MatchingError(f"{len(products)} products against {len(vectors.images)} vector rows")
    fit_half = calibration_half(products)
    runs: dict[str, dict] = {}
    corruptions = {(kind, f): corrupt(products, f, seed, kind) for kind in kinds for f in fractions}
    scored = {}
    for key, c in corruptions.items():
        img_src, txt_src = c.sources()
        scored[key] = scores(vectors.images[img_src], vectors.texts[txt_src], k)
        if extra is not None:
            scored[key].update(extra(img_src, txt_src))
    names = list(next(iter(scored.values())))
    fit_key = ((kinds[0], DEFAULT_THRESHOLD_FRACTION) if (kinds[0], DEFAULT_THRESHOLD_FRACTION) in corruptions
               else (kinds[0], fractions[0]))
    thresholds = {}
    for name in names:
        c = corruptions[fit_key]
        thresholds[name] = fit_threshold(scored[fit_key][name][fit_half], c.corrupted[fit_half], target_precision)
    for (kind, f), c in corruptions.items():
        runs[f"{kind}@{f:g}"] = {
            "kind": kind, "fraction": f, "corrupted": int(c.corrupted.sum()),
            "scores": {name: {**detection(scored[(kind, f)][name][~fit_half], c.corrupted[~fit_half], thresholds[name]),
                              "roc_auc_all": _auc(scored[(kind, f)][name], c.corrupted)}
                       for name in names},
        }
    clean = scores(vectors.images, vectors.texts, k)
    if extra is not None:
        own = np.arange(len(products))
        clean.update(extra(own, own))
    worst = np.argsort(clean[DEFAULT_SCORE], kind="mergesort")[:top]
    return {
        "model_key": vectors.model_key,
        "products": len(products),
        "seed": seed,
        "csls_k": k,
        "default_score": DEFAULT_SCORE,
        "threshold": {"target_precision": target_precision, "fitted_on": f"{fit_key[0]}@{fit_key[1]:g}",
                      "calibration_products": int(fit_half.sum()), "measured_on": int((~fit_half).sum()),
                      "values": thresholds},
        "runs": runs,
        "top_mismatches": [
            {"sku": products[i].sku, "title": products[i].title, "category": products[i].category,
             "article_type": products[i].attributes.get("article_type"),
             "colour": products[i].attributes.get("colour"),
             "image": str(products[i].images[0]) if products[i].images else None,
             **{name: round(float(clean[name][i]), 4) for name in names}}
            for i in worst
        ],
    }


# --- the report ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReportRow:
    """One product of a match report: its scores, and the caption proposed for its first image (when a captioner
    is configured)."""

    rank: int
    sku: str
    title: str
    category: str
    score: float
    cosine: float
    csls: float
    model_key: str
    flagged: bool | None = None
    caption: str = ""
    caption_model_key: str = ""


REPORT_COLUMNS = ("rank", "sku", "title", "category", "score", "cosine", "csls", "model_key", "flagged", "caption",
                  "caption_model_key")


def propose_captions(captioner, products: Sequence[D.Product], progress: Callable[[int], None] | None = None,
                     batch: int = 64) -> list:
    """The captioner's Caption for each product's first image."""
    out = []
    for start in range(0, len(products), batch):
        out += captioner.caption([D.open_rgb(p.images[0]) for p in products[start:start + batch]])
        if progress:
            progress(min(start + batch, len(products)))
    return out


def report(products: Sequence[D.Product], vectors: Vectors, captions: Sequence | None = None,
           score: str = DEFAULT_SCORE, k: int = CSLS_K, threshold: float | None = None) -> list[ReportRow]:
    """Every product, worst match first (ranked by `score`, ties by catalog order); with a threshold (from
    evaluate_matching), `flagged` says whether the score is at or below it."""
    by_name = scores(vectors.images, vectors.texts, k)
    main = by_name[_check_score(score)]
    rows = []
    for rank, i in enumerate(np.argsort(main, kind="mergesort"), 1):
        p = products[i]
        cap = captions[i] if captions is not None else None
        rows.append(ReportRow(rank, p.sku, p.title, p.category, round(float(main[i]), 6),
                              round(float(by_name["cosine"][i]), 6), round(float(by_name["csls"][i]), 6),
                              vectors.score_key(score),
                              None if threshold is None else bool(main[i] <= threshold),
                              cap.text if cap is not None else "",
                              cap.model_key if cap is not None else ""))
    return rows
