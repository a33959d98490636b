"""Fitting the zero-shot tagger's calibration file (`manage.py calibrate_tagger`), on plain numpy arrays of unit
image vectors and prompt vectors (torch only for the adapter's optimiser).

Per tag group (mmsearch.plugins.zeroshot for the scoring side):
- adapter (optional): a linear probe over the image vectors, W (tags x dim) initialised from the prompt vectors
  and b = 0, logits = LOGIT_SCALE x image @ W.T + b, trained with cross-entropy plus weight decay toward that
  start (lambda x (|W - prompts|^2 + |b / LOGIT_SCALE|^2)) by full-batch L-BFGS on the adapter-fit part.
  lambda is chosen on an inner split of that part from ADAPTER_DECAYS; a group with fewer than
  MIN_ADAPTER_EXAMPLES labelled fit products, or where no lambda beats zero-shot on the inner split, stays
  zero-shot (W = prompts, b = 0 is exactly the zero-shot tagger).
- neighbour cache (optional; Tip-Adapter, Zhang et al. 2022): the image vectors of labelled products the
  calibration does not score (e.g. the embedder's own training catalog) vote for their tags; beta and alpha are
  chosen from NEIGHBOUR_BETAS x NEIGHBOUR_ALPHAS by accuracy on the adapter-fit part, and the group keeps no
  cache unless one beats the scores without it there significantly (McNemar, NEIGHBOUR_Z).
- temperature (Guo et al. 2017, "On Calibration of Modern Neural Networks"): the T > 0 minimising the negative
  log-likelihood of softmax(logits / T) on the calibration part, which neither the adapter nor lambda saw.
  NLL is convex in 1/T, so its derivative is monotone and bisection finds the minimum to machine precision.
- ECE: expected calibration error of the top-1 confidence over ECE_BINS = 15 equal-width bins (Guo et al.'s
  protocol), before (zero-shot, T = 1: what the tagger serves uncalibrated) and after.
- auto-accept threshold: the lowest calibrated top-1 score s such that the group's top tags scoring >= s are
  right at least `target` of the time on the calibration part (and at least MIN_ACCEPTED of them), with the
  share of images it covers; also stored for a ladder of other precisions (OPERATING_TARGETS).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmsearch.plugins.base import VocabGroup
from mmsearch.plugins.zeroshot import (
    CALIBRATION_FORMAT, LOGIT_SCALE, Neighbours, adapter_logits, array_digest, group_to_json, softmax,
    zero_shot_logits,
)
from mmsearch.training import metrics as M

ECE_BINS = M.ECE_BINS  # 15
MIN_ADAPTER_EXAMPLES = 100  # labelled products of a group in the adapter-fit part; fewer: the group stays zero-shot
MIN_CALIBRATION_EXAMPLES = 50  # labelled products in the calibration part; fewer: the group is not calibrated
MIN_ACCEPTED = 20  # an auto-accept threshold must be backed by at least this many accepted calibration images
ADAPTER_DECAYS = (1.0, 0.1, 0.01)
ADAPTER_MAX_ITER = 60
INNER_SHARE = 0.2  # of the adapter-fit part, to choose the weight decay
NEIGHBOUR_BETAS = (10.0, 20.0, 40.0)  # sharpness of exp(-beta (1 - cos)): larger listens to the nearest keys only
NEIGHBOUR_ALPHAS = (1.0, 2.0, 4.0, 8.0)  # weight of the neighbours' log share against the prompts' log softmax
NEIGHBOUR_Z = 2.0  # significance a cache's gain on the fit part needs (see choose_neighbours)
NEIGHBOUR_KEYS = "neighbours.keys"  # the .npz array of key vectors (float16), shared by every group
OPERATING_TARGETS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.98, 0.99)
TEMPERATURE_RANGE = (1e-3, 1e3)


# ---- metrics ---------------------------------------------------------------------------------------------------
def top1(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, correct) of each row's top class (a label < 0 is never correct)."""
    probs = np.asarray(probs)
    return probs.max(axis=1), probs.argmax(axis=1) == np.asarray(labels)


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> tuple[float, list[dict]]:
    """Expected calibration error of the top-1 confidence (equal-width bins) and the reliability table."""
    conf, correct = top1(probs, labels)
    return M.calibration(conf, correct.astype(np.float64), bins)


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(top1(probs, labels)[1].mean()) if len(labels) else 0.0


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of softmax(logits / T) at the labels (all >= 0)."""
    z = np.asarray(logits, np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(lse - z[np.arange(len(z)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = TEMPERATURE_RANGE,
                    iterations: int = 100) -> float:
    """The temperature minimising nll(logits, labels, T) (temperature scaling), within `bounds`.

    With beta = 1 / T, NLL(beta) = mean(logsumexp(beta z) - beta z_y) is convex, and its derivative
    mean(E_softmax(beta z)[z] - z_y) increases with beta: bisection on the derivative's sign (in log beta).
    """
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels)
    if len(z) == 0:
        raise ValueError("no labelled examples to fit a temperature on")
    if np.any(y < 0) or np.any(y >= z.shape[1]):
        raise ValueError("every label must be a class index")
    z_y = z[np.arange(len(z)), y]

    def slope(beta: float) -> float:
        s = beta * z
        s = s - s.max(axis=1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(axis=1, keepdims=True)
        return float(np.mean((p * z).sum(axis=1) - z_y))

    lo, hi = np.log(1 / bounds[1]), np.log(1 / bounds[0])
    if np.allclose(z, z[:, :1]):  # every row's logits equal: softmax is uniform whatever T
        return 1.0
    if slope(np.exp(hi)) <= 0:  # still improving at the sharpest allowed: every example right, with margin
        return float(bounds[0])
    if slope(np.exp(lo)) >= 0:  # worse than chance: the flattest allowed
        return float(bounds[1])
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if slope(np.exp(mid)) > 0:
            hi = mid
        else:
            lo = mid
        if hi - lo < 1e-12:
            break
    return float(1 / np.exp((lo + hi) / 2))


def wilson_lower(right: np.ndarray, n: np.ndarray, confidence: float) -> np.ndarray:
    """One-sided Wilson lower bound at `confidence` of a proportion right / n (element-wise)."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(confidence)
    n = np.maximum(np.asarray(n, np.float64), 1)
    p = np.asarray(right, np.float64) / n
    centre = p + z * z / (2 * n)
    spread = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n)


