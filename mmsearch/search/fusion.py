"""Reciprocal rank fusion: combine ranked candidate lists from different signals into one ranking.

RRF (Cormack et al., 2009) scores an item by sum_s w_s / (k + rank_s): it needs only ranks, so it fuses
signals whose raw scores are not comparable (ts_rank_cd, trigram similarity, cosine similarity).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass
class Candidate:
    """One item as one signal ranked it: its 1-based rank there and the signal's own score."""

    item_id: int
    score: float
    extra: dict = field(default_factory=dict)


@dataclass
class Fused:
    item_id: int
    score: float
    parts: dict[str, dict]


def rrf(
    ranked: Mapping[str, Sequence[Candidate]], weights: Mapping[str, float], k: float = 60.0
) -> list[Fused]:
    """Fuse {signal: candidates best-first} into one list best-first; each item once, with its per-signal parts."""
    fused: dict[int, Fused] = {}
    for signal, candidates in ranked.items():
        weight = float(weights.get(signal, 1.0))
        if weight <= 0:
            continue
        seen: set[int] = set()
        rank = 0
        for cand in candidates:
            item = cand.item_id
            if item in seen:  # a signal lists an item once, at its best rank
                continue
            seen.add(item)
            rank += 1
            entry = fused.get(item)
            if entry is None:
                entry = fused[item] = Fused(item, 0.0, {})
            entry.score += weight / (k + rank)
            part = {"rank": rank, "score": float(cand.score)}  # rounded for the page's hits only
            if cand.extra:
                part.update(cand.extra)
            entry.parts[signal] = part
    # Ties (same fused score) break by the id so pages are stable between requests.
    return sorted(fused.values(), key=lambda f: (-f.score, f.item_id))
