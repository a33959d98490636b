"""Metric definitions checked on examples small enough to compute by hand."""

import math

import numpy as np
import pytest

from mmsearch.training import metrics as M


def test_ranks_break_ties_by_item_order():
    scores = np.array([[0.5, 0.9, 0.5, 0.1]])
    assert M.ranks_of_relevant(scores, [np.array([2, 0])])[0].tolist() == [2, 3]


def test_retrieval_metrics_by_hand():
    # query 0: relevant items 0 and 2 rank 2 and 3; query 1: relevant item 3 ranks 1.
    scores = np.array([[0.8, 0.9, 0.7, 0.1], [0.1, 0.2, 0.3, 0.9]])
    out = M.retrieval_metrics(scores, [np.array([0, 2]), np.array([3])], ks=(1, 2, 10))
    assert out["queries"] == 2 and out["corpus"] == 4
    assert out["recall@1"] == pytest.approx((0 + 1) / 2)
    assert out["recall@2"] == pytest.approx((0.5 + 1) / 2)
    assert out["recall@10"] == pytest.approx(1.0)
    assert out["mrr"] == pytest.approx((1 / 2 + 1) / 2)
    ideal = 1 + 1 / math.log2(3)
    assert out["ndcg@10"] == pytest.approx(((1 / math.log2(3) + 1 / math.log2(4)) / ideal + 1) / 2)


def test_accuracy_at_k():
    scores = np.array([[0.9, 0.1, 0.0], [0.5, 0.4, 0.3], [0.2, 0.3, 0.1]])
    out = M.accuracy_at(scores, np.array([0, 1, 2]), ks=(1, 2))
    assert out["accuracy@1"] == pytest.approx(1 / 3)  # ranks 1, 2, 3
    assert out["accuracy@2"] == pytest.approx(2 / 3)
    assert out["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)


def test_zero_shot_accuracy_baseline_and_ece():
    # Two-class logits: confidences softmax([2, 0]) = 0.881 and softmax([0, 0]) = 0.5.
    logits = np.array([[2.0, 0.0], [2.0, 0.0], [0.0, 0.0], [0.0, 2.0]])
    labels = np.array([0, 1, 0, 0])
    out = M.zero_shot(logits, labels, bins=10)
    assert out["accuracy"] == pytest.approx(2 / 4)  # rows 0 and 2 (argmax of a tie is the first class)
    assert out["majority_baseline"] == pytest.approx(3 / 4)
    c = 1 / (1 + math.exp(-2))
    # bins: 0.5 holds row 2 (correct, conf 0.5); 0.8-0.9 holds rows 0, 1, 3 (1 correct of 3, conf c).
    expected = 1 / 4 * abs(1 - 0.5) + 3 / 4 * abs(1 / 3 - c)
    assert out["ece"] == pytest.approx(expected)
    assert sum(b["count"] for b in out["reliability"]) == 4