def auto_accept(probs: np.ndarray, labels: np.ndarray, target: float, min_accepted: int = MIN_ACCEPTED,
                confidence: float | None = None, clusters: np.ndarray | None = None) -> dict:
    """The lowest top-1 score at which accepting every image's top tag scoring at least that is right at least
    `target` of the time (over at least `min_accepted` images): threshold, precision, coverage (share of images
    accepted), accepted. threshold None (coverage 0) when no score reaches the target. With `confidence` (e.g.
    0.95), the one-sided Wilson lower bound of the precision at that level must reach the target (`lower_bound`),
    so a threshold fitted on a sample keeps the target on new items of the same kind. Items that are not
    independent (several questions about one image) name their cluster in `clusters`: the bound then counts the
    distinct clusters accepted, not the items, as its sample size."""
    conf, correct = top1(probs, labels)
    n = len(conf)
    none = {"threshold": None, "precision": None, "coverage": 0.0, "accepted": 0}
    if n == 0:
        return none
    order = np.argsort(-conf, kind="stable")
    c, ok = conf[order], correct[order]
    accepted = np.arange(1, n + 1)
    precision = np.cumsum(ok) / accepted
    bound = precision
    if confidence is not None:
        sample = accepted
        if clusters is not None:
            first = np.zeros(n, dtype=bool)
            first[np.unique(np.asarray(clusters)[order], return_index=True)[1]] = True
            sample = np.cumsum(first)
        bound = wilson_lower(precision * sample, sample, confidence)
    # A threshold accepts every image scoring at least it, so only the last of a run of equal scores is a cut.
    cut = np.r_[c[:-1] > c[1:], True]
    good = np.flatnonzero(cut & (bound >= target) & (accepted >= min_accepted))
    if not len(good):
        return none
    i = int(good.max())  # the lowest threshold: the longest accepted prefix
    out = {"threshold": float(c[i]), "precision": float(precision[i]), "coverage": float((i + 1) / n),
           "accepted": i + 1}
    if confidence is not None:
        out["lower_bound"] = round(float(bound[i]), 4)
    return out


