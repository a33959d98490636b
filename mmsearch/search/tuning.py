"""Fitting the fusion to labelled queries: gather each query's signals once, then score any weights offline.

    labelled = load_labelled("queries.jsonl")            # {"q": ..., "relevant": {"attr.colour": ["Red"], ...}}
    gathered = gather_all(labelled)                      # one engine.gather per query (the slow part)
    table = Table.build(gathered, labelled)              # ranks and boost matches as arrays
    table.precision(weights, boosts)                     # mean precision@10 of that fusion, in milliseconds
    fitted = fit(table, start_weights, start_boosts)     # coordinate ascent on mean precision@10

A labelled query is relevant-by-filters: a product is relevant when it has, for every filter of `relevant`,
one of its values (spelled as the catalog spells them; checked with the adapter's products_having). Optional
`spans` ([{"span": "jumper", "filter": "attr.article_type", "values": ["Sweaters"]}]) label what
understanding should read; `calibrate` fits the typo, embedding and lexicon confidences and the embedding
threshold on them.

Used by `manage.py fit_search_weights` and by bench/query_understanding.py.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmsearch.adapter import get_catalog
from mmsearch.search.config import config

SIGNALS = ("lexical", "lexical_partial", "trigram", "text_vector", "image_vector", "understood")
WEIGHT_GRID = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0)
BOOST_GRID = (0.0, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.08)


def load_labelled(path: str | Path) -> list[dict]:
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row.get("q"), str) or not isinstance(row.get("relevant"), dict) or not row["relevant"]:
            raise ValueError(f"{path}: line {n}: needs a text 'q' and a non-empty 'relevant' object of filters")
        rows.append(row)
    return rows


def split(rows: Sequence[dict], holdout: float, salt: str = "fit") -> tuple[list[dict], list[dict]]:
    """(fit, held out) by a stable hash of each query's text: the same query is always on the same side."""
    fit_part, held = [], []
    for row in rows:
        h = int.from_bytes(hashlib.sha256(f"{salt}\0{row['q']}".encode()).digest()[:4], "big") / 2**32
        (held if h < holdout else fit_part).append(row)
    return fit_part, held


def relevant_ids(label: dict) -> set[int]:
    wanted = {k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in label["relevant"].items()}
    return set(get_catalog().products_having({}, wanted).values_list("id", flat=True))


def gather_all(rows: Sequence[dict], *, progress=None) -> list:
    """engine.gather for each labelled query (hybrid, understanding on, 10 per page), with every candidate's
    boosted values checked (any weights may bring any candidate to the top)."""
    from django.db import transaction

    from mmsearch.search.engine import check_boosts, gather
    from mmsearch.search.params import SearchQuery

    out = []
    for i, row in enumerate(rows):
        with transaction.atomic():
            g = gather(SearchQuery(text=row["q"], mode=row.get("mode", "hybrid"), limit=10))
            check_boosts(g, [c.item_id for cands in g.ranked.values() for c in cands])
        out.append(g)
        if progress:
            progress(i + 1, len(rows))
    return out


