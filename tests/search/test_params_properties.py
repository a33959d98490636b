"""Property tests of the search request grammar: any input is a query or a SearchError, never anything else."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmsearch.search.params import (
    FILTER_NAMES, SearchError, SearchQuery, escape_value, parse_params, split_values, tag_parts,
)

NAMES = st.sampled_from(["q", "mode", "page", "limit", "similar_to", *FILTER_NAMES, "attr.colour", "attr.", "attr.x y"]) | st.text(max_size=12)
VALUES = st.lists(st.text(max_size=40) | st.sampled_from(["1e200000", "NaN", "-1", "0", "99", "Red,Blue", "a\\,b", "x:y"]), min_size=1, max_size=3)


@given(st.dictionaries(NAMES, VALUES, max_size=6))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_parameters_give_a_query_or_a_search_error(db_catalog, params):
    try:
        query = parse_params(params)
    except SearchError as exc:
        assert str(exc)  # a message for the shopper
        return
    assert isinstance(query, SearchQuery)
    assert all(isinstance(v, str) and "\x00" not in v for vs in query.filters.values() for v in vs)


@given(st.lists(st.text(max_size=20).filter(lambda v: v.strip() == v and v), max_size=5))
def test_escaped_values_split_back_unchanged(values):
    assert split_values(",".join(escape_value(v) for v in values)) == values


@given(st.text(max_size=60))
def test_tag_parts_never_fail_and_keep_no_blank_slugs(raw):
    for group, slug in tag_parts(raw):
        assert ":" not in slug and slug == slug.strip()


@pytest.fixture
def db_catalog(db):
    """Filters are checked against the catalog (categories): an empty one is enough for the grammar."""
    return None


@pytest.mark.django_db
@given(st.dictionaries(st.sampled_from(["category", "tag", "attr.colour", "attr.a\\,b", "price_min", "price_max"]),
                       st.text(max_size=30), min_size=1, max_size=4),
       st.text(min_size=1, max_size=30))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_search_api_answers_any_filter_with_200_or_4xx(client, filters, q):
    response = client.get("/api/v1/search", {"q": q, "mode": "lexical", **filters})
    assert response.status_code in (200, 400), response.content
    if response.status_code == 400:
        assert response.json()["detail"]
