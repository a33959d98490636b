"""Catalogs in the interchange format, read in memory for training and evaluation (no database).

The importer (catalog.importer) validates rows for the database and stores image bytes; here we only need
titles, categories, attributes and image paths, and we decode each image once into a small uint8 cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from mmsearch.text import SKIPPED_ATTRIBUTES, product_text


class DataError(ValueError):
    """A catalog or photo file cannot be used; the message names the file, line and reason."""


@dataclass(frozen=True)
class Product:
    sku: str
    title: str
    category: str
    attributes: dict
    images: tuple[Path, ...]

    @property
    def text(self) -> str:
        """The product text every model sees (mmsearch.text.product_text)."""
        return product_text(self.title, self.category, self.attributes)

    def facets(self) -> list[tuple[str, str]]:
        """(key, value) pairs a zero-shot prompt can name: attributes plus each category level ("category")."""
        pairs = [
            (k, str(v)) for k, v in self.attributes.items() if k not in SKIPPED_ATTRIBUTES and v not in ("", None)
        ]
        pairs += [("category", name) for name in self.category.split("/") if name]
        return pairs


@dataclass(frozen=True)
class Photo:
    image: Path
    sku: str


@dataclass
class Catalog:
    products: list[Product]
    sources: list[Path] = field(default_factory=list)

    def by_sku(self) -> dict[str, Product]:
        return {p.sku: p for p in self.products}


def _read_jsonl(path: Path) -> Iterable[tuple[int, dict]]:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{line_no}: bad JSON ({exc.msg} at column {exc.colno})") from exc
            if not isinstance(row, dict):
                raise DataError(f"{path}:{line_no}: a row must be a JSON object, not {type(row).__name__}")
            yield line_no, row


def load_products(path: Path | str, *, require_images: bool = True) -> list[Product]:
    """Products of one products.jsonl; image paths resolved against the file's folder."""
    path = Path(path)
    base = path.resolve().parent
    out: list[Product] = []
    for line_no, row in _read_jsonl(path):
        where = f"{path}:{line_no}"
        sku, title = row.get("sku"), row.get("title")
        if not isinstance(sku, str) or not sku.strip():
            raise DataError(f"{where}: missing 'sku'")
        if not isinstance(title, str) or not title.strip():
            raise DataError(f"{where}: missing 'title'")
        category = row.get("category") or ""
        attributes = row.get("attributes") or {}
        images = row.get("images") or []
        if not isinstance(category, str):
            raise DataError(f"{where}: 'category' must be a string path")
        if not isinstance(attributes, dict):
            raise DataError(f"{where}: 'attributes' must be an object")
        if not isinstance(images, list) or not all(isinstance(i, str) and i for i in images):
            raise DataError(f"{where}: 'images' must be a list of file paths")
        paths = tuple(base / rel for rel in images)
        for rel, p in zip(images, paths):
            if not p.is_file():
                raise DataError(f"{where}: image {rel} not found")
        if require_images and not paths:
            continue  # a product without an image cannot be an image-text pair
        out.append(Product(sku.strip(), title.strip(), category.strip("/"), attributes, paths))
    if not out:
        raise DataError(f"{path}: no products with images")
    return out


def load_catalog(paths: Sequence[Path | str]) -> Catalog:
    """Several products.jsonl files as one catalog (a sku seen twice keeps its first row)."""
    seen: set[str] = set()
    products: list[Product] = []
    for path in paths:
        for p in load_products(path):
            if p.sku not in seen:
                seen.add(p.sku)
                products.append(p)
    return Catalog(products, [Path(p) for p in paths])


def load_photos(path: Path | str, skus: Iterable[str]) -> list[Photo]:
    """Shopper photos of a photos-<split>.jsonl whose sku is in `skus`."""
    path = Path(path)
    base = path.resolve().parent
    known = set(skus)
    out: list[Photo] = []
    for line_no, row in _read_jsonl(path):
        image, sku = row.get("image"), row.get("sku")
        if not isinstance(image, str) or not isinstance(sku, str):
            raise DataError(f"{path}:{line_no}: a photo row needs 'image' and 'sku' strings")
        if sku not in known:
            raise DataError(f"{path}:{line_no}: sku {sku!r} is not in the given products")
        full = base / image
        if not full.is_file():
            raise DataError(f"{path}:{line_no}: image {image} not found")
        out.append(Photo(full, sku))
    if not out:
        raise DataError(f"{path}: no photos")
    return out


def facet_text(key: str, value: str) -> str:
    """One attribute as the product text writes it ('colour: Red'): a training text and a zero-shot prompt."""
    return product_text("", None, {key: value})


# The ways one facet is put into words, in training (a product is sometimes paired with one of these) and in
# zero-shot evaluation (the prompt for a value is the mean of all of them).
FACET_TEMPLATES = ("{facet}", "a photo of a {value} product", "{value}")


