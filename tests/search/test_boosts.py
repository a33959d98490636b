"""Understanding's boosts (engine.boosted): checking only the candidates that can reach the page gives the page
that checking every candidate gives. The membership query is the adapter's (tested in
tests/catalog/test_attribute_filters.py); here it is a table, so many rankings can be tried."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmsearch.search import engine
from mmsearch.search.fusion import Fused

FILTERS = ("attr.gender", "attr.colour", "category")


@st.composite
def cases(draw):
    n = draw(st.integers(1, 80))
    # RRF-sized scores with ties, best first as rrf returns them
    scores = sorted((draw(st.integers(0, 60)) / 1000 for _ in range(n)), reverse=True)
    fused = [Fused(i + 1, s, {}) for i, s in enumerate(scores)]
    names = draw(st.lists(st.sampled_from(FILTERS), min_size=1, max_size=3, unique=True))
    has = {name: {f.item_id for f in fused if draw(st.booleans())} for name in names}
    boosting = {name: (["v"], draw(st.floats(0.05, 1.0))) for name in names}
    boosts = {"default": draw(st.sampled_from([0.0, 0.002, 0.01, 0.05]))}
    need = draw(st.integers(1, 40))
    # the understood list: some of the candidates with every value, known without a check
    listed = {i for i in set.intersection(*has.values()) if draw(st.booleans())}
    return fused, has, boosting, boosts, need, {name: listed for name in names}


@settings(max_examples=300, deadline=None)
@given(cases())
def test_the_page_is_the_same_as_when_every_candidate_is_checked(case):
    fused, has, boosting, boosts, need, known = case
    asked: list[int] = []

    def having(ids, wanted):
        asked.extend(ids)
        return {name: {i for i in ids if i in has[name]} for name in wanted}

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine.signals, "having", having)
        every = engine.boosted(copy.deepcopy(fused), engine.Gathered("hybrid", {}, boosting=boosting), boosts)
        asked.clear()
        gathered = engine.Gathered("hybrid", {}, boosting=boosting, known=known)
        pruned = engine.boosted(copy.deepcopy(fused), gathered, boosts, need)
    assert [(f.item_id, f.score) for f in pruned[:need]] == [(f.item_id, f.score) for f in every[:need]]
    assert sorted(f.item_id for f in pruned) == sorted(f.item_id for f in fused)  # nothing lost
    assert len(asked) == len(set(asked))  # no candidate checked twice
    assert not set(asked) & next(iter(known.values()))  # nor one the understood list vouches for
    if boosts["default"] == 0:
        assert not asked


def test_a_clear_leader_needs_only_the_page_checked(monkeypatch):
    """Candidates far below the page cannot catch up with every boost: they are not looked up."""
    fused = [Fused(i, 1.0 / (60 + i), {}) for i in range(1, 201)]
    asked: list[int] = []

    def having(ids, wanted):
        asked.extend(ids)
        return {name: set(ids) for name in wanted}  # every candidate has every value

    monkeypatch.setattr(engine.signals, "having", having)
    gathered = engine.Gathered("hybrid", {}, boosting={"attr.colour": (["Red"], 1.0)})
    out = engine.boosted(fused, gathered, {"default": 0.001}, 10)
    assert [f.item_id for f in out[:10]] == list(range(1, 11))
    assert all("understood_boost" in f.parts for f in out[:10])
    assert 10 <= len(asked) < 30
    assert gathered.debug["boost_checked"] == len(asked)
