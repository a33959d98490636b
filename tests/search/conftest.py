"""Fixtures for search tests: a small real catalog with images, vectors from the hashing embedder, active keys."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest
from django.db import connection

from mmsearch.images import check_image
from catalog.models import Category, Product, ProductTag, Tag, TagGroup
from catalog.storage import add_image
from mmsearch import plugins
from mmsearch.search import understanding
from mmsearch.plugins.hashing import HashingEmbedder
from mmsearch.search import vectors
from mmsearch.text import product_text
from tests.conftest import make_image

MODELS = {
    "embedder": {"BACKEND": "mmsearch.plugins.hashing.HashingEmbedder", "OPTIONS": {"dim": 64, "seed": 0}},
    "text_embedder": {"BACKEND": "mmsearch.plugins.hashing.HashingEmbedder", "OPTIONS": {"dim": 32, "seed": 1}},
}

COLOURS = {
    "red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 160, 60), "black": (10, 10, 10),
    "yellow": (230, 220, 40), "white": (245, 245, 245),
}

# (sku, title, category, attributes, price, image colours)
PRODUCTS = [
    ("kurta-red", "Red Cotton Kurta", "Apparel/Topwear/Kurtas", {"gender": "Women", "colour": "Red"}, "20.00", ["red"]),
    ("jeans-blue", "Blue Denim Jeans", "Apparel/Bottomwear/Jeans", {"gender": "Men", "colour": "Blue"}, "45.00", ["blue"]),
    ("shoes-green", "Green Running Shoes", "Footwear/Shoes/Sports Shoes", {"gender": "Men", "colour": "Green"}, "80.00", ["black", "green"]),
    ("bag-black", "Black Leather Handbag", "Accessories/Bags/Handbags", {"gender": "Women", "colour": "Black"}, "120.00", ["black"]),
    ("dress-yellow", "Yellow Summer Dress", "Apparel/Dress/Dresses", {"gender": "Women", "colour": "Yellow"}, "35.00", ["yellow"]),
    ("shirt-white", "White Cotton Shirt", "Apparel/Topwear/Shirts", {"gender": "Men", "colour": "White"}, "25.00", ["white"]),
    ("tee-red", "Red Graphic Tshirt", "Apparel/Topwear/Tshirts", {"gender": "Men", "colour": "Red"}, "15.00", ["red"]),
]


@pytest.fixture(autouse=True)
def search_settings(settings):
    """Hashing models for both roles, no Celery enqueueing, fresh plugin instances and query cache."""
    from django.core.cache import cache

    settings.MMSEARCH_MODELS = MODELS
    settings.MMSEARCH_AUTO_INDEX = False
    plugins.reset()
    understanding.reset()
    cache.clear()
    yield settings
    plugins.reset()
    understanding.reset()


def index_products(products) -> tuple[str, str]:
    """Embed every image and product text with the configured models, build their indexes, activate them."""
    image_model = plugins.get_model("embedder")
    text_model = plugins.get_model("text_embedder")
    from PIL import Image

    image_rows, text_rows = [], []
    for product in products:
        for image in product.images.all():
            with image.file.open("rb") as fh:
                vec = image_model.embed_images([Image.open(fh).convert("RGB")])[0]
            image_rows.append((image.id, product.id, vec))
        text = product_text(product.title, product.category.path if product.category_id else None, product.attributes)
        text_rows.append((product.id, "sha", text_model.embed_texts([text])[0]))
    vectors.upsert_image_vectors(image_model.model_key, image_rows)
    vectors.upsert_product_vectors(text_model.model_key, text_rows)
    with connection.cursor() as cursor:  # deferred FK checks would block CREATE INDEX in this transaction
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    vectors.ensure_index("image", image_model.model_key, image_model.dim)
    vectors.ensure_index("product", text_model.model_key, text_model.dim)
    vectors.activate("embedder", image_model.model_key, image_model.dim)
    vectors.activate("text_embedder", text_model.model_key, text_model.dim)
    return image_model.model_key, text_model.model_key


@pytest.fixture
def shop(db):
    """Seven priced products with real images (one with two), an inactive one, a tag; all indexed."""
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
        attributes={"gender": "Women", "colour": "Red"}, price=Decimal("10.00"), active=False,
    )
    add_image(old, check_image(make_image(size=(32, 32), color=(221, 31, 31))))
    group = TagGroup.objects.create(name="Occasion")
    festive = Tag.objects.create(group=group, name="Festive")
    ProductTag.objects.create(product=made["kurta-red"], tag=festive, status=ProductTag.Status.ACCEPTED)
    ProductTag.objects.create(product=made["dress-yellow"], tag=festive, status=ProductTag.Status.SUGGESTED)
    index_products(list(made.values()) + [old])
    return made


def random_unit(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def hashing() -> HashingEmbedder:
    return plugins.get_model("embedder")