def facet_texts(key: str, value: str) -> list[str]:
    """Every FACET_TEMPLATES wording of one facet."""
    return [t.format(facet=facet_text(key, value), value=value) for t in FACET_TEMPLATES]


def title_key(title: str) -> str:
    """Titles compare case-insensitively (the retrieval protocol's notion of 'same product text')."""
    return " ".join(title.lower().split())


def key_hash(key: str) -> int:
    """A stable 64-bit integer of a string (sha256), for splits and per-key random seeds."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")


def in_share(key: str, fraction: float) -> bool:
    """Stable split: True for a share `fraction` of keys, by sha256 of the key."""
    return (key_hash(key) % 10_000) < fraction * 10_000


def is_held_out(title: str, fraction: float) -> bool:
    """Stable split by title hash: every product sharing a title lands on the same side."""
    return in_share(title_key(title), fraction)


def fingerprint(paths: Sequence[Path | str]) -> str:
    """sha256 over the bytes of the given data files (rows only; images are named by the rows)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes())
    return h.hexdigest()


def write_products(products: Sequence[Product], path: Path) -> None:
    """Write products as interchange JSONL with absolute image paths (so the file works from any folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for p in products:
            row = {"sku": p.sku, "title": p.title, "category": p.category, "attributes": p.attributes,
                   "images": [str(i.resolve()) for i in p.images]}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def open_rgb(path: Path) -> Image.Image:
    """Decode an image file as RGB; DataError names the file when it is not an image."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from exc


def squash(image: Image.Image, size: int) -> np.ndarray:
    """Resize to size x size ignoring aspect (open_clip resize_mode 'squash', bicubic) as uint8 HWC."""
    return np.asarray(image.resize((size, size), Image.BICUBIC), dtype=np.uint8)


class KeyedCache:
    """An incremental on-disk cache of one array row per key: STEM.npy plus STEM.json listing the keys.

    Used for decoded images and text-trunk outputs: a later run, whatever its split or data files, computes
    only the rows of keys not seen yet (`missing`), appends them (`add`) and reads rows by key (`rows`).
    """

    def __init__(self, cache_dir: Path | None, stem: str, row_shape: tuple[int, ...], dtype):
        self.cache_dir, self.stem = cache_dir, stem
        self.known: dict[str, int] = {}
        self.array = np.zeros((0, *row_shape), dtype=dtype)
        if cache_dir is not None and (cache_dir / f"{stem}.json").is_file():
            try:
                names = json.loads((cache_dir / f"{stem}.json").read_text())
                arr = np.load(cache_dir / f"{stem}.npy", mmap_mode="r")
                if arr.shape == (len(names), *row_shape):
                    self.known, self.array = {n: i for i, n in enumerate(names)}, arr
            except (OSError, ValueError):
                pass

    def missing(self, keys: Iterable[str]) -> list[str]:
        """Keys without a row, each once, in first-seen order."""
        return list(dict.fromkeys(k for k in keys if k not in self.known))

    def add(self, keys: Sequence[str], rows: np.ndarray) -> None:
        """Append rows for new keys and rewrite the files atomically (two runs never write the same file)."""
        for k in keys:
            self.known[k] = len(self.known)
        self.array = np.concatenate([np.asarray(self.array), rows])
        if self.cache_dir is None:
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        names = [""] * len(self.known)
        for k, i in self.known.items():
            names[i] = k
        tmp = f"{self.stem}.{os.getpid()}.tmp"
        np.save(self.cache_dir / f"{tmp}.npy", self.array)
        (self.cache_dir / f"{tmp}.json").write_text(json.dumps(names))
        (self.cache_dir / f"{tmp}.npy").replace(self.cache_dir / f"{self.stem}.npy")
        (self.cache_dir / f"{tmp}.json").replace(self.cache_dir / f"{self.stem}.json")

    def rows(self, keys: Sequence[str]) -> np.ndarray:
        """The rows of `keys` (all known), as a contiguous in-memory array."""
        return np.ascontiguousarray(self.array[[self.known[k] for k in keys]])