def measure_threshold(probs: np.ndarray, labels: np.ndarray, threshold: float | None) -> dict:
    """Precision and coverage of accepting the top tag at `threshold` (held-out measurement of a chosen one)."""
    if threshold is None:
        return {"threshold": None, "precision": None, "coverage": 0.0, "accepted": 0}
    conf, correct = top1(probs, labels)
    take = conf >= threshold
    return {"threshold": float(threshold), "precision": float(correct[take].mean()) if take.any() else None,
            "coverage": float(take.mean()) if len(take) else 0.0, "accepted": int(take.sum())}


def operating_points(probs: np.ndarray, labels: np.ndarray, targets: Sequence[float],
                     min_accepted: int = MIN_ACCEPTED) -> list[dict]:
    out = []
    for t in sorted(set(float(x) for x in targets)):
        a = auto_accept(probs, labels, t, min_accepted)
        out.append({"target": t, "threshold": a["threshold"], "precision": a["precision"], "coverage": a["coverage"]})
    return out


# ---- adapter -----------------------------------------------------------------------------------------------------
def fit_adapter(x: np.ndarray, y: np.ndarray, prompts: np.ndarray, weight_decay: float,
                max_iter: int = ADAPTER_MAX_ITER) -> tuple[np.ndarray, np.ndarray, int]:
    """Full-batch L-BFGS of the linear probe from the prompt vectors; (W, b, function evaluations)."""
    import torch
    import torch.nn.functional as F

    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    w0 = torch.from_numpy(np.ascontiguousarray(prompts, dtype=np.float32))
    dw = torch.zeros_like(w0, requires_grad=True)
    b = torch.zeros(w0.shape[0], dtype=torch.float32, requires_grad=True)
    opt = torch.optim.LBFGS([dw, b], lr=1.0, max_iter=max_iter, max_eval=int(max_iter * 1.5), history_size=20,
                            tolerance_grad=1e-7, tolerance_change=1e-10, line_search_fn="strong_wolfe")
    evals = [0]

    def closure():
        opt.zero_grad()
        logits = LOGIT_SCALE * xt @ (w0 + dw).T + b
        loss = F.cross_entropy(logits, yt) + weight_decay * (dw.pow(2).sum() + (b / LOGIT_SCALE).pow(2).sum())
        loss.backward()
        evals[0] += 1
        return loss

    opt.step(closure)
    return (w0 + dw).detach().numpy().astype(np.float32), b.detach().numpy().astype(np.float64), evals[0]


@dataclass
class AdapterChoice:
    weight: np.ndarray | None
    bias: np.ndarray | None
    note: str
    weight_decay: float | None = None
    evaluations: int = 0
    inner: dict = field(default_factory=dict)  # inner-split accuracy per candidate ("zero-shot", decays)


