"""Contrastive image-text training (the CLIP objective) on catalog products and shopper photos.

- Loss: symmetric InfoNCE over the batch with open_clip's learnable logit_scale (temperature). Pairs that
  are not real negatives are masked out of the softmax: products sharing a title (case-insensitive), and a
  facet text such as "colour: Red" against every product that has that facet. Optional extra terms: shopper
  photo <-> its product's catalog image (photo_pair_weight), and each image against the prompts for every
  value of each attribute and category level (facet_weight).
- Texts: each step a product is paired with one of its texts, drawn at random: the full product text
  (mmsearch.text.product_text), its title alone (the query form), or one facet text. With a locked
  (LiT) text trunk the pooled outputs of every distinct text are computed once and cached.
- Images: decoded once into a uint8 cache at the model's input size; light augmentation (random resized
  crop, horizontal flip; no colour jitter, since colour is an attribute to learn). With a locked pretrained
  vision trunk and cached_views > 0, the trunk's pooled features of a fixed set of views of every image
  (view 0 unaugmented, the others augmented) are computed once and cached; each step then draws one view per
  image and runs only the trainable head, so an epoch costs seconds instead of a trunk pass per image. The same
  pass keeps each image's view-0 spatial grid (cache_grids) for the captioner (training/caption/), whose trainer
  shares this module's run helpers: trunk_views, grid_cache, RunState, progress_bar, split_by_title, run_card.
- Resumable: the state after every epoch is in OUT/train_state.pt and the model folder is rewritten, so
  a killed run continues from its last epoch; the schedule and the data order derive from (seed, epoch).
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from mmsearch.plugins import runtime
from mmsearch.plugins.openclip import trunk_outputs
from mmsearch.training import data as D
from mmsearch.training import metrics as M
from mmsearch.training.evaluation import value_prompts, zero_shot_tasks
from mmsearch.training.model import ARCHS, Built, build_from_init, build_new, save_model

STATE_NAME = "train_state.pt"
HELDOUT_NAME = "heldout.jsonl"
HELDOUT_PRODUCTS_NAME = "heldout-products.jsonl"


@dataclass
class TrainConfig:
    """Everything that defines a training run (hashed to decide whether a run can be resumed)."""

    data: list[str]
    out: str
    photos: list[str] = field(default_factory=list)
    init: str | None = None
    arch: str = "lcnet050-64"
    epochs: int = 10
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: float = 0.05  # share of all steps
    seed: int = 0
    holdout: float = 0.1
    # probabilities of pairing a product with its full text, its title alone, or one facet text
    text_mix: tuple[float, float, float] = (0.5, 0.25, 0.25)
    photo_repeat: int = 1  # how often each shopper photo appears per epoch
    # Smallest image area a random resized crop keeps (1.0: no zoom, only the aspect jitter and flips). Catalog photos are always framed the
    # same way, so cropping them only hides what a title names; shopper photos (and the catalog images of the
    # products they show) are framed anew each time, so they are cropped.
    min_crop: float = 1.0
    photo_min_crop: float = 0.6
    init_temperature: float = 0.07  # softmax temperature at the start (learned from there; CLIP's 0.07)
    # Batches drawn from one data file at a time, so e.g. grocery photos meet grocery negatives (hard ones)
    # rather than fashion images they are trivially told apart from.
    batch_by_source: bool = True
    balance_photo_products: bool = False  # a product's catalog image as often as its shopper photos
    hard_batches: float = 0.0  # share of items batched by category family (hard negatives), see epoch_batches
    # Weight of a second, image-image contrastive loss between each shopper photo of a batch and its product's
    # catalog image (what a photo query must land on), beside the image-text loss; 0 = off.
    photo_pair_weight: float = 0.0
    # Weight of a facet-vocabulary loss: each image against the prompts for every value of each attribute and
    # category level (the zero-shot task, learned on the training products), beside the image-text loss; 0 = off.
    facet_weight: float = 0.0
    facet_photos: bool = True  # the facet loss on shopper photos too (off: catalog images only)
    # Share of the products outside the held-out titles also held out, by sha256 of the sku (their titles stay in
    # training through other products): the product-level split, beside the title-level one (`holdout`).
    holdout_products: float = 0.0
    # Locked pretrained vision trunk only: train on its cached pooled features of this many fixed views of each
    # catalog image (view 0 unaugmented) instead of running it on freshly augmented images every step; 0 = off.
    cached_views: int = 0
    cached_photo_views: int = 8  # the same for shopper photos and the catalog images of photographed products
    # With cached_views: also keep the trunk's spatial grid of each image's view 0 (a trunk pass computes it anyway),
    # in the grid cache the captioner reads, so a later train_captioner runs the trunk only on images not seen here.
    cache_grids: bool = True
    # A JSONL of {"sku": ..., "texts": [...]}: each listed training product trains on those texts in place of its
    # title and product text (its facets stay), and a product listed with no text is left out of training. The
    # held-out splits are still made from the catalog's own titles. Written by the bootstrap (training/bootstrap.py)
    # and by --corrupt-titles.
    texts: str | None = None
    max_steps: int | None = None  # stop early (tests, smoke runs)
    checkpoint_every_s: float = 60.0  # resumable state + model folder at most this often (and at the end)
    device: str = "auto"
    cache_dir: str | None = None

    def run_key(self) -> str:
        """Identity of the run for resuming: everything but the output folder, device and step cap, plus the
        definition of a fresh run's architecture (a redefined one does not resume an old state)."""
        d = asdict(self)
        for k in ("out", "device", "cache_dir", "cache_grids", "max_steps", "checkpoint_every_s", "texts"):
            d.pop(k)
        if self.texts:  # the texts file by its content, wherever it lies (a shared first model resumes)
            d["texts_sha256"] = hashlib.sha256(Path(self.texts).read_bytes()).hexdigest()
        if self.init is None and self.arch in ARCHS:
            d["arch_definition"] = asdict(ARCHS[self.arch])
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Item:
    """One training pair source: an image (catalog image or shopper photo) of product `product`."""

    image: int  # row in the image cache
    product: int
    source: int = 0  # which --data file the product came from
    photographed: bool = False  # a shopper photo, or the catalog image of a product that has some
    shopper_photo: bool = False


