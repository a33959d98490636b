"""Fixtures for the shopper pages: a small priced catalog with real images, indexed with the hashing models."""

from __future__ import annotations

from decimal import Decimal

import pytest

from mmsearch.images import check_image
from catalog.models import Category, Product, ProductTag, Tag, TagGroup
from catalog.storage import add_image
from mmsearch import plugins
from mmsearch.search import understanding
from tests.conftest import make_image
from tests.search.conftest import COLOURS, MODELS, index_products

# (sku, title, category, attributes, price, image colours); the shoes' first photo is green here, unlike search's
PRODUCTS = [
    ("kurta-red", "Red Cotton Kurta", "Apparel/Topwear/Kurtas", {"gender": "Women", "colour": "Red"}, "20.00", ["red"]),
    ("jeans-blue", "Blue Denim Jeans", "Apparel/Bottomwear/Jeans", {"gender": "Men", "colour": "Blue"}, "45.00", ["blue"]),
    ("shoes-green", "Green Running Shoes", "Footwear/Shoes/Sports Shoes", {"gender": "Men", "colour": "Green"}, "80.00", ["green", "black"]),
    ("bag-black", "Black Leather Handbag", "Accessories/Bags/Handbags", {"gender": "Women", "colour": "Black"}, "120.00", ["black"]),
    ("dress-yellow", "Yellow Summer Dress", "Apparel/Dress/Dresses", {"gender": "Women", "colour": "Yellow"}, "35.00", ["yellow"]),
    ("shirt-white", "White Cotton Shirt", "Apparel/Topwear/Shirts", {"gender": "Men", "colour": "White"}, "25.00", ["white"]),
    ("tee-red", "Red Graphic Tshirt", "Apparel/Topwear/Tshirts", {"gender": "Men", "colour": "Red"}, "15.00", ["red"]),
]


@pytest.fixture(autouse=True)
def web_models(settings):
    """Hashing models for both embedder roles (no learned weights), fresh plugin instances and query cache."""
    from django.core.cache import cache

    settings.MMSEARCH_MODELS = MODELS
    plugins.reset()
    understanding.reset()
    cache.clear()
    yield settings
    plugins.reset()
    understanding.reset()


@pytest.fixture
def shop(db):
    """Seven priced products with real images (one with two), an inactive one and an accepted tag; indexed."""
    made = {}
    for sku, title, path, attrs, price, colours in PRODUCTS:
        product = Product.objects.create(
            sku=sku, title=title, category=Category.objects.get_or_create_path(path), attributes=attrs,
            price=Decimal(price), currency="EUR",
        )
        for colour in colours:
            add_image(product, check_image(make_image(size=(32, 32), color=COLOURS[colour])))
        made[sku] = product
    old = Product.objects.create(
        sku="kurta-old", title="Red Cotton Kurta (discontinued)", category=Category.objects.get(path="Apparel/Topwear/Kurtas"),
        attributes={"gender": "Women", "colour": "Red"}, price=Decimal("10.00"), currency="EUR", active=False,
    )
    add_image(old, check_image(make_image(size=(32, 32), color=(221, 31, 31))))
    festive = Tag.objects.create(group=TagGroup.objects.create(name="Occasion"), name="Festive")
    ProductTag.objects.create(product=made["kurta-red"], tag=festive, status=ProductTag.Status.ACCEPTED)
    index_products(list(made.values()) + [old])
    return made