def choose_adapter(x: np.ndarray, y: np.ndarray, inner: np.ndarray, prompts: np.ndarray,
                   decays: Sequence[float] = ADAPTER_DECAYS, min_examples: int = MIN_ADAPTER_EXAMPLES,
                   max_iter: int = ADAPTER_MAX_ITER) -> AdapterChoice:
    """Pick the weight decay on the inner split (`inner` rows) against zero-shot, then refit on all rows."""
    if len(y) < min_examples:
        return AdapterChoice(None, None, f"zero-shot: {len(y)} labelled fit products, fewer than {min_examples}")
    outer = ~inner
    if inner.sum() < 10 or outer.sum() < 10 or len(np.unique(y[outer])) < 2:
        return AdapterChoice(None, None, "zero-shot: too few labelled products to choose the weight decay")
    scores = {"zero-shot": accuracy(zero_shot_logits(x[inner], prompts), y[inner])}
    evaluations = 0
    best, best_acc = None, scores["zero-shot"]
    for decay in sorted(decays, reverse=True):  # strongest pull toward the prompts first: it wins ties
        w, b, n = fit_adapter(x[outer], y[outer], prompts, decay, max_iter)
        evaluations += n
        acc = accuracy(adapter_logits(x[inner], w, b), y[inner])
        scores[f"{decay:g}"] = acc
        if acc > best_acc:
            best, best_acc = decay, acc
    if best is None:
        return AdapterChoice(None, None, "zero-shot: no adapter beat zero-shot on the inner split",
                             evaluations=evaluations, inner=scores)
    w, b, n = fit_adapter(x, y, prompts, best, max_iter)
    return AdapterChoice(w, b, f"adapter: weight decay {best:g} (inner-split accuracy {best_acc:.4f} vs zero-shot "
                               f"{scores['zero-shot']:.4f})", best, evaluations + n, scores)


@dataclass
class NeighbourChoice:
    neighbours: Neighbours | None
    note: str
    scores: dict = field(default_factory=dict)  # fit-part accuracy per candidate ("without", "b<beta>a<alpha>")


def choose_neighbours(x: np.ndarray, y: np.ndarray, logits: np.ndarray, keys: np.ndarray, key_labels: np.ndarray,
                      betas: Sequence[float] = NEIGHBOUR_BETAS,
                      alphas: Sequence[float] = NEIGHBOUR_ALPHAS) -> NeighbourChoice:
    """The (beta, alpha) whose neighbour votes added to `logits` score best on these rows, among those whose gain
    over `logits` alone is significant: with b rows it makes right that were wrong and c the reverse,
    b - c >= NEIGHBOUR_Z x sqrt(b + c) (McNemar's test; a chance gain of a few rows among the candidates does not
    count). Ties: the smaller beta, then the smaller alpha. Keys labelled < 0 do not vote."""
    if (key_labels >= 0).sum() == 0:
        return NeighbourChoice(None, "no neighbour cache: no key has a tag of this group")
    right = np.asarray(logits).argmax(axis=1) == y
    scores = {"without": float(right.mean())}
    best, best_acc = None, scores["without"]
    for beta in sorted(betas):
        for alpha in sorted(alphas):
            cache = Neighbours(keys, key_labels, float(beta), float(alpha))
            now = cache.logits(x, logits).argmax(axis=1) == y
            acc = float(now.mean())
            scores[f"b{beta:g}a{alpha:g}"] = acc
            gained, lost = int((now & ~right).sum()), int((right & ~now).sum())
            if acc > best_acc and gained - lost >= NEIGHBOUR_Z * np.sqrt(gained + lost):
                best, best_acc = cache, acc
    if best is None:
        return NeighbourChoice(None, "no neighbour cache: none beat the scores without it significantly on the fit "
                                     "part", scores)
    return NeighbourChoice(best, f"neighbour cache: beta {best.beta:g}, alpha {best.alpha:g} (fit-part accuracy "
                                 f"{best_acc:.4f} vs {scores['without']:.4f} without)", scores)


# ---- one group -----------------------------------------------------------------------------------------------------
@dataclass
class GroupFit:
    group: VocabGroup
    entry: dict  # what tagger.json records for the group
    arrays: dict[str, np.ndarray]  # adapter weights for the .npz
    reliability: dict  # {"before": table, "after": table} on the calibration part (report and plots)


def _scored(logits: np.ndarray, labels: np.ndarray) -> dict:
    """accuracy, ECE at T = 1 and after temperature scaling, the temperature, NLL before/after."""
    t = fit_temperature(logits, labels)
    raw, cal = softmax(logits), softmax(logits / t)
    e_raw, table_raw = ece(raw, labels)
    e_cal, table_cal = ece(cal, labels)
    return {"accuracy": accuracy(raw, labels), "ece": e_raw, "ece_calibrated": e_cal, "temperature": t,
            "nll": nll(logits, labels), "nll_calibrated": nll(logits, labels, t),
            "_tables": (table_raw, table_cal), "_probs": cal}