class TrainingError(RuntimeError):
    """The run cannot start or continue; the message says why."""


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) RNGs."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# --- run helpers (shared by the embedder and captioner trainers) ----------------------------------------------------
def progress_bar(iterable=None, *, total: int | None = None, desc: str = "", enabled: bool = True):
    """A tqdm bar on stderr that redraws at most every 2 s (training logs stay readable)."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not enabled, mininterval=2.0, file=sys.stderr)


class RunState:
    """The resumable state of a run, OUT/train_state.pt: saved after finished epochs, and read back only by the
    same run (its run_key); another run's state is an error, or is replaced when `replace`."""

    def __init__(self, out: Path, run_key: str, replace: bool = False, log: Callable[[str], None] = print):
        self.path, self.run_key, self.replace, self.log = Path(out) / STATE_NAME, run_key, replace, log

    def load(self) -> dict | None:
        """The saved state of this run, or None to start afresh."""
        state = torch.load(self.path, map_location="cpu", weights_only=False) if self.path.is_file() else None
        if state is not None and state.get("run_key") != self.run_key and self.replace:
            self.log(f"{self.path.parent} holds another training run: replacing it")
            return None
        if state is not None and state.get("run_key") != self.run_key:
            raise TrainingError(
                f"{self.path.parent} holds a different training run (other data or hyperparameters); "
                "give a new --out or delete that folder"
            )
        return state

    def save(self, **state) -> None:
        """Write the state (model and optimizer state dicts, epoch, history, seconds ...) with the run_key."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"run_key": self.run_key, **state}, self.path)


def split_by_title(products: Sequence[D.Product], fraction: float, keep: set[str] = frozenset()
                   ) -> tuple[list[D.Product], list[D.Product]]:
    """(train, held out): products whose title is held out (data.is_held_out), except skus in `keep`."""
    val = [p for p in products if p.sku not in keep and D.is_held_out(p.title, fraction)]
    held = {p.sku for p in val}
    return [p for p in products if p.sku not in held], val


def training_split(products: Sequence[D.Product], holdout: float, holdout_products: float,
                   with_photos: set[str] = frozenset()) -> tuple[list[D.Product], list[D.Product], list[D.Product]]:
    """(train, held out by title, held out by product) as the embedder's trainer splits a catalog: the titles of
    `holdout` (split_by_title; products with shopper photos stay in training), then `holdout_products` of the
    other products by sku."""
    _, val = split_by_title(products, holdout, keep=with_photos)
    val_skus = {p.sku for p in val}
    val_sku = [p for p in products if p.sku not in with_photos and p.sku not in val_skus
               and D.in_share(p.sku, holdout_products)]
    held = val_skus | {p.sku for p in val_sku}
    return [p for p in products if p.sku not in held], val, val_sku


def read_texts(path: str | Path) -> dict[str, list[str]]:
    """A training texts file (TrainConfig.texts): sku -> the texts that product trains on."""
    out: dict[str, list[str]] = {}
    for line_no, row in D._read_jsonl(Path(path)):
        texts = row.get("texts")
        if not isinstance(row.get("sku"), str) or not isinstance(texts, list) or not all(
                isinstance(t, str) and t.strip() for t in texts):
            raise D.DataError(f"{path}:{line_no}: a row must be {{\"sku\": str, \"texts\": [non-empty str, ...]}}")
        out[row["sku"]] = [t.strip() for t in texts]
    return out


def write_texts(texts: dict[str, list[str]], path: str | Path) -> Path:
    """Write a training texts file (one row per sku, in the order given)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for sku, rows in texts.items():
            fh.write(json.dumps({"sku": sku, "texts": list(rows)}, ensure_ascii=False) + "\n")
    return path


def run_card(name: str, architecture: dict, data: dict, cfg, history: list[dict], seconds: float, finished: bool,
             device: str) -> dict:
    """A model card's sections (model.save_model adds the weights' sha256): what was trained on what, how, and
    the metrics after every epoch."""
    return {
        "name": name,
        "architecture": architecture,
        "data": data,
        "hyperparameters": {k: v for k, v in asdict(cfg).items() if k not in ("out", "cache_dir")},
        "training": {"finished": finished, "epochs_done": len(history), "seconds": round(seconds, 1),
                     "device": device, "torch": torch.__version__, "python": platform.python_version()},
        "metrics": {"per_epoch": history},
    }


# --- text features -------------------------------------------------------------------------------------------
def module_identity(module: torch.nn.Module) -> str:
    """sha256 prefix over a module's weights and buffers (keys the caches of a locked trunk's outputs). Batch
    norm's step counters are left out: they do not change an output, and a trunk loaded from a saved model has them
    where the same trunk locked for training does not."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def trunk_identity(built: Built) -> str:
    """Identity of the locked text trunk's weights (keys the pooled-feature cache)."""
    return module_identity(built.net.text.transformer)


@torch.no_grad()
def pooled_text_features(built: Built, texts: list[str], cache_dir: Path | None, progress: bool = True,
                         device: str = "cpu") -> np.ndarray:
    """Pooled outputs of the locked HF text trunk for every text (before the trainable projection).

    The trunk is the costly part on a CPU (~tens of texts a second on 2 busy cores), so outputs are kept in
    an incremental cache per (trunk weights, context length): later runs compute only texts not seen yet.
    """
    from tqdm import tqdm

    tok = built.tokenizer
    text = built.net.text
    dim = text.config.hidden_size
    cache = D.KeyedCache(cache_dir, f"textfeat-{trunk_identity(built)}-{tok.context_length}", (dim,), np.float32)
    missing = sorted(cache.missing(texts), key=len)
    if missing:
        text.eval()
        pad = text.config.pad_token_id
        new = np.empty((len(missing), dim), dtype=np.float32)
        bs = 128
        # Sorted by length so a batch pads little; masked mean pooling makes padding irrelevant to the result.
        for start in tqdm(range(0, len(missing), bs), desc=f"text features ({len(missing)} texts, locked tower)",
                          disable=not progress, mininterval=2.0):
            ids = tok(missing[start:start + bs])
            mask = ids != pad
            width = int(mask.sum(1).max())
            ids, mask = ids[:, :width].to(device), mask[:, :width].long().to(device)
            hidden = text.transformer(input_ids=ids, attention_mask=mask)
            new[start:start + len(ids)] = text.pooler(hidden, mask).float().cpu().numpy()
        cache.add(missing, new)
    return cache.rows(texts)


