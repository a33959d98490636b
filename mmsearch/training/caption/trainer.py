"""Training the captioner: teacher forcing (next-word maximum likelihood) over cached trunk grids.

- Data: catalog products; each image is paired with its product's brand-free target (targets.py). The
  validation split holds out products by title (data.is_held_out, the embedder's split at the same fraction),
  written to OUT/heldout.jsonl.
- Images: the locked pretrained trunk (the embedder's, model.build_trunk) runs once per image; its spatial grid
  (16 tokens x 1280 channels at 128 px, fp16) is cached per (trunk weights, input size, image) in a sharded
  cache under cache_dir (trainer.trunk_views), so epochs and later runs only run the decoder.
- Resumable and deterministic: the state after an epoch is in OUT/train_state.pt (trainer.RunState), and the
  batch order of an epoch derives from (seed, epoch).
- After each epoch: teacher-forced validation loss, and greedy captions of up to `val_images` held-out images
  scored like `evaluate_captioner` (BLEU-4, CIDEr-D, ROUGE-L, mentions); the model folder (caption/model.py's
  format) and its model_card.json are rewritten at most every checkpoint_every_s and at the end.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from mmsearch.plugins import runtime
from mmsearch.training import data as D
from mmsearch.training.caption import metrics as CM
from mmsearch.training.caption.folder import trunk_spec
from mmsearch.training.caption.model import CaptionConfig, Captioner, save_captioner
from mmsearch.training.caption.targets import CaptionTargets
from mmsearch.training.caption.vocab import PAD, Vocab
from mmsearch.training.model import ARCHS, build_trunk
from mmsearch.training.trainer import (HELDOUT_NAME, HeadTrainer, TrainingError, grid_cache, module_identity,
                                       run_card, seed_everything, split_by_title, trunk_views, view_keys)


@dataclass
class CaptionTrainConfig:
    """Everything that defines a captioner training run (hashed to decide whether a run can be resumed)."""

    data: list[str]
    out: str
    trunk: str = "effl0-128"  # an ARCHS name with a pretrained timm trunk (the embedder's)
    n_layer: int = 3
    n_head: int = 4
    n_embd: int = 256
    dropout: float = 0.1
    colour_dim: int = 6  # per-cell pixel colour statistics beside the trunk's grid (0: the grid alone)
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: float = 0.05  # share of all steps
    label_smoothing: float = 0.1
    min_count: int = 3  # a word of the training captions enters the vocabulary at this many occurrences
    max_words: int = 16
    holdout: float = 0.1
    seed: int = 0
    val_images: int = 500  # held-out images captioned (greedily) after every epoch
    max_steps: int | None = None  # stop early (tests, smoke runs)
    checkpoint_every_s: float = 60.0
    device: str = "auto"
    cache_dir: str | None = None

    def run_key(self) -> str:
        """Identity of the run for resuming: everything but the output folder, device, caches and step cap."""
        d = asdict(self)
        for k in ("out", "device", "cache_dir", "max_steps", "checkpoint_every_s", "val_images"):
            d.pop(k)
        d["trunk_definition"] = asdict(ARCHS[self.trunk]) if self.trunk in ARCHS else None
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def cached_grids(trunk: torch.nn.Module, spec: dict, paths: list[Path], cache_dir: Path | None, device: str = "cpu",
                 progress: bool = True, colour_dim: int = 0) -> np.ndarray:
    """The captioner's input for every image, (N, tokens, channels + colour_dim) fp16: the trunk's grid, and
    with colour_dim > 0 each cell's pixel colour statistics (data.cell_colours), computing only what is missing.

    Grids and colours live in caches under cache_dir keyed by image file (the grids by the trainers' view-0 keys),
    so what one run computes serves every later run, the evaluation and any head over the same trunk; only the
    images with something missing are decoded.
    """
    size = spec["image_size"]
    cache = grid_cache(trunk, size, cache_dir)
    side = int(round(cache.row_shape[0] ** 0.5))
    keys = view_keys(paths, np.ones(len(paths), np.int64), np.ones(len(paths)), 0)
    files = [str(Path(p).resolve()) for p in paths]
    missing = cache.missing(keys)
    cells = D.KeyedCache(cache_dir, f"cells-{size}-{side}", (side * side, 6), np.float16) if colour_dim else None
    missing_cells = cells.missing(files) if cells is not None else []
    if missing:
        pixels = D.image_cache([Path(k.split("|")[0]) for k in missing], size, cache_dir, progress=progress)
        mean = torch.tensor(spec["mean"], device=device).view(1, 3, 1, 1)
        std = torch.tensor(spec["std"], device=device).view(1, 3, 1, 1)
        trunk.to(device)
        trunk_views(trunk, pixels, missing, np.arange(len(missing)), np.zeros(len(missing), np.int64),
                    np.ones(len(missing)), grids=cache, mean=mean, std=std, device=device,
                    autocast=lambda: runtime.autocast(device, None), progress=progress, desc="trunk grids")
    if missing_cells:
        pixels = D.image_cache([Path(f) for f in missing_cells], size, cache_dir, progress=progress)
        # In chunks: float copies of every decoded image at once would need gigabytes.
        cells.add(missing_cells, np.concatenate([D.cell_colours(pixels[i:i + 2048], side).astype(np.float16)
                                                 for i in range(0, len(pixels), 2048)]))
        del pixels
    out = cache.rows(keys)
    return np.concatenate([out, cells.rows(files)[..., :colour_dim]], axis=-1) if cells is not None else out


class CaptionTrainer(HeadTrainer):
    """Prepares data, grids and model from a CaptionTrainConfig and runs (or resumes) the training."""

    # ---- preparation
    def prepare(self) -> None:
        cfg = self.cfg
        self.check_trunk()
        if cfg.n_embd % cfg.n_head:
            raise TrainingError(f"--n-embd {cfg.n_embd} must be a multiple of --n-head {cfg.n_head}")
        products = D.load_catalog(cfg.data).products
        train, val = split_by_title(products, cfg.holdout)
        if not train:
            raise TrainingError("no training products left after the held-out split; lower --holdout")
        self.train_products, self.val_products = train, val
        self.fingerprint = D.fingerprint(cfg.data)
        self.targets = CaptionTargets.fit(products, max_words=cfg.max_words)
        train_words = [self.targets.target_words(p.title, p.attributes) for p in train]
        holding = Counter(w for ws in train_words for w in set(ws))
        self.vocab = Vocab.build(train_words, cfg.min_count, exclude=self.targets.brand_words(holding))
        self.block_size = cfg.max_words + 2
        # Items: every image of a training product with its target; validation: each held-out product's first image.
        paths, item_image, item_ids = [], [], []
        for p, ws in zip(train, train_words):
            ids = self.vocab.encode(ws, self.block_size)
            for img in p.images:
                item_image.append(len(paths))
                item_ids.append(ids)
                paths.append(img)
        self.val_images = list(range(len(paths), len(paths) + len(val)))
        paths += [p.images[0] for p in val]
        self.val_refs = [self.targets.target(p.title, p.attributes) for p in val]
        self.val_ids = [self.vocab.encode(self.targets.target_words(p.title, p.attributes), self.block_size)
                        for p in val]
        self.item_image = np.array(item_image, dtype=np.int64)
        self.item_ids = _pad(item_ids)
        self.log(f"data: {len(train)} train products ({len(item_image)} images), {len(val)} held-out products; "
                 f"vocabulary {len(self.vocab)} words; brand lexicon {len(self.targets.brands)} brands; "
                 f"fingerprint {self.fingerprint[:12]}")
        arch = ARCHS[cfg.trunk]
        self.trunk = build_trunk(arch)
        self.trunk_spec = trunk_spec(arch, module_identity(self.trunk))
        t = time.time()
        self.grids = torch.from_numpy(cached_grids(self.trunk, self.trunk_spec, paths, self.cache_dir, self.device,
                                                   self.progress, cfg.colour_dim))
        self.grid_seconds = time.time() - t
        self.trunk_spec["grid"] = [int(self.grids.shape[1]), int(self.grids.shape[2]) - cfg.colour_dim]

    # ---- batches
    def batch(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(grids, input ids, target ids) of item rows, cut to the batch's longest caption."""
        ids = self.item_ids[rows]
        width = int((ids != PAD).sum(1).max())
        ids = torch.from_numpy(ids[:, :width]).to(self.device)
        grids = self.grids[self.item_image[rows]].to(self.device).float()
        return grids, ids[:, :-1], ids[:, 1:]

    # ---- validation
    @torch.no_grad()
    def validate(self, model: Captioner) -> dict:
        """Teacher-forced loss on every held-out image, and greedy captions of the first val_images of them."""
        if not self.val_products:
            return {}
        model.eval()
        ids_all = _pad(self.val_ids)
        loss_sum, n = 0.0, 0
        for start in range(0, len(self.val_images), 512):
            rows = np.array(self.val_images[start:start + 512])
            ids = torch.from_numpy(ids_all[start:start + 512]).to(self.device)
            memory = model.encode(self.grids[rows].to(self.device).float())
            _, loss = model(memory, ids[:, :-1], ids[:, 1:])
            k = int((ids[:, 1:] != PAD).sum())
            loss_sum, n = loss_sum + float(loss) * k, n + k
        res = {"val_loss": round(loss_sum / max(1, n), 4)}
        count = min(self.cfg.val_images, len(self.val_images))
        if count:
            captions = []
            for start in range(0, count, 256):
                rows = np.array(self.val_images[start:min(count, start + 256)])
                seqs, _ = model.greedy(model.encode(self.grids[rows].to(self.device).float()))
                captions += [self.vocab.decode(s[1:].tolist()) for s in seqs.cpu()]
            refs, products = [[r] for r in self.val_refs[:count]], self.val_products[:count]
            try:
                scores = CM.caption_metrics(captions, refs, products, self.targets)
            except ImportError as exc:  # without pycocoevalcap: mentions and brands only
                if not getattr(self, "_warned", False):
                    self.log(f"validation without BLEU / CIDEr-D / ROUGE-L: {exc}")
                    self._warned = True
                scores = {"mentions": CM.mention_rates(captions, products),
                          "brand_hallucination": CM.brand_hallucination(captions, products, self.targets)}
            res.update({k: v for k, v in scores.items() if k != "mentions"})
            res.update({f"mentions_{k}": v for k, v in scores["mentions"].items()})
        model.train()
        return res

    # ---- main loop
    def run(self) -> dict:
        """Train (resuming from OUT/train_state.pt when it matches this config); returns the model card."""
        cfg = self.cfg
        seed_everything(cfg.seed)
        self.prepare()
        config = CaptionConfig(vocab_size=len(self.vocab), block_size=self.block_size,
                               grid_tokens=int(self.grids.shape[1]),
                               grid_dim=int(self.grids.shape[2]) - cfg.colour_dim, colour_dim=cfg.colour_dim,
                               n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout)
        torch.manual_seed(cfg.seed)
        model = Captioner(config).to(self.device)
        describe = (f"caption decoder {cfg.n_layer} layers x {cfg.n_embd} wide ({model.num_params() / 1e6:.2f}M "
                    f"parameters) over the locked {cfg.trunk} grid {tuple(self.grids.shape[1:])}")
        return self.fit(model, describe)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """An epoch's order of the training images, from (seed, epoch) only: resumable and deterministic."""
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.item_image), generator=gen).numpy()

    def batch_loss(self, model: Captioner, idx: np.ndarray) -> torch.Tensor:
        grids, x, y = self.batch(idx)
        _, loss = model(model.encode(grids), x, y, label_smoothing=self.cfg.label_smoothing)
        return loss

    def save(self, model: Captioner, history: list[dict], seconds: float, finished: bool) -> dict:
        """Write the model folder (config, weights, card) and the held-out products for the current weights."""
        self.out.mkdir(parents=True, exist_ok=True)
        if self.val_products:
            D.write_products(self.val_products, self.out / HELDOUT_NAME)
        architecture = {"name": "trunk-grid-decoder", "trunk": self.trunk_spec, "decoder": asdict(model.config),
                        "parameters": {"decoder": model.num_params(),
                                       "trunk": sum(p.numel() for p in self.trunk.parameters())},
                        "vocabulary": len(self.vocab)}
        data = {"files": list(self.cfg.data), "fingerprint": self.fingerprint,
                "train_products": len(self.train_products), "train_images": int(len(self.item_image)),
                "held_out_products": len(self.val_products),
                "held_out_file": HELDOUT_NAME if self.val_products else None,
                "split": f"held out by sha256 of the lowercased title < {self.cfg.holdout}",
                "targets": "brand-free title completed with gender, colour and article type (caption/targets.py)",
                "brand_lexicon": len(self.targets.brands)}
        card = run_card(self.out.name, architecture, data, self.cfg, history, seconds, finished, self.device)
        card["training"]["grid_seconds"] = round(self.grid_seconds, 1)
        return save_captioner(self.out, model, self.trunk, self.trunk_spec, self.vocab, card)


def _pad(rows: list[list[int]]) -> np.ndarray:
    width = max((len(r) for r in rows), default=2)
    out = np.full((len(rows), width), PAD, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out
