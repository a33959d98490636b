"""Fixtures for product questions: a shop of solid-colour products in the database (red, green and blue shirts,
caps and socks), a catalog file of the same kind for training, and answerer settings."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.cache import cache
from django.core.management import call_command
from PIL import Image

from tests.qa.plugins import RGB

KINDS = {"Shirts": ("Shirt", (12, 16)), "Caps": ("Cap", (14, 14)), "Socks": ("Socks", (16, 12))}
COLOURMETER = {"BACKEND": "tests.qa.plugins.ColourMeterAnswerer", "OPTIONS": {}}


def catalog_file(root: Path, copies: int = 3) -> Path:
    """products.jsonl of colours x kinds x genders x copies, lossless PNGs (a copy's shade differs a little)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for colour, rgb in RGB.items():
        for kind, (word, size) in KINDS.items():
            for gender in ("Men", "Women"):
                for n in range(copies):
                    sku = f"{colour}-{word}-{gender}-{n}".lower()
                    Image.new("RGB", size, tuple(min(255, c + 10 * n) for c in rgb)).save(root / "images" / f"{sku}.png")
                    rows.append({"sku": sku, "title": f"Acme {gender} {colour} {word} {n}", "category": f"Apparel/{kind}",
                                 "attributes": {"gender": gender, "colour": colour, "article_type": kind},
                                 "images": [f"images/{sku}.png"]})
    path = root / "products.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def trained_answerer(tmp_path_factory) -> Path:
    """A tiny answerer trained for a few epochs on the colour catalog (once per test session)."""
    import torch

    root = tmp_path_factory.mktemp("qa-train")
    data = catalog_file(root / "cat")
    out = root / "answerer"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        call_command("train_answerer", "--data", str(data), "--out", str(out), "--preset", "tiny", "--epochs", "8",
                     "--holdout", "0.2", "--holdout-products", "0.1", "--calibration", "0.2", "--cache-dir",
                     str(root / "cache"), "--checkpoint-every", "0", "--no-progress")
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture
def colourmeter(settings):
    """The test answerer as the `answerer` alias (the real MiniLM text embedder routes)."""
    from mmsearch import plugins

    settings.MMSEARCH_MODELS = {**settings.MMSEARCH_MODELS, "answerer": COLOURMETER}
    plugins.reset()
    cache.clear()  # throttle counts
    yield plugins.get_model("answerer")
    plugins.reset()


def _png(rgb, size=(12, 16)) -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", size, rgb).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def qa_shop(db):
    """Products in the database: a red shirt whose data says Red, a blue cap whose data says Red (the data and
    the image disagree), grey socks without a colour in their data, a product without images, with price, brand
    and description."""
    from catalog.models import Category, Product
    from catalog.storage import add_image
    from mmsearch.images import check_image

    cat = Category.objects.get_or_create_path("Apparel/Shirts")
    made = {}
    for sku, rgb, attrs, extra in (
        ("red-shirt", RGB["Red"], {"colour": "Red", "article_type": "Shirts"},
         {"price": Decimal("19.90"), "currency": "EUR", "brand": "Acme",
          "description": "A cotton shirt with long sleeves. Made in Portugal from organic cotton. Machine washable."}),
        ("blue-cap", RGB["Blue"], {"colour": "Red"}, {}),
        ("plain-socks", RGB["Green"], {"origin": "Italy"}, {}),
        ("no-photo", None, {}, {}),
    ):
        p = Product.objects.create(sku=sku, title=sku.replace("-", " ").title(), category=cat, attributes=attrs, **extra)
        if rgb is not None:
            add_image(p, check_image(_png(rgb)))
        made[sku] = p
    return made
