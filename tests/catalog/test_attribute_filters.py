"""Attribute and category filters (catalog.filters): what they match, and that the indexes answer them."""

from __future__ import annotations

import pytest
from django.db import connection

from catalog.filters import apply_filters
from catalog.models import Category, Product

pytestmark = pytest.mark.django_db


def skus(filters: dict[str, list[str]]) -> set[str]:
    return set(apply_filters(Product.objects.all(), filters).values_list("sku", flat=True))


@pytest.fixture
def products():
    shoes = Category.objects.get_or_create_path("Footwear/Shoes")
    tops = Category.objects.get_or_create_path("Apparel/Topwear")
    rows = [
        ("m-shoe", shoes, {"gender": "Men", "colour": "Navy Blue", "year": 2012.0}),
        ("w-shoe", shoes, {"gender": "Women", "colour": "ÉCRU", "year": 2013}),
        ("m-top", tops, {"gender": "MEN", "colour": "Grey", "year": "2012"}),
        ("odd", tops, {"Gender": "men", "colour": None, "sizes": ["S", "M"], "limited": True}),
        ("bare", None, {}),
    ]
    return {sku: Product.objects.create(sku=sku, title=sku, category=cat, attributes=attrs) for sku, cat, attrs in rows}


def test_attribute_values_match_case_insensitively_and_any_of_them(products):
    assert skus({"attr.gender": ["men"]}) == {"m-shoe", "m-top", "odd"}
    assert skus({"attr.gender": ["Women,MEN"]}) == {"m-shoe", "w-shoe", "m-top", "odd"}
    assert skus({"attr.colour": ["navy blue"]}) == {"m-shoe"}
    assert skus({"attr.colour": ["écru"]}) == {"w-shoe"}  # lower-cased by the database on both sides
    assert skus({"attr.limited": ["TRUE"]}) == {"odd"}
    assert skus({"attr.colour": ["none"]}) == set()  # a JSON null is no value
    assert skus({"attr.gender": ["men"], "attr.colour": ["grey"]}) == {"m-top"}
    assert skus({"attr.nothing": ["men"]}) == set()


def test_a_number_matches_the_same_number_stored_either_way(products):
    assert skus({"attr.year": ["2012"]}) == {"m-shoe", "m-top"}  # 2012.0 as a JSON number, "2012" as a string
    assert skus({"attr.year": ["2012.00"]}) == {"m-shoe", "m-top"}
    assert skus({"attr.year": ["2013.0"]}) == {"w-shoe"}
    assert skus({"attr.year": ["1e999999"]}) == set()  # no float has it: text only, no error


def test_terms_follow_every_change_of_the_attributes(products):
    Product.objects.filter(sku="w-shoe").update(attributes={"gender": "Men"})
    assert "w-shoe" in skus({"attr.gender": ["men"]})
    shoe = products["m-shoe"]
    shoe.attributes = {"gender": "Unisex"}
    shoe.save()
    assert skus({"attr.gender": ["unisex"]}) == {"m-shoe"}
    shoe.refresh_from_db()
    assert shoe.attribute_terms == ["gender\x1funisex"]


def test_category_filter_takes_the_subtree(products):
    assert skus({"category": ["Footwear"]}) == {"m-shoe", "w-shoe"}
    assert skus({"category": ["Footwear/Shoes", "Apparel"]}) == {"m-shoe", "w-shoe", "m-top", "odd"}


def test_the_indexes_answer_attribute_and_category_filters(products):
    """With sequential scans off, the planner can only use the indexes if their expressions match the filter's."""
    sql, params = apply_filters(Product.objects.all(), {"attr.gender": ["Men"], "category": ["Footwear"]}).order_by() \
        .values("id").query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("EXPLAIN " + sql, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "Seq Scan" not in plan
    assert "product_attribute_terms_gin" in plan or "category" in plan
    attr_sql, attr_params = apply_filters(Product.objects.all(), {"attr.gender": ["Men"]}).values("id").query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("EXPLAIN " + attr_sql, attr_params)
        assert "product_attribute_terms_gin" in "\n".join(row[0] for row in cursor.fetchall())


def test_understood_values_match_products_as_the_same_filter_would(products):
    """The adapter's products_having (understanding's candidates) and which_have (its boosts) test attribute
    values as the attr.NAME filter does: any of them, case-insensitively, numbers stored either way."""
    from catalog.adapter import CatalogAdapter

    adapter = CatalogAdapter()
    wanted = {"attr.gender": ["Men"], "attr.year": ["2012"]}
    having = set(adapter.products_having({}, wanted).values_list("sku", flat=True))
    assert having == skus({"attr.gender": ["Men"], "attr.year": ["2012"]}) == {"m-shoe", "m-top"}
    assert set(adapter.products_having({"category": ["Footwear"]}, wanted).values_list("sku", flat=True)) == {"m-shoe"}
    ids = {sku: p.pk for sku, p in products.items()}
    have = adapter.which_have(list(ids.values()), {"attr.gender": ["Men", "Women"], "attr.colour": ["grey"]})
    by_sku = {name: {sku for sku, pk in ids.items() if pk in found} for name, found in have.items()}
    assert by_sku == {"attr.gender": {"m-shoe", "w-shoe", "m-top", "odd"}, "attr.colour": {"m-top"}}


def test_which_have_tests_categories_and_tags_as_their_filters_do(products):
    from catalog.adapter import CatalogAdapter
    from catalog.models import ProductTag, Tag, TagGroup

    festive = Tag.objects.create(group=TagGroup.objects.create(name="Occasion"), name="Festive")
    ProductTag.objects.create(product=products["m-top"], tag=festive, status=ProductTag.Status.ACCEPTED)
    ProductTag.objects.create(product=products["odd"], tag=festive, status=ProductTag.Status.SUGGESTED)
    ids = {sku: p.pk for sku, p in products.items()}
    wanted = {"category": ["Footwear"], "tag": ["occasion:festive"], "attr.year": ["2012"], "price": ["1"]}
    have = CatalogAdapter().which_have(list(ids.values()), wanted)
    by_sku = {name: {sku for sku, pk in ids.items() if pk in found} for name, found in have.items()}
    assert by_sku["category"] == skus({"category": ["Footwear"]}) == {"m-shoe", "w-shoe"}
    assert by_sku["tag"] == skus({"tag": ["occasion:festive"]}) == {"m-top"}  # a suggested tag is not a value yet
    assert by_sku["attr.year"] == {"m-shoe", "m-top"}
    assert by_sku["price"] == set()  # not a value filter
    assert CatalogAdapter().which_have([ids["bare"]], wanted) == {name: set() for name in wanted}