def fit_group(group: VocabGroup, prompts: np.ndarray, x_fit: np.ndarray, y_fit: np.ndarray, inner: np.ndarray,
              x_cal: np.ndarray, y_cal: np.ndarray, *, target_precision: float = 0.95, adapters: bool = True,
              min_adapter_examples: int = MIN_ADAPTER_EXAMPLES,
              min_calibration_examples: int = MIN_CALIBRATION_EXAMPLES, min_accepted: int = MIN_ACCEPTED,
              decays: Sequence[float] = ADAPTER_DECAYS, max_iter: int = ADAPTER_MAX_ITER,
              neighbours: tuple[np.ndarray, np.ndarray] | None = None) -> GroupFit | str:
    """Adapter and neighbour cache (fit part), temperature and threshold (calibration part) of one group; a
    string says why the group was not calibrated. Labels are tag indices; rows labelled < 0 are left out.
    `neighbours`: (unit key vectors, each key's tag index or -1) of labelled products outside both parts."""
    keep_fit, keep_cal = y_fit >= 0, y_cal >= 0
    x_fit, y_fit, inner = x_fit[keep_fit], y_fit[keep_fit], inner[keep_fit]
    x_cal, y_cal = x_cal[keep_cal], y_cal[keep_cal]
    if len(y_cal) < min_calibration_examples:
        return (f"{group.slug}: {len(y_cal)} labelled calibration products, fewer than {min_calibration_examples}: "
                "not calibrated")
    if adapters:
        choice = choose_adapter(x_fit, y_fit, inner, prompts, decays, min_adapter_examples, max_iter)
    else:
        choice = AdapterChoice(None, None, "zero-shot: adapters off (--no-adapters)")

    def base(x: np.ndarray) -> np.ndarray:
        if choice.weight is not None:
            return adapter_logits(x, choice.weight, choice.bias)
        return zero_shot_logits(x, prompts)

    if neighbours is None:
        cache = NeighbourChoice(None, "no neighbour cache given")
    else:
        cache = choose_neighbours(x_fit, y_fit, base(x_fit), *neighbours)
    zs = _scored(zero_shot_logits(x_cal, prompts), y_cal)
    served_logits = base(x_cal)
    if cache.neighbours is not None:
        served_logits = cache.neighbours.logits(x_cal, served_logits)
    ad = _scored(served_logits, y_cal) if choice.weight is not None or cache.neighbours is not None else None
    served = ad or zs
    probs = served["_probs"]
    accept = auto_accept(probs, y_cal, target_precision, min_accepted)
    arrays = {}
    adapter = None
    if choice.weight is not None:
        arrays = {f"{group.slug}.weight": choice.weight, f"{group.slug}.bias": choice.bias}
        adapter = {"weight": f"{group.slug}.weight", "bias": f"{group.slug}.bias", "weight_decay": choice.weight_decay,
                   "evaluations": choice.evaluations}
    neighbour_entry = None
    if cache.neighbours is not None:
        keys, key_labels = neighbours
        arrays[NEIGHBOUR_KEYS] = np.asarray(keys, np.float16)
        arrays[f"{group.slug}.neighbour_labels"] = np.asarray(key_labels, np.int32)
        neighbour_entry = {"keys": NEIGHBOUR_KEYS, "labels": f"{group.slug}.neighbour_labels",
                           "beta": cache.neighbours.beta, "alpha": cache.neighbours.alpha,
                           "voting_keys": int((np.asarray(key_labels) >= 0).sum())}

    def public(d: dict | None) -> dict | None:
        return None if d is None else {k: v for k, v in d.items() if not k.startswith("_")}

    entry = {
        **group_to_json(group),
        "temperature": served["temperature"],
        "adapter": adapter,
        "adapter_note": choice.note,
        "adapter_inner_accuracy": choice.inner,
        "neighbours": neighbour_entry,
        "neighbour_note": cache.note,
        "neighbour_fit_accuracy": cache.scores,
        "target_precision": float(target_precision),
        "threshold": accept["threshold"],
        "precision": accept["precision"],
        "coverage": accept["coverage"],
        "accepted": accept["accepted"],
        "operating_points": operating_points(probs, y_cal, (*OPERATING_TARGETS, target_precision), min_accepted),
        "accuracy": served["accuracy"],
        "ece_before": zs["ece"],
        "ece_after": served["ece_calibrated"],
        "zero_shot": public(zs),
        "adapted": public(ad),
        "examples": {"fit": int(len(y_fit)), "calibration": int(len(y_cal)), "fit_inner": int(inner.sum())},
    }
    return GroupFit(group, entry, arrays, {"before": zs["_tables"][0], "after": served["_tables"][1]})


