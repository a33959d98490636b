"""Fixtures for training/evaluation tests: small catalogs of solid-colour PNG images (lossless, so the mean
colour of an image is exactly the colour written)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image


@pytest.fixture(autouse=True)
def one_thread():
    # Two cores are shared by everyone: tests train tiny models on one thread.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class ColourCatalog:
    """products.jsonl (+ photos.jsonl) with solid-colour PNG images, written into a folder."""

    def __init__(self, root: Path):
        self.root = root
        (root / "images").mkdir(parents=True, exist_ok=True)

    def png(self, name: str, rgb: tuple[int, int, int], size=(12, 16)) -> str:
        Image.new("RGB", size, rgb).save(self.root / "images" / name, format="PNG")
        return f"images/{name}"

    def products(self, name: str, rows: list[dict]) -> Path:
        path = self.root / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path


@pytest.fixture
def colour_catalog(tmp_path):
    return ColourCatalog(tmp_path / "cat")