class ShardedCache:
    """KeyedCache's interface (missing / add / rows) for large rows, such as a trunk's spatial feature grids.

    Each `add` writes one new shard (STEM/<n>-<pid>.npy) and rewrites only the small index (STEM/index.json:
    the shards and their keys), so a cache of gigabytes grows without rewriting what it already holds, and an
    interrupted run keeps every shard it finished. Rows are read from memory-mapped shards.
    """

    INDEX = "index.json"

    def __init__(self, cache_dir: Path | None, stem: str, row_shape: tuple[int, ...], dtype):
        self.folder = Path(cache_dir) / stem if cache_dir is not None else None
        self.row_shape, self.dtype = tuple(row_shape), np.dtype(dtype)
        self.shards: list[str] = []  # shard file names (or "" for in-memory shards)
        self.arrays: list[np.ndarray] = []
        self.keys: list[list[str]] = []
        self.known: dict[str, tuple[int, int]] = {}  # key -> (shard, row)
        index = self.folder / self.INDEX if self.folder is not None else None
        if index is not None and index.is_file():
            try:
                body = json.loads(index.read_text())
                for name, keys in zip(body["shards"], body["keys"]):
                    arr = np.load(self.folder / name, mmap_mode="r")
                    if arr.shape == (len(keys), *self.row_shape) and arr.dtype == self.dtype:
                        self._append(name, arr, keys)
            except (OSError, ValueError, KeyError, TypeError):
                pass  # an unreadable index or shard: those rows are computed again

    def _append(self, name: str, arr: np.ndarray, keys: Sequence[str]) -> None:
        shard = len(self.arrays)
        self.shards.append(name)
        self.arrays.append(arr)
        self.keys.append(list(keys))
        for row, k in enumerate(keys):
            self.known.setdefault(k, (shard, row))

    def __len__(self) -> int:
        return len(self.known)

    def missing(self, keys: Iterable[str]) -> list[str]:
        """Keys without a row, each once, in first-seen order."""
        return list(dict.fromkeys(k for k in keys if k not in self.known))

    def add(self, keys: Sequence[str], rows: np.ndarray) -> None:
        """Store rows for new keys as one new shard, then the index (both written atomically)."""
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape != (len(keys), *self.row_shape):
            raise ValueError(f"rows of shape {rows.shape} for {len(keys)} keys of {self.row_shape}")
        if self.folder is None:
            self._append("", rows, keys)
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{len(self.arrays):05d}-{os.getpid()}.npy"
        tmp = self.folder / f"{name}.tmp.npy"
        np.save(tmp, rows)
        tmp.replace(self.folder / name)
        self._append(name, np.load(self.folder / name, mmap_mode="r"), keys)
        tmp_index = self.folder / f"{self.INDEX}.{os.getpid()}.tmp"
        tmp_index.write_text(json.dumps({"row_shape": list(self.row_shape), "dtype": self.dtype.name,
                                         "shards": self.shards, "keys": self.keys}))
        tmp_index.replace(self.folder / self.INDEX)

    def rows(self, keys: Sequence[str]) -> np.ndarray:
        """The rows of `keys` (all known), as one contiguous in-memory array."""
        out = np.empty((len(keys), *self.row_shape), dtype=self.dtype)
        where = np.array([self.known[k] for k in keys], dtype=np.int64).reshape(-1, 2)
        for shard in np.unique(where[:, 0]) if len(keys) else []:
            sel = np.flatnonzero(where[:, 0] == shard)
            out[sel] = self.arrays[shard][where[sel, 1]]
        return out


def cell_colours(pixels: np.ndarray, side: int) -> np.ndarray:
    """Per cell of a side x side grid over uint8 (N, S, S, 3) images: the mean and standard deviation of R, G and
    B in [0, 1], (N, side * side, 6) float32 (the cells of a trunk's grid at stride S / side)."""
    n, size = len(pixels), pixels.shape[1]
    cell = size // side
    x = np.asarray(pixels, dtype=np.float32).reshape(n, side, cell, side, cell, 3) / 255.0
    x = x.transpose(0, 1, 3, 2, 4, 5).reshape(n, side * side, cell * cell, 3)
    return np.concatenate([x.mean(2), x.std(2)], axis=-1).astype(np.float32)


def image_cache(paths: Sequence[Path], size: int, cache_dir: Path | None, *, progress: bool = True) -> np.ndarray:
    """All images decoded once to a uint8 (N, size, size, 3) array.

    Decoding is the slow part of a small-image epoch, so decoded images are kept in a KeyedCache under
    cache_dir (images-<size>.npy + .json listing the files): later runs decode only images not seen yet.
    """
    from tqdm import tqdm

    keys = [str(p.resolve()) for p in paths]
    cache = KeyedCache(cache_dir, f"images-{size}", (size, size, 3), np.uint8)
    missing = cache.missing(keys)
    if missing:
        new = np.empty((len(missing), size, size, 3), dtype=np.uint8)

        def one(i: int) -> None:
            new[i] = squash(open_rgb(Path(missing[i])), size)

        # PIL releases the GIL while decoding, so two threads use both cores.
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(tqdm(pool.map(one, range(len(missing))), total=len(missing), desc=f"decode images {size}px",
                      disable=not progress, mininterval=1.0))
        cache.add(missing, new)
    return cache.rows(keys)