# ---- the file --------------------------------------------------------------------------------------------------------
def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as fh:
        write(fh)
    tmp.replace(path)


def write_calibration(path: Path, embedder_model_key: str, fits: Sequence[GroupFit],
                      meta: Mapping | None = None, flip: bool = False) -> dict:
    """Write tagger.json (+ tagger.npz with the adapters) and return the JSON. The version is a hash of what
    changes scores (embedder key, flip, every group's entry, the adapters' contents): refitting the same data
    gives the same version. `flip`: the fits scored flip-averaged image vectors (zeroshot.flip_average)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    for fit in fits:
        arrays.update(fit.arrays)
    adapters = {"file": path.with_suffix(".npz").name, "sha256": array_digest(arrays)} if arrays else None
    groups = {fit.group.slug: fit.entry for fit in fits}
    body = {"format": CALIBRATION_FORMAT, "embedder_model_key": embedder_model_key, "adapters": adapters,
            "groups": groups, **({"flip": True} if flip else {})}
    version = hashlib.sha256(json.dumps(body, sort_keys=True, default=float).encode()).hexdigest()[:12]
    raw = {"format": CALIBRATION_FORMAT, "version": version, "embedder_model_key": embedder_model_key,
           **dict(meta or {}), "flip": bool(flip), "scale": LOGIT_SCALE, "ece_bins": ECE_BINS, "adapters": adapters,
           "groups": groups}
    if arrays:
        _atomic_write(path.with_suffix(".npz"), lambda fh: np.savez(fh, **arrays))
    elif path.with_suffix(".npz").is_file():
        path.with_suffix(".npz").unlink()
    _atomic_write(path, lambda fh: fh.write((json.dumps(raw, indent=2) + "\n").encode()))
    return raw


def write_reliability(fits: Sequence[GroupFit], path: Path, title: str = "") -> Path:
    """One reliability diagram per group: zero-shot before (T = 1) and the served scores after calibration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    cols = min(3, max(1, len(fits)))
    rows = (len(fits) + cols - 1) // cols or 1
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.8 * rows), squeeze=False)
    for ax, fit in zip(axes.flat, fits):
        after = [b for b in fit.reliability["after"] if b["count"]]
        width = 1 / len(fit.reliability["after"])
        ax.bar([(b["lo"] + b["hi"]) / 2 for b in after], [b["accuracy"] for b in after], width=width * 0.9,
               color="tab:blue", alpha=0.6,
               label=f"{'adapter' if fit.entry['adapter'] else 'zero-shot'} / T={fit.entry['temperature']:.2f}: "
                     f"ECE {fit.entry['ece_after']:.3f}")
        before = [b for b in fit.reliability["before"] if b["count"]]
        ax.plot([b["confidence"] for b in before], [b["accuracy"] for b in before], "o-", color="tab:red", ms=3,
                lw=1, label=f"zero-shot, uncalibrated: ECE {fit.entry['ece_before']:.3f}")
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        if fit.entry["threshold"] is not None:
            ax.axvline(fit.entry["threshold"], color="tab:green", lw=1,
                       label=f"auto-accept {fit.entry['threshold']:.3f} (cov. {fit.entry['coverage']:.2f})")
        ax.set_title(f"{fit.group.slug}: acc {fit.entry['accuracy']:.3f} "
                     f"({fit.entry['examples']['calibration']} images)", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[len(fits):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