def bag_inputs(built: Built, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The token bag's input of each text (token ids) and its length (a batch is cut to its longest text)."""
    tokens = built.tokenizer(texts)
    pad = built.net.text.config.pad_token_id
    return tokens, (tokens != pad).long().cumsum(1).argmax(1) + 1


def project_texts(net, feats: torch.Tensor, tokens: torch.Tensor | None = None,
                  lengths: torch.Tensor | None = None) -> torch.Tensor:
    """A locked text trunk's pooled outputs through the trainable projection, plus the token bag when the tower
    has one (what its forward hook adds, plugin.add_token_bag)."""
    out = net.text.proj(feats)
    if hasattr(net.text, "token_bag"):
        width = int(lengths.max())
        out = out + net.text.token_bag(tokens[:, :width].to(feats.device))
    return out


def head_inputs(visual, paths: Sequence[Path], size: int, mean: torch.Tensor, std: torch.Tensor,
                cache_dir: Path | None, device: str = "cpu", progress: bool = True) -> np.ndarray:
    """What a locked timm image tower's head reads (`trunk_outputs`) for each image file's view 0, (N, dim)
    float16, from the trunk-feature cache (the trunk runs only on images it lacks). `visual` needs only `trunk`
    and, for a stage-pooled tower, `stage_pool`."""
    keys = view_keys(paths, np.ones(len(paths), np.int64), np.ones(len(paths)), 0)
    cache = pooled_cache(visual, size, cache_dir)
    missing = cache.missing(keys)
    if missing:
        pixels = D.image_cache([Path(k.split("|")[0]) for k in missing], size, cache_dir, progress=progress)
        trunk_views(visual.trunk, pixels, missing, np.arange(len(missing)), np.zeros(len(missing), np.int64),
                    np.ones(len(missing)), pooled=cache, pool=lambda x: trunk_outputs(visual, x), mean=mean,
                    std=std, device=device, autocast=lambda: runtime.autocast(device, None), progress=progress)
    return cache.rows(keys)


@torch.no_grad()
def model_vectors(built: Built, image_paths: Sequence[Path], texts: list[str], cache_dir: Path | None,
                  device: str = "cpu", progress: bool = True, batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors of image files and texts from a trained model, the way training computes them: a locked
    trunk's pooled features of each image's view 0 from the trunk-feature cache (the trunk runs only on images it
    lacks) through the head, and a locked text trunk's cached pooled outputs through the projection (and token
    bag); other models run their towers. View 0 through the head is what the plugin serves (float16 rounding)."""
    net = built.net.to(device).eval()
    visual = net.visual
    size = built.preprocess_cfg["size"]
    size = int(size if isinstance(size, int) else size[0])
    mean = torch.tensor(built.preprocess_cfg["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(built.preprocess_cfg["std"], device=device).view(1, 3, 1, 1)
    paths = [Path(p) for p in image_paths]
    out_img = []
    if hasattr(visual, "trunk") and hasattr(visual, "head"):
        feats = head_inputs(visual, paths, size, mean, std, cache_dir, device, progress)
        for start in range(0, len(paths), batch):
            out_img.append(visual.head(torch.from_numpy(feats[start:start + batch]).to(device).float()))
    else:
        pixels = D.image_cache(paths, size, cache_dir, progress=progress)
        for start in range(0, len(paths), batch):
            out_img.append(net.encode_image(to_pixels(pixels[start:start + batch], mean, std, device)))
    out_txt = []
    if not texts:
        pass
    elif built.lit:
        feats = torch.from_numpy(pooled_text_features(built, texts, cache_dir, progress, device))
        tokens, lengths = bag_inputs(built, texts) if hasattr(net.text, "token_bag") else (None, None)
        for start in range(0, len(texts), batch):
            sl = slice(start, start + batch)
            out_txt.append(project_texts(net, feats[sl].to(device), None if tokens is None else tokens[sl],
                                         None if lengths is None else lengths[sl]))
    else:
        for start in range(0, len(texts), batch):
            out_txt.append(net.encode_text(built.tokenizer(texts[start:start + batch]).to(device)))

    def unit(rows: list[torch.Tensor]) -> np.ndarray:
        return F.normalize(torch.cat(rows).float(), dim=-1).cpu().numpy() if rows else np.zeros((0, 0), np.float32)

    return unit(out_img), unit(out_txt)


class TextBank:
    """Distinct training texts with ids, and per product the ids of its text variants."""

    def __init__(self):
        self.texts: list[str] = []
        self.ids: dict[str, int] = {}

    def add(self, text: str) -> int:
        i = self.ids.get(text)
        if i is None:
            i = self.ids[text] = len(self.texts)
            self.texts.append(text)
        return i


# --- augmentation ----------------------------------------------------------------------------------------------
def augment(batch: torch.Tensor, gen: torch.Generator, min_scale: float | torch.Tensor = 0.6) -> torch.Tensor:
    """Random resized crop (area min_scale..1, per image when a tensor; aspect 3/4..4/3) and horizontal flip."""
    n = batch.shape[0]
    area = min_scale + (1 - min_scale) * torch.rand(n, generator=gen)
    log_r = (torch.rand(n, generator=gen) * 2 - 1) * math.log(4 / 3)
    ratio = torch.exp(log_r)
    sx = torch.sqrt(area * ratio).clamp(max=1.0)
    sy = torch.sqrt(area / ratio).clamp(max=1.0)
    tx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - sx)
    ty = (torch.rand(n, generator=gen) * 2 - 1) * (1 - sy)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = sx * flip
    theta[:, 0, 2] = tx
    theta[:, 1, 1] = sy
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta.to(batch.device), list(batch.shape), align_corners=False)
    return F.grid_sample(batch, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def to_pixels(images: np.ndarray, mean: torch.Tensor, std: torch.Tensor, device: str) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW on device."""
    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div_(255)
    return (x - mean) / std


# --- cached trunk outputs (shared by the embedder and captioner trainers) ------------------------------------------
def view_keys(paths: Sequence[Path | str], n_views: Sequence[int], crop: Sequence[float], seed: int) -> list[str]:
    """The cache key of each view of each image: (file, view number, crop area, seed). View 0 is the image
    itself (its key names neither crop nor seed), so every run and every head shares it."""
    return [f"{Path(path).resolve()}|{v}|{crop[i] if v else 1.0}|{seed if v else 0}"
            for i, path in enumerate(paths) for v in range(int(n_views[i]))]


def pooled_cache(visual: torch.nn.Module, image_size: int, cache_dir: Path | None) -> D.KeyedCache:
    """The cache of what a locked timm image tower's head reads (`trunk_outputs`), per (trunk weights, input
    size, pooling), rows keyed like the views (`view_keys`)."""
    trunk, pool = visual.trunk, getattr(visual, "stage_pool", None)
    stem = f"trunkfeat-{module_identity(trunk)}-{image_size}"
    if pool is None:
        return D.KeyedCache(cache_dir, stem, (trunk.num_features,), np.float16)
    return D.KeyedCache(cache_dir, f"{stem}-stages{pool.colour_bins}", (pool.dim(trunk, image_size),), np.float16)


def grid_cache(trunk: torch.nn.Module, image_size: int, cache_dir: Path | None) -> D.ShardedCache:
    """The sharded cache of a timm trunk's spatial grids at an input size, per (trunk weights, input size): rows
    of (H * W tokens, channels) fp16, keyed like the pooled features (`view_keys`)."""
    side = image_size // int(trunk.feature_info[-1]["reduction"])
    return D.ShardedCache(cache_dir, f"trunkgrid-{module_identity(trunk)}-{image_size}",
                          (side * side, trunk.num_features), np.float16)


@torch.no_grad()
def trunk_views(trunk: torch.nn.Module, pixels: np.ndarray, keys: Sequence[str], owner: np.ndarray,
                view_of: np.ndarray, crop: np.ndarray, *, pooled: D.KeyedCache | None = None,
                grids: D.ShardedCache | None = None, pool: Callable | None = None, mean: torch.Tensor,
                std: torch.Tensor, device: str,
                autocast: Callable, progress: bool = True, desc: str = "trunk features") -> None:
    """Run a locked timm trunk once over every view that a cache lacks, and store what each cache holds.

    Key j is view `view_of[j]` of image `pixels[owner[j]]`; a view > 0 is augmented (crop area down to crop[j],
    flip) by a generator seeded from its key, so its features never depend on the batch it was computed in.
    `pooled` takes the trunk's pooled vector (C,), `grids` its spatial feature grid as (H*W, C) tokens (view 0
    keys only): the pooled vector is the trunk's own pooling of that grid, or `pool(x)` -> (grid, pooled) when
    given (an image tower's `trunk_outputs`), so one pass serves both.
    """
    want_pooled = set(pooled.missing(keys)) if pooled is not None else set()
    want_grid = set(grids.missing([k for k, v in zip(keys, view_of) if v == 0])) if grids is not None else set()
    todo, seen = [], set()  # rows of the keys to compute, each key once
    for j, k in enumerate(keys):
        if (k in want_pooled or k in want_grid) and k not in seen:
            seen.add(k)
            todo.append(j)
    was_training = trunk.training
    trunk.eval()
    bs, chunk = 256, 8192
    bar = progress_bar(total=len(todo), desc=f"{desc} ({len(todo)} views)", enabled=progress)
    for c in range(0, len(todo), chunk):
        part = todo[c:c + chunk]
        pooled_keys, pooled_rows, grid_keys, grid_rows = [], [], [], []
        for start in range(0, len(part), bs):
            js = part[start:start + bs]
            x = to_pixels(pixels[owner[js]], mean, std, device)
            for row, j in enumerate(js):
                if view_of[j]:
                    gen = torch.Generator().manual_seed(D.key_hash(keys[j]) >> 1)
                    x[row] = augment(x[row:row + 1], gen, float(crop[j]))[0]
            x = x.contiguous(memory_format=torch.channels_last)
            with autocast():
                if pool is not None:
                    grid, out = pool(x)
                elif want_grid:
                    grid = trunk.forward_features(x)
                    out = trunk.forward_head(grid)  # = trunk(x): timm's forward is forward_head(forward_features)
                else:
                    grid, out = None, trunk(x)
            for row, j in enumerate(js):
                if keys[j] in want_pooled:
                    pooled_keys.append(keys[j])
                    pooled_rows.append(out[row].float().cpu().numpy())
                if keys[j] in want_grid:
                    grid_keys.append(keys[j])
                    grid_rows.append(grid[row].flatten(1).t().float().cpu().numpy())
            bar.update(len(js))
        if pooled_keys:
            pooled.add(pooled_keys, np.stack(pooled_rows).astype(np.float16))
        if grid_keys:
            grids.add(grid_keys, np.stack(grid_rows).astype(np.float16))
    bar.close()
    trunk.train(was_training)


# --- loss --------------------------------------------------------------------------------------------------------
def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor,
              not_negative: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE (open_clip ClipLoss) with pairs[i, j] (i != j) masked when not_negative[i, j].

    not_negative[i, j]: text j is also a true description of image i (so it is no negative of i).
    """
    image_emb = F.normalize(image_emb.float(), dim=-1)
    text_emb = F.normalize(text_emb.float(), dim=-1)
    logits = logit_scale.exp() * image_emb @ text_emb.t()
    labels = torch.arange(logits.shape[0], device=logits.device)
    if not_negative is not None:
        mask = not_negative.clone()
        mask.fill_diagonal_(False)
        logits = logits.masked_fill(mask, float("-inf"))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warmup then cosine decay to 0."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class TrainingRun:
    """What every training command's run holds: its config, where it writes, the device, the feature cache."""

    def __init__(self, cfg, log: Callable[[str], None] = print, progress: bool = True, replace: bool = False):
        self.cfg, self.log, self.progress = cfg, log, progress
        self.replace = replace  # a different run in the output folder is replaced instead of being an error
        self.out = Path(cfg.out)
        try:
            self.device = runtime.resolve_device(cfg.device)
        except ValueError as exc:
            raise TrainingError(str(exc)) from None
        self.cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else None


class HeadTrainer(TrainingRun):
    """The epoch loop of the heads trained over cached trunk grids (captioner, answerer).

    AdamW (weight decay on matrices only), warm-up then cosine (`lr_at`), gradient clipping at 1, per-epoch
    validation, and a resumable RunState saved every `cfg.checkpoint_every_s` and at the end. A subclass has
    `cfg` (with seed, epochs, batch_size, lr, weight_decay, warmup, max_steps, checkpoint_every_s, run_key()),
    `out`, `replace`, `device`, `progress`, `log`, and `epoch_order(epoch)` (an epoch's example order, from
    (seed, epoch) only), `batch_loss(model, idx)`, `validate(model)`, `save(model, history, seconds, finished)`.
    """

    def check_trunk(self) -> None:
        """The options every head checks first: at least one epoch, a trunk with pretrained weights."""
        cfg = self.cfg
        if cfg.epochs < 1:
            raise TrainingError("--epochs must be at least 1")
        if cfg.trunk not in ARCHS or not ARCHS[cfg.trunk].vision_weights:
            choices = ", ".join(n for n, a in ARCHS.items() if a.vision_weights)
            raise TrainingError(f"--trunk {cfg.trunk!r} is not an architecture with a pretrained trunk ({choices})")

    def fit(self, model, describe: str) -> dict:
        """Train `model` (resuming when OUT/train_state.pt matches the config); returns the model card."""
        import torch

        cfg = self.cfg
        decay = [p for p in model.parameters() if p.ndim >= 2]
        no_decay = [p for p in model.parameters() if p.ndim < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
        n = len(self.epoch_order(0))
        bs = min(cfg.batch_size, n)
        steps_per_epoch = max(1, n // bs)
        total = cfg.epochs * steps_per_epoch
        warmup = max(1, int(cfg.warmup * total))
        run_state = RunState(self.out, cfg.run_key(), self.replace, self.log)
        state = run_state.load()
        start_epoch, history, seconds = 0, [], 0.0
        if state is not None:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            start_epoch, history, seconds = state["epoch"], state["history"], state["seconds"]
            self.log(f"resuming {self.out} after epoch {start_epoch}/{cfg.epochs}")
        self.log(f"model: {describe} on {self.device}; {cfg.epochs} epochs x {steps_per_epoch} steps of {bs}")
        step = start_epoch * steps_per_epoch
        model.train()
        stop, last_save, card = False, time.time(), None
        for epoch in range(start_epoch, cfg.epochs):
            order = self.epoch_order(epoch)
            torch.manual_seed(cfg.seed * 1_000_003 + epoch)  # dropout masks: a resumed epoch draws the same
            t0 = time.time()
            bar = progress_bar(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", enabled=self.progress)
            loss_sum, n_steps = 0.0, 0
            for b in bar:
                if cfg.max_steps is not None and step >= cfg.max_steps:
                    stop = True
                    break
                for group in opt.param_groups:
                    group["lr"] = lr_at(step, total, cfg.lr, warmup)
                loss = self.batch_loss(model, order[b * bs:(b + 1) * bs])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                step += 1
                loss_sum += loss.item()
                n_steps += 1
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            bar.close()
            seconds += time.time() - t0
            if stop and n_steps < steps_per_epoch:
                card = self.save(model, history, seconds, finished=False)
                break
            metrics = self.validate(model)
            record = {"epoch": epoch + 1, "steps": step, "loss": round(loss_sum / max(1, n_steps), 4),
                      "seconds": round(seconds, 1), **metrics}
            history.append(record)
            self.log(f"epoch {epoch + 1}: loss {record['loss']:.3f}" + "".join(
                f", {k} {v:.3f}" for k, v in metrics.items() if isinstance(v, float)))
            last = epoch + 1 == cfg.epochs
            if not (last or stop or time.time() - last_save >= cfg.checkpoint_every_s):
                continue
            last_save = time.time()
            card = self.save(model, history, seconds, finished=last)
            run_state.save(model=model.state_dict(), optimizer=opt.state_dict(), epoch=epoch + 1, history=history,
                           seconds=seconds)
            if stop:
                break
        else:
            if card is None:  # nothing left to train: the folder is rewritten from the saved state
                self.log(f"{self.out} is already trained ({cfg.epochs} epochs)")
                card = self.save(model, history, seconds, finished=True)
        return card


# --- the run --------------------------------------------------------------------------------------------------
class Trainer(TrainingRun):
    """Prepares data and model from a TrainConfig and runs (or resumes) the training."""

    # ---- preparation
    def prepare(self) -> None:
        cfg = self.cfg
        if cfg.epochs < 1:
            raise TrainingError("--epochs must be at least 1")
        if cfg.init is None and cfg.arch not in ARCHS:
            raise TrainingError(f"unknown architecture {cfg.arch!r}; choose one of {', '.join(ARCHS)}")
        if abs(sum(cfg.text_mix) - 1) > 1e-6 or min(cfg.text_mix) < 0:
            raise TrainingError(f"text_mix {cfg.text_mix} must be three non-negative shares summing to 1")
        catalog = D.load_catalog(cfg.data)
        source_of = {}
        for i, path in enumerate(cfg.data):
            for p in D.load_products(path):
                source_of.setdefault(p.sku, i)
        photos: list[D.Photo] = []
        for path in cfg.photos:
            photos += D.load_photos(path, (p.sku for p in catalog.products))
        with_photos = {ph.sku for ph in photos}
        # Products with shopper photos stay in training: photo search is evaluated on a separate photo split.
        # The product-level split: other products held out by sku; their titles stay in training (twins).
        train, val, val_sku = training_split(catalog.products, cfg.holdout, cfg.holdout_products, with_photos)
        # Training texts in place of the catalog's (TrainConfig.texts); a product listed without any is left out.
        self.texts = read_texts(cfg.texts) if cfg.texts else {}
        train = [p for p in train if self.texts.get(p.sku, True)]
        if not train:
            raise TrainingError("no training products left after the held-out split; lower --holdout")
        self.train_products, self.val_products, self.photos = train, val, photos
        self.val_products_by_sku = val_sku
        self.fingerprint = D.fingerprint([*cfg.data, *cfg.photos, *([cfg.texts] if cfg.texts else [])])

        self.built = self._build()
        size = int(self.built.preprocess_cfg["size"] if isinstance(self.built.preprocess_cfg["size"], int)
                   else self.built.preprocess_cfg["size"][0])
        self.image_size = size
        # One image cache for train images, photos and validation images.
        paths: list[Path] = []
        self.items: list[Item] = []
        for pi, p in enumerate(train):
            for img in p.images:
                self.items.append(Item(len(paths), pi, source_of[p.sku], p.sku in with_photos))
                paths.append(img)
        sku_index = {p.sku: i for i, p in enumerate(train)}
        photo_items = []
        for ph in photos:
            photo_items.append(Item(len(paths), sku_index[ph.sku], source_of[ph.sku], True, True))
            paths.append(ph.image)
        first: dict[int, Item] = {}  # each training product's first catalog image
        for it in self.items:
            first.setdefault(it.product, it)
        self.catalog_image = {p: it.image for p, it in first.items()}
        if cfg.balance_photo_products:
            # The catalog image of a product with shopper photos is what a photo query must land on: show it
            # (augmented) as often as its photos, instead of once an epoch beside thousands of photos.
            photo_items += [first[it.product] for it in photo_items if it.product in first]
        self.items += photo_items * max(1, cfg.photo_repeat)
        self.val_images: list[int] = []
        for p in val:
            self.val_images.append(len(paths))  # first image of each held-out product
            paths.append(p.images[0])
        self.image_paths = paths
        self.log(f"data: {len(train)} train products, {len(photos)} photos, {len(val)} held-out products"
                 + (f" (+ {len(val_sku)} held out by product)" if val_sku else "")
                 + f" ({len(self.items)} pairs an epoch); fingerprint {self.fingerprint[:12]}")
        families: dict[str, int] = {}
        self.item_family = np.array([families.setdefault(train[it.product].category.rpartition("/")[0], len(families))
                                     for it in self.items], dtype=np.int64)
        self.pixels = D.image_cache(paths, size, self.cache_dir, progress=self.progress)

        # Texts: full product text, title, and facet texts for every training product.
        bank = TextBank()
        # Per product: its full-text ids (none when its texts are given), the ids a title draw picks from, and
        # the ids of each facet's wordings.
        self.variants: list[tuple[int, list[int], list[list[int]]]] = []
        facet_ids: dict[tuple[str, str], int] = {}
        self.product_facets: list[list[int]] = []
        for p in train:
            facets = p.facets()
            fids = [facet_ids.setdefault((k, v), len(facet_ids)) for k, v in facets]
            self.product_facets.append(fids)
            given = self.texts.get(p.sku)
            full = bank.add(p.text) if cfg.text_mix[0] > 0 and given is None else -1
            own = [bank.add(t) for t in given] if given is not None else [bank.add(p.title)]
            self.variants.append((full, own, [[bank.add(t) for t in D.facet_texts(k, v)] for k, v in facets]))
        self.facet_of_text: dict[int, int] = {}
        for (k, v), fid in facet_ids.items():
            for t in D.facet_texts(k, v):
                self.facet_of_text.setdefault(bank.ids[t], fid)
        titles = {}
        self.title_ids = np.array([titles.setdefault(D.title_key(self.texts.get(p.sku, [p.title])[0]), len(titles))
                                   for p in train])
        # Validation texts: held-out titles (queries) and prompts for two attributes.
        self.val_queries = sorted({D.title_key(p.title): p.title for p in val}.values())
        self.val_attrs = {}
        for key in ("article_type", "colour"):
            values = sorted({str(p.attributes[key]) for p in val if p.attributes.get(key) not in (None, "")})
            if len(values) > 1:
                self.val_attrs[key] = values
        # Facet vocabularies: per zero-shot task (evaluation.zero_shot_tasks) the prompt text ids of every value
        # (values x templates) and each training product's value (-1: none).
        self.facet_tasks: list[tuple[torch.Tensor, torch.Tensor]] = []
        if cfg.facet_weight > 0:
            for key, labels in zero_shot_tasks(train).values():
                values = sorted({v for v in labels if v is not None})
                index = {v: i for i, v in enumerate(values)}
                ids = torch.tensor([[bank.add(t) for t in D.facet_texts(key, v)] for v in values])
                self.facet_tasks.append((ids, torch.tensor([index.get(v, -1) for v in labels])))
        for q in self.val_queries:
            bank.add(q)
        for key, values in self.val_attrs.items():
            for v in values:
                for t in D.facet_texts(key, v):
                    bank.add(t)
        self.bank = bank
        if self.built.lit:
            self.text_feats = torch.from_numpy(
                pooled_text_features(self.built, bank.texts, self.cache_dir, self.progress, self.device))
            if hasattr(self.built.net.text, "token_bag"):
                # The token bag's input per text, and its length (a batch is cut to its longest text).
                self.text_tokens, self.text_lengths = bag_inputs(self.built, bank.texts)
        self.facet_matrix = self._facet_matrix()
        self.features: torch.Tensor | None = None  # cached trunk features (cached_views), made in run()
        if cfg.cached_views > 0 and not self._trunk_locked():
            raise TrainingError("--cached-views needs a locked pretrained vision trunk (e.g. --arch effl0-128)")
        if cfg.cached_views == 0 and hasattr(self.built.net.visual, "stage_pool"):
            raise TrainingError("a stage-pooled image tower trains over cached trunk features: give --cached-views N")

    def _build(self) -> Built:
        try:
            if self.cfg.init:
                return build_from_init(self.cfg.init)
            return build_new(ARCHS[self.cfg.arch])
        except (ValueError, OSError, RuntimeError) as exc:
            raise TrainingError(str(exc).splitlines()[0]) from exc

    def _trunk_locked(self) -> bool:
        visual = self.built.net.visual
        return (hasattr(visual, "trunk") and hasattr(visual, "head")
                and not any(p.requires_grad for p in visual.trunk.parameters()))

    def cache_trunk_features(self) -> None:
        """The locked trunk's pooled features of every view of every image, computed once (cached_views), in an
        incremental cache per (trunk weights, input size) under cache_dir (see `trunk_views`)."""
        cfg, visual = self.cfg, self.built.net.visual
        trunk = visual.trunk
        n_views = np.ones(len(self.image_paths), dtype=np.int64)  # validation images: view 0 only
        crop = np.ones(len(self.image_paths))
        for it in self.items:
            n_views[it.image] = cfg.cached_photo_views if it.photographed else cfg.cached_views
            crop[it.image] = cfg.photo_min_crop if it.photographed else cfg.min_crop
        keys = view_keys(self.image_paths, n_views, crop, cfg.seed)
        owner = np.repeat(np.arange(len(self.image_paths)), n_views)
        view_of = np.concatenate([np.arange(n) for n in n_views])
        cache = pooled_cache(visual, self.image_size, self.cache_dir)
        grids = grid_cache(trunk, self.image_size, self.cache_dir) if cfg.cache_grids and self.cache_dir else None
        trunk_views(trunk, self.pixels, keys, owner, view_of, crop[owner], pooled=cache, grids=grids,
                    pool=lambda x: trunk_outputs(visual, x), mean=self.mean, std=self.std, device=self.device,
                    autocast=self._autocast, progress=self.progress)
        self.features = torch.from_numpy(cache.rows(keys))
        first = np.concatenate([[0], np.cumsum(n_views)[:-1]])
        self.view_first, self.view_count = torch.from_numpy(first), torch.from_numpy(n_views)
        norm = getattr(visual.head, "norm", None)
        if norm is not None and self.cfg.init is None:
            # a new stage-pooled head: its standardisation from the training images' unaugmented views
            norm.fit(self.features[self.view_first[sorted({it.image for it in self.items})]])

    def image_features(self, images: np.ndarray, gen: torch.Generator | None) -> torch.Tensor:
        """Cached trunk features of the given images: a random view each (view 0 when gen is None)."""
        idx = torch.from_numpy(np.asarray(images, dtype=np.int64))
        row = self.view_first[idx]
        if gen is not None:
            row = row + (torch.rand(len(idx), generator=gen) * self.view_count[idx]).long()
        return self.features[row].to(self.device).float()

    def _facet_matrix(self) -> torch.Tensor:
        """(products, max facets) facet ids, -2 padded (never equal to a text's facet id or -1)."""
        width = max((len(f) for f in self.product_facets), default=1) or 1
        m = torch.full((len(self.product_facets), width), -2, dtype=torch.long)
        for i, f in enumerate(self.product_facets):
            if f:
                m[i, :len(f)] = torch.tensor(f)
        return m

    # ---- batches
    def epoch_batches(self, gen: torch.Generator, bs: int) -> list[np.ndarray]:
        """Item rows of every batch of an epoch (full batches only, in random order).

        A share `hard_batches` of each pool's items is sorted by category family (the category path without
        its last level, e.g. Apparel/Topwear or Fruit/Apple) before it is cut into batches: such a batch holds
        t-shirts, shirts and tops, or only apples, so it can only be solved by colour, pattern, brand and
        gender, the details a title query names. The other batches are random (coarse negatives).
        """
        if self.cfg.batch_by_source:
            groups = [np.array([i for i, it in enumerate(self.items) if it.source == s])
                      for s in sorted({it.source for it in self.items})]
        else:
            groups = [np.arange(len(self.items))]
        pools = []
        for g in groups:
            g = g[torch.randperm(len(g), generator=gen).numpy()]
            n_hard = int(len(g) * self.cfg.hard_batches)
            hard = g[:n_hard]
            pools += [hard[np.argsort(self.item_family[hard], kind="stable")], g[n_hard:]]
        batches = []
        for g in pools:
            if len(g) < 2:
                continue
            n = max(1, len(g) // bs)
            batches += [g[b * bs:(b + 1) * bs] if len(g) >= bs else g for b in range(n)]
        return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]

    def _choose_texts(self, products: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        full, title, facet = self.cfg.text_mix
        kinds = rng.choice(3, size=len(products), p=[full, title, facet])
        out = np.empty(len(products), dtype=np.int64)
        for j, (pi, kind) in enumerate(zip(products, kinds)):
            t_full, t_title, t_facets = self.variants[pi]
            if kind == 2 and t_facets:
                wordings = t_facets[rng.integers(len(t_facets))]
                out[j] = wordings[rng.integers(len(wordings))]
            elif kind == 1 or t_full < 0:
                # One of several given texts at random (a single title draws nothing: runs stay as they were).
                out[j] = t_title[rng.integers(len(t_title))] if len(t_title) > 1 else t_title[0]
            else:
                out[j] = t_full
        return out

    def not_negative(self, products: np.ndarray, text_ids: np.ndarray) -> torch.Tensor:
        """[i, j] True when text j also describes image i: same title, same text, or j's facet is i's."""
        p = torch.from_numpy(products)
        t = torch.from_numpy(text_ids)
        titles = torch.from_numpy(self.title_ids[products])
        same = (titles[:, None] == titles[None, :]) | (t[:, None] == t[None, :])
        facet = torch.tensor([self.facet_of_text.get(int(x), -1) for x in text_ids])
        has = (self.facet_matrix[p][:, :, None] == facet[None, None, :]).any(dim=1)  # (images, texts)
        return (same | has).to(self.device)

    def batch_loss(self, rows: np.ndarray, rng: np.random.Generator, gen: torch.Generator) -> torch.Tensor:
        """The training loss of one batch of item rows (texts drawn with rng, augmentation with gen)."""
        cfg, net = self.cfg, self.built.net
        products = np.array([self.items[r].product for r in rows])
        images = np.array([self.items[r].image for r in rows])
        text_ids = self._choose_texts(products, rng)
        pairs = self.photo_pairs(rows)
        catalog = np.array([self.catalog_image[p] for p in products[pairs]], dtype=np.int64)
        if self.features is not None:
            x = self.image_features(np.concatenate([images, catalog]), gen)
        else:
            crop = torch.tensor([cfg.photo_min_crop if self.items[r].photographed else cfg.min_crop for r in rows])
            x = augment(to_pixels(self.pixels[images], self.mean, self.std, self.device), gen, crop)
            if len(pairs):
                # The paired catalog images ride in the same forward pass (one set of batch-norm statistics).
                x = torch.cat([x, augment(to_pixels(self.pixels[catalog], self.mean, self.std, self.device), gen,
                                          cfg.photo_min_crop)])
        with self._autocast():
            img_emb = net.visual.head(x) if self.features is not None else net.encode_image(x)
            txt_emb = self.encode_texts(text_ids)
            n = len(rows)
            loss = clip_loss(img_emb[:n], txt_emb, net.logit_scale, self.not_negative(products, text_ids))
            if len(pairs):
                same = torch.from_numpy(products[pairs][:, None] == products[pairs][None, :]).to(self.device)
                loss = loss + cfg.photo_pair_weight * clip_loss(img_emb[pairs], img_emb[n:], net.logit_scale, same)
            if self.facet_tasks:
                # Off for shopper photos, the facet loss stops pulling all photos of a category together, which
                # hurts telling their products apart (see README, grocery-only runs).
                keep = np.array([cfg.facet_photos or not self.items[r].shopper_photo for r in rows])
                loss = loss + cfg.facet_weight * self.facet_loss(img_emb[:n][torch.from_numpy(keep)], products[keep])
        return loss

    def facet_loss(self, img_emb: torch.Tensor, products: np.ndarray) -> torch.Tensor:
        """Mean over facet tasks of the cross-entropy of each image against the prompts for every value.

        The in-batch loss only contrasts the facets that happen to share a batch, so rare values (Copper,
        Mauve) are seldom negatives and absorb the frequent ones in zero-shot classification; here every value
        is a negative for every image, as in the zero-shot task. A value's prompt is the mean of its wordings.
        """
        img = F.normalize(img_emb.float(), dim=-1)
        scale = self.built.net.logit_scale.exp()
        # All tasks' prompts in one text pass (one call is cheaper than one per task).
        every = self.encode_texts(torch.cat([ids.flatten() for ids, _ in self.facet_tasks])).split(
            [ids.numel() for ids, _ in self.facet_tasks])
        losses = []
        for (ids, labels), enc in zip(self.facet_tasks, every):
            y = labels[torch.from_numpy(products)].to(self.device)
            has = y >= 0
            if not bool(has.any()):
                continue
            prompts = value_prompts(enc, len(ids))
            losses.append(F.cross_entropy(scale * img[has] @ prompts.t(), y[has]))
        return torch.stack(losses).mean() if losses else img.sum() * 0

    def photo_pairs(self, rows: np.ndarray) -> np.ndarray:
        """Positions in the batch of the shopper photos to pair with their product's catalog image (when on)."""
        if self.cfg.photo_pair_weight <= 0:
            return np.empty(0, dtype=np.int64)
        return np.array([j for j, r in enumerate(rows) if self.items[r].shopper_photo
                         and self.items[r].product in self.catalog_image], dtype=np.int64)

    def encode_texts(self, text_ids: np.ndarray | list[int]) -> torch.Tensor:
        net = self.built.net
        if self.built.lit:
            ids = torch.as_tensor(text_ids)
            bag = hasattr(net.text, "token_bag")
            return project_texts(net, self.text_feats[ids].to(self.device), self.text_tokens[ids] if bag else None,
                                 self.text_lengths[ids] if bag else None)
        tokens = self.built.tokenizer([self.bank.texts[i] for i in text_ids]).to(self.device)
        return net.encode_text(tokens)

    # ---- validation
    @torch.no_grad()
    def validate(self) -> dict:
        """Held-out retrieval (titles -> held-out images) and zero-shot accuracy on two attributes."""
        if not self.val_products:
            return {}
        net = self.built.net
        net.eval()
        emb = []
        for start in range(0, len(self.val_images), 512):
            rows = self.val_images[start:start + 512]
            with self._autocast():
                if self.features is not None:
                    out = net.visual.head(self.image_features(np.array(rows), None))
                else:
                    out = net.encode_image(to_pixels(self.pixels[rows], self.mean, self.std, self.device))
                emb.append(F.normalize(out.float(), dim=-1).cpu())
        img = torch.cat(emb).numpy()
        q = F.normalize(self.encode_texts([self.bank.ids[t] for t in self.val_queries]).float(), dim=-1).cpu().numpy()
        qkey = [D.title_key(t) for t in self.val_queries]
        by_title: dict[str, list[int]] = {}
        for i, p in enumerate(self.val_products):
            by_title.setdefault(D.title_key(p.title), []).append(i)
        rel = [np.array(by_title[k]) for k in qkey]
        out = M.retrieval_metrics(q @ img.T, rel, ks=(1, 10))
        res = {"recall@1": out["recall@1"], "recall@10": out["recall@10"], "mrr": out["mrr"]}
        for key, values in self.val_attrs.items():
            ids = [self.bank.ids[t] for v in values for t in D.facet_texts(key, v)]
            prompts = value_prompts(self.encode_texts(ids), len(values)).cpu().numpy()
            idx = {v: i for i, v in enumerate(values)}
            sel = [i for i, p in enumerate(self.val_products) if str(p.attributes.get(key, "")) in idx]
            labels = np.array([idx[str(self.val_products[i].attributes[key])] for i in sel])
            res[f"zero_shot_{key}"] = float(((img[sel] @ prompts.T).argmax(1) == labels).mean())
        net.train()
        if self.built.lit:
            net.text.transformer.eval()
        return res

    @torch.no_grad()
    def recalibrate_bn(self, batches: int = 32) -> None:
        """"Precise BN": batch-norm statistics recomputed over training batches drawn from all data files.

        Training batches come from one data file at a time, so the running averages of the last steps
        describe whichever files came last, not the mix the model serves (measured on the held-out fashion
        split: zero-shot article_type 0.14 with the running averages, 0.46 after recomputing them).
        """
        net = self.built.net
        bns = [m for m in net.visual.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        if not bns:
            return
        gen = torch.Generator().manual_seed(self.cfg.seed + 99_991)
        bs = min(self.cfg.batch_size, len(self.items))
        order = torch.randperm(len(self.items), generator=gen).numpy()
        momenta = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches below
        was_training = net.visual.training
        net.visual.train()
        for b in range(min(batches, max(1, len(order) // bs))):
            rows = order[b * bs:(b + 1) * bs]
            x = to_pixels(self.pixels[[self.items[r].image for r in rows]], self.mean, self.std, self.device)
            with self._autocast():
                net.visual(x)
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        net.visual.train(was_training)

    def _autocast(self):
        # bf16 mixed precision (checked on an H100, README "On a GPU"). A GPU without bf16 trains in
        # float32: fp16 would need loss scaling, which this loop does not do.
        bf16 = self.device.startswith("cuda") and torch.cuda.is_bf16_supported()
        return runtime.autocast(self.device, torch.bfloat16 if bf16 else None)

    # ---- main loop
    def run(self) -> dict:
        """Train (resuming from OUT/train_state.pt when it matches this config); returns the model card."""
        cfg = self.cfg
        seed_everything(cfg.seed)
        self.prepare()
        net = self.built.net.to(self.device)
        # NHWC convolutions: ~12 % more images/s for the small ConvNets on CPU (oneDNN), also faster on CUDA.
        # Weights and every input of the vision tower (training, precise BN, validation) in one place.
        net.visual.to(memory_format=torch.channels_last)
        net.visual.register_forward_pre_hook(lambda _m, args: (args[0].contiguous(memory_format=torch.channels_last),
                                                               *args[1:]))
        if cfg.init is None:
            with torch.no_grad():
                net.logit_scale.fill_(math.log(1 / cfg.init_temperature))
        self.mean = torch.tensor(self.built.preprocess_cfg["mean"], device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(self.built.preprocess_cfg["std"], device=self.device).view(1, 3, 1, 1)
        if cfg.cached_views > 0:
            self.cache_trunk_features()
        params = [p for p in net.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]  # biases, norms, logit_scale
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
        bs = min(cfg.batch_size, len(self.items))
        steps_per_epoch = len(self.epoch_batches(torch.Generator().manual_seed(0), bs))
        total = cfg.epochs * steps_per_epoch
        warmup = max(1, int(cfg.warmup * total))
        start_epoch, history, seconds = 0, [], 0.0
        run_state = RunState(self.out, cfg.run_key(), self.replace, self.log)
        state = run_state.load()
        if state is not None:
            net.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            start_epoch, history, seconds = state["epoch"], state["history"], state["seconds"]
            self.log(f"resuming {self.out} after epoch {start_epoch}/{cfg.epochs}")
        n_train = sum(p.numel() for p in params)
        self.log(f"model: {self.built.arch} ({n_train / 1e6:.2f}M trainable parameters, "
                 f"{'locked text tower, ' if self.built.lit else ''}{self.image_size}px) on {self.device}; "
                 f"{cfg.epochs} epochs x {steps_per_epoch} steps of {bs}")
        step = start_epoch * steps_per_epoch
        net.train()
        if self.built.lit:
            net.text.transformer.eval()
        stop, last_save = False, time.time()
        for epoch in range(start_epoch, cfg.epochs):
            # The data order and augmentation of an epoch depend only on (seed, epoch): resumable, deterministic.
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
            rng = np.random.default_rng([cfg.seed, epoch])
            batches = self.epoch_batches(gen, bs)
            t0 = time.time()
            bar = progress_bar(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", enabled=self.progress)
            seen, loss_sum, n_steps = 0, 0.0, 0
            for b in bar:
                if cfg.max_steps is not None and step >= cfg.max_steps:
                    stop = True
                    break
                rows = batches[b]
                for group in opt.param_groups:
                    group["lr"] = lr_at(step, total, cfg.lr, warmup)
                loss = self.batch_loss(rows, rng, gen)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    net.logit_scale.clamp_(0, math.log(100))  # CLIP's cap on the inverse temperature
                step += 1
                seen += len(rows)
                loss_sum += loss.item()
                n_steps += 1
                bar.set_postfix(loss=f"{loss.item():.3f}", temp=f"{1 / net.logit_scale.exp().item():.4f}",
                                img_s=f"{seen / max(1e-6, time.time() - t0):.0f}", refresh=False)
            bar.close()
            seconds += time.time() - t0
            if stop and n_steps < steps_per_epoch:
                # Stopped inside an epoch: the model folder gets the current weights, while the resumable
                # state stays at the last finished epoch (a resumed run redoes this epoch from its start).
                card = self.save(history, seconds, finished=False)
                break
            self.recalibrate_bn()
            metrics = self.validate()
            record = {"epoch": epoch + 1, "steps": step, "loss": round(loss_sum / max(1, n_steps), 4),
                      "temperature": float(1 / net.logit_scale.exp().item()), "seconds": round(seconds, 1), **metrics}
            history.append(record)
            self.log("epoch {epoch}: loss {loss:.3f}, temperature {temperature:.4f}".format(**record) + "".join(
                f", {k} {v:.3f}" for k, v in metrics.items()))
            last = epoch + 1 == cfg.epochs
            if not (last or stop or time.time() - last_save >= cfg.checkpoint_every_s):
                continue  # short epochs (small catalogs): checkpoint at most every checkpoint_every_s
            last_save = time.time()
            self.out.mkdir(parents=True, exist_ok=True)
            card = self.save(history, seconds, finished=last)
            run_state.save(model=net.state_dict(), optimizer=opt.state_dict(), epoch=epoch + 1, history=history,
                           seconds=seconds)
            if stop:
                break
        else:
            if start_epoch >= cfg.epochs:
                self.log(f"{self.out} is already trained ({cfg.epochs} epochs); recomputing batch-norm statistics")
                self.recalibrate_bn()
            card = self.save(history, seconds, finished=True)
        return card

    def save(self, history: list[dict], seconds: float, finished: bool) -> dict:
        """Write the model folder and card for the current weights."""
        if self.val_products:
            D.write_products(self.val_products, self.out / HELDOUT_NAME)
        if self.val_products_by_sku:
            D.write_products(self.val_products_by_sku, self.out / HELDOUT_PRODUCTS_NAME)
        n_params = sum(p.numel() for p in self.built.net.parameters())
        architecture = {"name": self.built.arch, "model_cfg": self.built.model_cfg,
                        "preprocess_cfg": self.built.preprocess_cfg, "parameters": n_params,
                        "text_tower_locked": self.built.lit}
        data = {"files": [str(p) for p in [*self.cfg.data, *self.cfg.photos]], "fingerprint": self.fingerprint,
                "train_products": len(self.train_products), "photos": len(self.photos),
                "held_out_products": len(self.val_products),
                "held_out_file": HELDOUT_NAME if self.val_products else None,
                "split": f"held out by sha256 of the lowercased title < {self.cfg.holdout}",
                "held_out_by_product": len(self.val_products_by_sku),
                "held_out_by_product_file": HELDOUT_PRODUCTS_NAME if self.val_products_by_sku else None,
                "product_split": f"then held out by sha256 of the sku < {self.cfg.holdout_products}"}
        card = run_card(self.out.name, architecture, data, self.cfg, history, seconds, finished, self.device)
        card.update(getattr(self, "card_extra", {}))  # e.g. the bootstrap's settings and counts
        return save_model(self.built, self.out, card)
