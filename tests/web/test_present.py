"""The link and facet helpers behind the results page (no database)."""

from __future__ import annotations

from django.http import QueryDict

from mmsearch.web import present


def test_url_with_toggles_values_and_resets_the_page():
    params = QueryDict("q=red&attr.colour=Red&page=3")
    assert present.url_with(params, toggle=("attr.colour", "Blue")) == "?q=red&attr.colour=Red&attr.colour=Blue"
    assert present.url_with(params, toggle=("attr.colour", "Red")) == "?q=red"
    assert present.url_with(params, set_={"category": "Apparel"}) == "?q=red&attr.colour=Red&category=Apparel"
    assert present.url_with(params, set_={"page": "4"}, keep_page=True) == "?q=red&attr.colour=Red&page=4"


def test_category_facet_skips_levels_with_one_choice():
    entries = [{"value": "Apparel", "count": 3}, {"value": "Apparel/Topwear", "count": 3},
               {"value": "Apparel/Topwear/Shirts", "count": 2}, {"value": "Apparel/Topwear/Kurtas", "count": 1}]
    group = present.category_facet(QueryDict("q=red"), entries)
    assert [(v.label, v.count, v.url) for v in group.values] == [
        ("Kurtas", 1, "?q=red&category=Apparel%2FTopwear%2FKurtas"),
        ("Shirts", 2, "?q=red&category=Apparel%2FTopwear%2FShirts"),
    ]
    chosen = present.category_facet(QueryDict("q=red&category=Apparel/Topwear/Shirts"), entries)
    assert chosen.values[0].selected and chosen.values[0].url == "?q=red"
    assert chosen.values[0].label == "All of Apparel › Topwear › Shirts"


def test_attribute_facets_leave_out_blank_and_single_values():
    attrs = {
        "colour": [{"value": "Red", "count": 2}, {"value": "Blue", "count": 1}, {"value": "", "count": 4}],
        "origin": [{"value": "Italy, ca 180g", "count": 2}, {"value": "Spain", "count": 1}, {"value": "Peru", "count": 1}],
        "usage": [{"value": "Casual", "count": 3}],
    }
    groups = present.attribute_facets(QueryDict("q=x&attr.colour=red"), attrs)
    assert [g.label for g in groups] == ["Colour", "Origin"]
    colour = groups[0]
    assert [(v.label, v.selected) for v in colour.values] == [("Red", True), ("Blue", False)]
    assert colour.values[0].url == "?q=x"  # matched case-insensitively, so the link removes it
    origin = groups[1]
    assert [v.label for v in origin.values] == ["Italy, ca 180g", "Spain", "Peru"]
    # the comma inside the value is escaped, so the filter reads one value, not "Italy" or "ca 180g"
    assert origin.values[0].url == "?q=x&attr.colour=red&attr.origin=Italy%5C%2C+ca+180g"
    chosen = present.attribute_facets(QueryDict("q=x&attr.origin=Italy%5C%2C+ca+180g"), attrs)
    assert [(v.label, v.selected) for v in chosen[1].values][0] == ("Italy, ca 180g", True)
    assert chosen[1].values[0].url == "?q=x"


def test_split_values_reads_escaped_commas():
    from mmsearch.search.params import escape_value, split_values

    assert split_values("Red, Blue,,") == ["Red", "Blue"]
    assert split_values(r"Italy\, ca 180g,Spain") == ["Italy, ca 180g", "Spain"]
    for value in ("Italy, ca 180g", "a\\b", "back\\", "x\\,y"):
        assert split_values(escape_value(value)) == [value]


def test_price_facet_links_stop_a_cent_short_of_the_bucket_edge():
    group = present.price_facet(QueryDict("q=x"), [{"min": "10.00", "max": "20.00", "count": 3}], "EUR")
    assert group.values[0].label == "€10.00 – €20.00"
    assert group.values[0].url == "?q=x&price_min=10.00&price_max=19.99"
    chosen = present.price_facet(QueryDict("q=x&price_min=10.00&price_max=19.99"), [{"min": "10.00", "max": "20.00", "count": 3}])
    assert chosen.values[0].selected and chosen.values[0].url == "?q=x"


def test_pagination_shows_a_window_with_gaps():
    nav = present.pagination(QueryDict("q=x&page=6"), page=6, limit=10, total=200)
    assert [link.number for link in nav.links] == [1, None, 4, 5, 6, 7, 8, None, 20]
    assert [link.current for link in nav.links if link.number == 6] == [True]
    assert nav.previous_url == "?q=x&page=5" and nav.next_url == "?q=x&page=7"
    assert nav.links[0].url == "?q=x"  # page 1 has no page parameter
    past = present.pagination(QueryDict("q=x&page=9"), page=9, limit=10, total=25)
    assert past.pages == 3 and past.previous_url == "?q=x&page=3" and not past.next_url


def test_money_and_labels():
    assert present.money("1234.5", "EUR") == "€1,234.50"
    assert present.money("12", "SEK") == "12.00 SEK"
    assert present.money(None, "EUR") == ""
    assert present.label_for("article_type") == "Article type"
