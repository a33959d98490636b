"""bench/vector_search.py's recall: ties with the exact 10th neighbour count (catalogs repeat vectors)."""

from __future__ import annotations

import numpy as np

from bench.vector_search import K, exact_top, recall, recall_ids, unit


def test_recall_counts_rows_tied_with_the_tenth_neighbour_and_only_those():
    rng = np.random.default_rng(0)
    query = unit(rng.standard_normal((1, 16)))
    # Rows 0..8 nearer to the query one by one, rows 9..11 one vector three times (tied at the 10th place),
    # rows 12..39 far away.
    near = unit(query + np.linspace(0.05, 0.5, 9)[:, None] * unit(rng.standard_normal((9, 16))))
    tied = np.repeat(unit(query + 0.8 * unit(rng.standard_normal((1, 16)))), 3, axis=0)
    far = unit(-query + 0.3 * rng.standard_normal((28, 16)))
    data = np.concatenate([near, tied, far])
    truth = exact_top(data, query)
    exact = truth[0].tolist()
    assert set(exact[:9]) == set(range(9)) and exact[9] in (9, 10, 11)
    other = next(i for i in (9, 10, 11) if i != exact[9])
    swapped = exact[:9] + [other]  # as exact as the exact answer, another row of the tied group
    assert recall([swapped], truth, data, query) == 1.0
    assert recall_ids([swapped], truth) == 0.9
    # A row less similar than the 10th neighbour is a miss under both definitions.
    missing_one = exact[:9] + [20]
    assert recall([missing_one], truth, data, query) == 0.9
    assert recall_ids([missing_one], truth) == 0.9
    # A row returned twice counts once.
    assert recall([[exact[0]] * K], truth, data, query) == 0.1
