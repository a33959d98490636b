"""Retrieval and classification metrics on plain numpy arrays (no torch), small enough to check by hand.

Definitions (binary relevance):
- recall@k: the fraction of a query's relevant items found in its top k, averaged over queries;
- mrr: 1 / rank of the first relevant item (0 when none is ranked), averaged;
- ndcg@10: DCG of the top 10 (gain 1 / log2(rank + 1)) over the ideal DCG;
- accuracy@k: the share of queries whose relevant item is in the top k;
- ece: expected calibration error of the top-1 softmax confidence over `bins` equal-width bins (ECE_BINS = 15 by
  default, the protocol of Guo et al. 2017, so numbers compare with the published ones).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ECE_BINS = 15


def ranks_of_relevant(scores: np.ndarray, relevant: Sequence[np.ndarray]) -> list[np.ndarray]:
    """1-based ranks of each query's relevant items (ties broken by item order, best first)."""
    out = []
    for q in range(scores.shape[0]):
        rel = np.asarray(relevant[q], dtype=np.int64)
        row = scores[q]
        # rank = 1 + items scoring higher + earlier items scoring equal (a stable descending sort).
        higher = (row[None, :] > row[rel][:, None]).sum(axis=1)
        equal_before = np.array([(row[:i] == row[i]).sum() for i in rel], dtype=np.int64)
        out.append(np.sort(higher + equal_before + 1))
    return out


def retrieval_metrics(scores: np.ndarray, relevant: Sequence[np.ndarray], ks: Sequence[int] = (1, 5, 10)) -> dict:
    """recall@k for each k, mrr and ndcg@10 of a (queries, items) score matrix."""
    return summarise_ranks(ranks_of_relevant(scores, relevant), scores.shape[1], ks)


def summarise_ranks(ranks: Sequence[np.ndarray], corpus: int, ks: Sequence[int] = (1, 10)) -> dict:
    """queries, corpus, recall@k for each k, mrr and ndcg@10 from the relevant items' ranks of every query."""
    n = len(ranks)
    out: dict = {"queries": n, "corpus": int(corpus)}
    for k in ks:
        out[f"recall@{k}"] = float(np.mean([(r <= k).sum() / len(r) for r in ranks])) if n else 0.0
    out["mrr"] = float(np.mean([1.0 / r[0] for r in ranks])) if n else 0.0
    out["ndcg@10"] = float(np.mean([_ndcg(r, 10) for r in ranks])) if n else 0.0
    return out


def _ndcg(ranks: np.ndarray, k: int) -> float:
    top = ranks[ranks <= k]
    dcg = float(np.sum(1.0 / np.log2(top + 1)))
    ideal = float(np.sum(1.0 / np.log2(np.arange(1, min(len(ranks), k) + 1) + 1)))
    return dcg / ideal if ideal else 0.0


def accuracy_at(scores: np.ndarray, targets: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict:
    """accuracy@k and mrr when each query has exactly one relevant item (targets[q])."""
    ranks = np.concatenate(ranks_of_relevant(scores, [np.array([t]) for t in targets])) if len(targets) else np.array([])
    out = {f"accuracy@{k}": float(np.mean(ranks <= k)) if len(ranks) else 0.0 for k in ks}
    out["mrr"] = float(np.mean(1.0 / ranks)) if len(ranks) else 0.0
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def calibration(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> tuple[float, list[dict]]:
    """Expected calibration error and the reliability table (per bin: lo, hi, count, confidence, accuracy)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    table, ece, n = [], 0.0, len(confidence)
    for i in range(bins):
        lo, hi = edges[i], edges[i + 1]
        sel = (confidence > lo) & (confidence <= hi) if i else (confidence >= lo) & (confidence <= hi)
        count = int(sel.sum())
        conf = float(confidence[sel].mean()) if count else 0.0
        acc = float(correct[sel].mean()) if count else 0.0
        ece += count / n * abs(acc - conf) if n else 0.0
        table.append({"lo": float(lo), "hi": float(hi), "count": count, "confidence": conf, "accuracy": acc})
    return float(ece), table


def zero_shot(logits: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict:
    """Top-1 accuracy, majority-class baseline and ECE of classifying rows of `logits` into labels."""
    pred = logits.argmax(axis=1)
    correct = pred == labels
    probs = softmax(logits)
    ece, table = calibration(probs.max(axis=1), correct.astype(np.float64), bins)
    counts = np.bincount(labels, minlength=logits.shape[1])
    return {
        "images": int(len(labels)),
        "classes": int(logits.shape[1]),
        "accuracy": float(correct.mean()) if len(labels) else 0.0,
        "majority_baseline": float(counts.max() / len(labels)) if len(labels) else 0.0,
        "ece": ece,
        "reliability": table,
    }


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of `scores` (higher = more likely positive) for boolean labels: the probability
    that a random positive outscores a random negative, ties counting one half (Mann-Whitney U)."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        raise ValueError("roc_auc needs both positive and negative examples")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # Average ranks over runs of equal scores.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def precision_recall_at(scores: np.ndarray, positive: np.ndarray, threshold: float) -> dict:
    """Precision and recall of flagging every item with score >= threshold as positive (precision None when
    nothing is flagged)."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    flagged = scores >= threshold
    hits = int((flagged & positive).sum())
    return {"threshold": float(threshold), "flagged": int(flagged.sum()),
            "precision": hits / int(flagged.sum()) if flagged.any() else None,
            "recall": hits / int(positive.sum()) if positive.any() else None}


def threshold_for_precision(scores: np.ndarray, positive: np.ndarray, target: float) -> float | None:
    """The lowest threshold whose flagged set (score >= threshold) has precision >= target: the most recall at
    that precision. None when no threshold reaches it."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    order = np.argsort(-scores, kind="mergesort")
    s, hits = scores[order], np.cumsum(positive[order])
    last_of_run = np.r_[s[1:] != s[:-1], True]  # a threshold takes every item with an equal score
    precision = hits / np.arange(1, len(s) + 1)
    ok = np.flatnonzero(last_of_run & (precision >= target))
    return float(s[ok[-1]]) if len(ok) else None