@dataclass
class Table:
    """Per query: candidate ids, a rank per signal (0 = not found) and a boost confidence per filter."""

    ids: list[np.ndarray]
    ranks: list[np.ndarray]  # candidates x SIGNALS
    boost_filters: list[list[str]]
    boost_conf: list[np.ndarray]  # candidates x that query's filters
    relevant: list[set[int]]
    signals: tuple[str, ...] = SIGNALS

    @classmethod
    def build(cls, gathered: Sequence, rows: Sequence[dict], relevant: Sequence[set[int]] | None = None) -> "Table":
        relevant = list(relevant) if relevant is not None else [relevant_ids(r) for r in rows]
        ids_l, ranks_l, bf_l, bc_l = [], [], [], []
        for g in gathered:
            order: dict[int, int] = {}
            for cands in g.ranked.values():
                for c in cands:
                    order.setdefault(c.item_id, len(order))
            ids = np.array(list(order), dtype=np.int64)
            ranks = np.zeros((len(ids), len(SIGNALS)), dtype=np.float64)
            for s, name in enumerate(SIGNALS):
                seen: set[int] = set()
                rank = 0
                for c in g.ranked.get(name, ()):
                    if c.item_id in seen:
                        continue
                    seen.add(c.item_id)
                    rank += 1
                    ranks[order[c.item_id], s] = rank
            filters = list(g.matches)
            conf = np.zeros((len(ids), len(filters)), dtype=np.float64)
            for f, name in enumerate(filters):
                have, confidence = g.matches[name]
                for pid in have:
                    if pid in order:
                        conf[order[pid], f] = confidence
            ids_l.append(ids)
            ranks_l.append(ranks)
            bf_l.append(filters)
            bc_l.append(conf)
        return cls(ids_l, ranks_l, bf_l, bc_l, relevant)

    def top(self, q: int, weights: dict, boosts: dict, rrf_k: float, n: int = 10) -> list[int]:
        """The first n ids of query q under these weights (the engine's rrf and boosts, on arrays)."""
        from mmsearch.search.engine import boost_for

        ranks = self.ranks[q]
        if not len(ranks):
            return []
        w = np.array([max(float(weights.get(s, 1.0)), 0.0) for s in self.signals])
        found = ranks > 0
        contrib = np.where(found, w / (rrf_k + np.where(found, ranks, 1.0)), 0.0)
        score = contrib.sum(axis=1)
        present = (found & (w > 0)).any(axis=1)
        if self.boost_filters[q]:
            b = np.array([boost_for(f, boosts) for f in self.boost_filters[q]])
            score = score + self.boost_conf[q] @ b
        ids = self.ids[q]
        keep = np.flatnonzero(present)
        order = keep[np.lexsort((ids[keep], -score[keep]))]
        return [int(i) for i in ids[order[:n]]]

    def precisions(self, weights: dict, boosts: dict, rrf_k: float | None = None, n: int = 10) -> list[float]:
        rrf_k = float(config()["RRF_K"] if rrf_k is None else rrf_k)
        return [sum(pid in self.relevant[q] for pid in self.top(q, weights, boosts, rrf_k, n)) / n
                for q in range(len(self.ids))]

    def precision(self, weights: dict, boosts: dict, rrf_k: float | None = None, n: int = 10) -> float:
        values = self.precisions(weights, boosts, rrf_k, n)
        return float(np.mean(values)) if values else 0.0

    def filters(self) -> list[str]:
        return sorted({f for fs in self.boost_filters for f in fs})


@dataclass
class Fitted:
    weights: dict
    boosts: dict
    score: float
    trace: list = field(default_factory=list)


def fit(table: Table, weights: dict, boosts: dict, *, signals: Iterable[str] = SIGNALS, passes: int = 3,
        rrf_k: float | None = None, min_gain: float = 0.0) -> Fitted:
    """Coordinate ascent on mean precision@10: each weight over WEIGHT_GRID and each boost over BOOST_GRID in
    turn, keeping a change only when it improves the score by more than `min_gain` (ties keep the current
    value), for `passes` rounds. The text_vector weight stays fixed as the scale (RRF is invariant to scaling
    all weights)."""
    weights = {s: float(weights.get(s, 1.0)) for s in SIGNALS}
    boosts = dict(boosts)
    for name in table.filters():
        boosts.setdefault(name, float(boosts.get("default", 0.0)))
    best = table.precision(weights, boosts, rrf_k)
    trace = [("start", best)]
    tuned = [s for s in signals if s != "text_vector" and s in SIGNALS]
    for _ in range(passes):
        improved = False
        for name in tuned:
            for value in WEIGHT_GRID:
                trial = {**weights, name: value}
                score = table.precision(trial, boosts, rrf_k)
                if score > best + min_gain + 1e-9:
                    best, weights, improved = score, trial, True
                    trace.append((f"WEIGHTS.{name}={value}", round(best, 4)))
        for name in [f for f in boosts if f != "default"]:
            for value in BOOST_GRID:
                trial = {**boosts, name: value}
                score = table.precision(weights, trial, rrf_k)
                if score > best + min_gain + 1e-9:
                    best, boosts, improved = score, trial, True
                    trace.append((f"BOOSTS.{name}={value}", round(best, 4)))
        if not improved:
            break
    return Fitted(weights, boosts, best, trace)


# --- understanding's calibration ----------------------------------------------------------------------------

@dataclass
class SpanCandidate:
    stage: str  # typo | embedding | lexicon
    correct: bool
    similarity: float = 0.0
    margin: float = 0.0
    distance: float = 0.0
    cost: float = 0.0  # the lexicon's WordNet cost


def span_candidates(rows: Sequence[dict], floor: float = 0.3) -> tuple[list[SpanCandidate], dict]:
    """Every typo, embedding and lexicon match understanding makes on the labelled spans, with the embedding threshold
    lowered to `floor` and no margin, each marked correct when a labelled span over its words names its
    value. Also counts exact matches ({"exact": n, "exact_correct": m})."""
    from django.test import override_settings
    from django.conf import settings

    from mmsearch.search import signals, understanding

    base = getattr(settings, "MMSEARCH_SEARCH", {}) or {}
    current = config()
    loose = {**base, "WEIGHTS_FILE": None, "WEIGHTS": current["WEIGHTS"], "BOOSTS": current["BOOSTS"],
             "UNDERSTAND": {**current["UNDERSTAND"], "EMBED_THRESHOLD": floor, "EMBED_MARGIN": -1.0}}
    out: list[SpanCandidate] = []
    counts = {"exact": 0, "exact_correct": 0, "labelled": 0}
    with override_settings(MMSEARCH_SEARCH=loose):
        enc = signals.active_encoder("text_embedder")
        vocab = understanding.current_vocabulary()
        for row in rows:
            labels = row.get("spans") or []
            counts["labelled"] += len(labels)
            words = signals.analyse_words(row["q"])
            plan = understanding.prepare(vocab, row["q"], words.unknown, words.rare)
            vecs = None
            embed = None
            if enc is not None and plan.runs:
                vecs = signals.encode_texts(enc, [], plan.pending_texts())
                vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
                embed = lambda texts: signals.run_model(enc, enc.model.embed_texts, texts)  # noqa: E731
            found = understanding.resolve(plan, vecs, enc.model_key if enc else None, embed)
            for u in found:
                correct = any(
                    u.filter == lab["filter"] and u.value in lab["values"] and _overlaps(u, lab, row["q"])
                    for lab in labels
                )
                if u.source == "embedding":
                    out.append(SpanCandidate("embedding", correct, u.similarity or 0.0, _margin(u)))
                elif u.source == "typo":
                    out.append(SpanCandidate("typo", correct, distance=_typo_distance(u)))
                elif u.source == "lexicon":
                    out.append(SpanCandidate("lexicon", correct, u.similarity or 0.0, cost=float(u.cost or 0.0)))
                else:
                    counts["exact"] += 1
                    counts["exact_correct"] += int(correct)
    return out, counts


def _overlaps(u, label: dict, text: str) -> bool:
    start = text.lower().find(label["span"].lower())
    return start >= 0 and u.start < start + len(label["span"]) and start < u.end


def _margin(u) -> float:
    return float(u.margin or 0.0)


def _typo_distance(u) -> float:
    return float(u.distance or 0.0)


def logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, steps: int = 2000) -> np.ndarray:
    """Weights (last = intercept) of a small L2-regularised logistic regression, by Newton's method."""
    X = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(X.shape[1])
    for _ in range(50):
        p = 1 / (1 + np.exp(-X @ w))
        grad = X.T @ (p - y) + l2 * np.r_[w[:-1], 0]
        hess = X.T @ (X * (p * (1 - p))[:, None]) + l2 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def ece(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over equal-width confidence bins."""
    if not len(confidence):
        return 0.0
    total = 0.0
    for lo in np.linspace(0, 1, bins, endpoint=False):
        inside = (confidence >= lo) & (confidence < lo + 1 / bins if lo + 1 / bins < 1 else confidence <= 1)
        if inside.any():
            total += inside.sum() * abs(confidence[inside].mean() - correct[inside].mean())
    return float(total / len(confidence))


def threshold_for_precision(sims: np.ndarray, correct: np.ndarray, target: float, min_support: int = 5) -> float:
    """The lowest similarity threshold whose accepted candidates are at least `target` precise (1.0 if none)."""
    order = np.argsort(-sims)
    hits = np.cumsum(correct[order])
    counts = np.arange(1, len(order) + 1)
    precise = (hits / counts >= target) & (counts >= min_support)
    if not precise.any():
        return 1.0
    last = int(np.flatnonzero(precise)[-1])
    return float(sims[order[last]])


def calibrate(cands: Sequence[SpanCandidate], precision: float) -> dict:
    """UNDERSTAND settings from labelled candidates: EMBED_THRESHOLD for the stated precision, and the
    CALIBRATION of the typo, embedding and lexicon stages (logistic fits of correctness). Returns {"UNDERSTAND": {...}, "report": {...}}."""
    conf = config()["UNDERSTAND"]
    emb = [c for c in cands if c.stage == "embedding"]
    typo = [c for c in cands if c.stage == "typo"]
    understand: dict = {"CALIBRATION": dict(conf["CALIBRATION"])}
    report: dict = {"embedding_candidates": len(emb), "typo_candidates": len(typo), "target_precision": precision}
    if len(emb) >= 10 and 0 < sum(c.correct for c in emb) < len(emb):
        sims = np.array([c.similarity for c in emb])
        margins = np.array([c.margin for c in emb])
        y = np.array([c.correct for c in emb], dtype=float)
        threshold = threshold_for_precision(sims, y, precision)
        w = logistic(np.c_[sims, margins], y)
        understand["EMBED_THRESHOLD"] = round(threshold, 4)
        understand["EMBED_MARGIN"] = 0.0
        understand["CALIBRATION"]["embedding"] = [round(float(v), 4) for v in w]
        accepted = sims >= threshold
        p = 1 / (1 + np.exp(-(w[0] * sims + w[1] * margins + w[2])))
        report.update(embedding_threshold=round(threshold, 4), embedding_accepted=int(accepted.sum()),
                      embedding_precision=round(float(y[accepted].mean()) if accepted.any() else 0.0, 4),
                      embedding_correct_total=int(y.sum()), embedding_ece=round(ece(p[accepted], y[accepted]), 4))
    if len(typo) >= 5 and 0 < sum(c.correct for c in typo) < len(typo):
        d = np.array([[c.distance] for c in typo])
        y = np.array([c.correct for c in typo], dtype=float)
        w = logistic(d, y)
        understand["CALIBRATION"]["typo"] = [round(float(v), 4) for v in w]
        p = 1 / (1 + np.exp(-(d[:, 0] * w[0] + w[1])))
        report.update(typo_precision=round(float(y.mean()), 4), typo_ece=round(ece(p, y), 4))
    elif typo:
        report.update(typo_precision=round(float(np.mean([c.correct for c in typo])), 4))
    lex = [c for c in cands if c.stage == "lexicon"]
    report["lexicon_candidates"] = len(lex)
    if len(lex) >= 10 and 0 < sum(c.correct for c in lex) < len(lex):
        x = np.array([[c.similarity, c.cost] for c in lex])
        y = np.array([c.correct for c in lex], dtype=float)
        w = logistic(x, y)
        understand["CALIBRATION"]["lexicon"] = [round(float(v), 4) for v in w]
        p = 1 / (1 + np.exp(-(x @ w[:2] + w[2])))
        report.update(lexicon_precision=round(float(y.mean()), 4), lexicon_ece=round(ece(p, y), 4))
    elif lex:
        report.update(lexicon_precision=round(float(np.mean([c.correct for c in lex])), 4))
    return {"UNDERSTAND": understand, "report": report}


def evaluate_candidates(cands: Sequence[SpanCandidate]) -> dict:
    """Precision and ECE of the current settings' accepted matches (threshold and calibration from config)."""
    conf = config()["UNDERSTAND"]
    out: dict = {}
    emb = [c for c in cands if c.stage == "embedding"]
    if emb:
        a, b, c0 = conf["CALIBRATION"]["embedding"]
        sims = np.array([c.similarity for c in emb])
        margins = np.array([c.margin for c in emb])
        y = np.array([c.correct for c in emb], dtype=float)
        accepted = (sims >= float(conf["EMBED_THRESHOLD"])) & (margins >= float(conf["EMBED_MARGIN"]))
        p = 1 / (1 + np.exp(-(a * sims + b * margins + c0)))
        out.update(embedding_accepted=int(accepted.sum()), embedding_correct_total=int(y.sum()),
                   embedding_precision=round(float(y[accepted].mean()), 4) if accepted.any() else None,
                   embedding_recall_of_correct=round(float(y[accepted].sum() / max(y.sum(), 1)), 4),
                   embedding_ece=round(ece(p[accepted], y[accepted]), 4) if accepted.any() else None)
    typo = [c for c in cands if c.stage == "typo"]
    if typo:
        a, b = conf["CALIBRATION"]["typo"]
        d = np.array([c.distance for c in typo])
        y = np.array([c.correct for c in typo], dtype=float)
        p = 1 / (1 + np.exp(-(a * d + b)))
        out.update(typo_matches=len(typo), typo_precision=round(float(y.mean()), 4), typo_ece=round(ece(p, y), 4))
    lex = [c for c in cands if c.stage == "lexicon"]
    if lex:
        a, b, c0 = conf["CALIBRATION"]["lexicon"]
        x = np.array([[c.similarity, c.cost] for c in lex])
        y = np.array([c.correct for c in lex], dtype=float)
        p = 1 / (1 + np.exp(-(a * x[:, 0] + b * x[:, 1] + c0)))
        out.update(lexicon_matches=len(lex), lexicon_precision=round(float(y.mean()), 4),
                   lexicon_ece=round(ece(p, y), 4))
    return out


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))
