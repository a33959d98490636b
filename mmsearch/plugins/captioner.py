"""The project's own captioner (role `captioner`): a folder written by `manage.py train_captioner`.

    MMSEARCH_MODELS["captioner"] = {"BACKEND": "mmsearch.plugins.captioner.TrunkCaptioner",
                                    "OPTIONS": {"path": "models/captioner", "beam_size": 3}}

One image trunk, many heads: the folder holds the locked ImageNet EfficientNet-Lite0 trunk the embedder uses
and a small Transformer decoder that cross-attends to the trunk's spatial grid (mmsearch/training/caption/).
`caption(images)` runs both. `grids(images)` returns what the decoder reads: the trunk's grid (16 tokens x 1280
channels at 128 px), each token followed by its cell's pixel colour statistics (6 numbers). A worker computes it
once per image, calls `caption_grids(grids)`, and gives other heads over the same trunk (same `trunk_key`)
`grids[..., :trunk_channels]`, so the trunk runs once for all of them.

Decoding (options): beam search with `beam_size` beams (1 = greedy), or nucleus sampling when `top_p` is set
(`temperature`, and `seed` for a generator seeded per call, so a batch is captioned the same way every time).
`length_penalty` divides a beam's log-probability by (words + 1) ** length_penalty. `max_words` caps a caption.
A Caption's `score` is its mean log-probability per word (<= 0): a ranking signal, not a calibrated probability.

model_key: "captioner:local:<content key of weights + config>:<decoding>", decoding "beam3", "greedy" or
"topp0.9-t1-s0", since the decoding options change the captions a model writes.
Construction only validates options and reads the folder's config; torch loads with the weights on first use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmsearch.plugins import files, runtime
from mmsearch.plugins.base import Caption
from mmsearch.training.caption.folder import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, read_config


class TrunkCaptioner(runtime.LazyModel):
    """Captions from a trained trunk-grid decoder folder."""

    def __init__(self, path: str, device: str = "auto", precision: str = "fp32", beam_size: int = 3,
                 top_p: float | None = None, temperature: float = 1.0, seed: int = 0, length_penalty: float = 1.0,
                 max_words: int | None = None, batch_size: int = 64):
        if not isinstance(path, (str, Path)) or not str(path):
            raise ValueError(f"path={path!r} must be a captioner folder (manage.py train_captioner --out)")
        self.path = Path(path).expanduser().resolve()
        if not self.path.is_dir():
            raise FileNotFoundError(f"captioner folder {str(path)!r} does not exist "
                                    "(train one with `manage.py train_captioner`)")
        self.config = read_config(self.path)
        self.device = runtime.check_device(device)
        self.precision = runtime.check_precision(precision)
        self.batch_size = runtime.check_batch_size(batch_size)
        if not isinstance(beam_size, int) or isinstance(beam_size, bool) or not 1 <= beam_size <= 16:
            raise ValueError(f"beam_size={beam_size!r} must be an integer from 1 (greedy) to 16")
        if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
            raise ValueError(f"top_p={top_p!r} must be None (beam search) or a number in (0, 1]")
        for name, value in (("temperature", temperature), ("length_penalty", length_penalty)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name}={value!r} must be a non-negative number")
        if temperature == 0:
            raise ValueError("temperature=0 would divide by zero; use top_p=None for deterministic decoding")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"seed={seed!r} must be an integer")
        block = int(self.config["decoder"]["block_size"])
        if max_words is not None and (not isinstance(max_words, int) or isinstance(max_words, bool)
                                      or not 1 <= max_words <= block - 2):
            raise ValueError(f"max_words={max_words!r} must be an integer from 1 to {block - 2} (this model's longest)")
        self.beam_size, self.top_p, self.temperature, self.seed = beam_size, top_p, float(temperature), seed
        self.length_penalty, self.max_words = float(length_penalty), max_words
        self._model_key: str | None = None
        self._trunk: Any = None
        self._net: Any = None
        self._vocab: Any = None

    # --- identity (no weights loaded) ---------------------------------------------------------------------
    @property
    def decoding(self) -> str:
        """The decoding options as they appear in model_key."""
        if self.top_p is not None:
            return f"topp{self.top_p:g}-t{self.temperature:g}-s{self.seed}"
        mode = "greedy" if self.beam_size == 1 else f"beam{self.beam_size}"
        if self.length_penalty != 1.0:
            mode += f"-lp{self.length_penalty:g}"
        return mode + (f"-w{self.max_words}" if self.max_words else "")

    @property
    def model_key(self) -> str:
        if self._model_key is None:
            content = files.content_key(self.path / WEIGHTS_NAME, [self.path / CONFIG_NAME])
            self._model_key = f"captioner:local:{content}:{self.decoding}"
        return self._model_key

    @property
    def trunk_key(self) -> str:
        """The identity of the trunk and its input: heads with the same trunk_key can share `grids(images)`."""
        spec = self.config["trunk"]
        return f"trunk:{spec['timm_model_name']}:{spec['identity']}:{spec['image_size']}px"

    # --- loading ------------------------------------------------------------------------------------------
    def _load(self) -> None:
        import torch

        from mmsearch.training.caption.model import load_captioner

        device = runtime.resolve_device(self.device)
        self._trunk, self._net, self._vocab, _ = load_captioner(self.path, device)
        self._trunk = self._trunk.to(memory_format=torch.channels_last)
        spec = self.config["trunk"]
        self._mean = torch.tensor(spec["mean"], device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(spec["std"], device=device).view(1, 3, 1, 1)
        self._device = device
        self._dtype = runtime.resolve_dtype(self.precision, device)
        self._torch = torch

    # --- the trunk ----------------------------------------------------------------------------------------
    @property
    def grid_shape(self) -> tuple[int, int]:
        """(tokens, channels) of one image's grid as `grids` returns it and `caption_grids` reads it: the trunk's
        channels first (`grids[..., :trunk_channels]` is the trunk's own output), then the cell colours."""
        spec = self.config["decoder"]
        return int(spec["grid_tokens"]), int(spec["grid_dim"]) + int(spec.get("colour_dim", 0))

    @property
    def trunk_channels(self) -> int:
        return int(self.config["decoder"]["grid_dim"])

    def grids(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Each image's grid, (len(images), tokens, channels) float32 (16 x (1280 + 6) for the default model): the
        trunk's spatial feature grid, one token per 32 x 32 cell, then the cell's pixel colour statistics
        (mean and standard deviation of R, G, B). Another head over the same trunk (same `trunk_key`) reads
        `grids[..., :trunk_channels]`: the trunk runs once per image for all of them."""
        self._ensure_loaded()
        tokens, channels = self.grid_shape
        return trunk_grids(self._trunk, images, int(self.config["trunk"]["image_size"]), self._mean, self._std,
                           self._device, self._dtype, tokens, channels - self.trunk_channels, self.batch_size)

    # --- captions -----------------------------------------------------------------------------------------
    def caption(self, images: Sequence[Image.Image]) -> list[Caption]:
        """One caption per image (the trunk, then the decoder)."""
        out: list[Caption] = []
        for chunk in runtime.batches(list(images), self.batch_size):
            out += self.caption_grids(self.grids(chunk))
        return out

    def caption_grids(self, grids: Any) -> list[Caption]:
        """One caption per grid, (N, tokens, channels) as `grids` returns it (numpy or torch; a (N, channels, H, W)
        array is read as the trunk lays it out)."""
        self._ensure_loaded()
        torch = self._torch
        g = torch.as_tensor(np.asarray(grids) if not isinstance(grids, torch.Tensor) else grids)
        if g.ndim == 4:
            g = g.flatten(2).transpose(1, 2)
        tokens, channels = self.grid_shape
        if g.ndim != 3 or tuple(g.shape[1:]) != (tokens, channels):
            extra = (f" (the trunk's {self.trunk_channels} channels, then {channels - self.trunk_channels} of cell "
                     "colours: take them from this plugin's grids(images))") if channels != self.trunk_channels else ""
            raise ValueError(f"grids of shape {tuple(g.shape)}: this captioner reads (N, {tokens}, {channels}) grids of "
                             f"trunk {self.trunk_key}{extra}")
        out: list[Caption] = []
        max_len = self.max_words + 2 if self.max_words else None
        for start in range(0, len(g), self.batch_size):
            chunk = g[start:start + self.batch_size].to(self._device, torch.float32)
            with torch.inference_mode(), runtime.autocast(self._device, self._dtype):
                memory = self._net.encode(chunk)
                if self.top_p is not None:
                    gen = torch.Generator().manual_seed(self.seed + start)
                    seqs, scores = self._net.sample(memory, self.top_p, self.temperature, max_len, generator=gen)
                else:
                    seqs, scores = self._net.beam_search(memory, self.beam_size, max_len,
                                                         length_penalty=self.length_penalty)
            for seq, score in zip(seqs.cpu().tolist(), scores.float().cpu().tolist()):
                out.append(Caption(self._vocab.decode(seq[1:]), self.model_key, float(score)))
        return out

    def describe(self) -> dict:
        """Where the weights come from, for `manage.py plugins` (no weights loaded)."""
        info = {"source": "folder", "weights": str(self.path / WEIGHTS_NAME), "trunk": self.trunk_key,
                "decoding": self.decoding}
        card = self.path / CARD_NAME
        if card.is_file():
            info["card"] = str(card)
        return info

    def __repr__(self) -> str:
        return f"TrunkCaptioner(path={str(self.path)!r}, decoding={self.decoding!r}, device={self.device!r})"


def trunk_grids(trunk: Any, images: Sequence[Image.Image], size: int, mean: Any, std: Any, device: str, dtype: Any,
                tokens: int, colour_dim: int, batch_size: int, pool: Any = None) -> Any:
    """(len(images), tokens, trunk channels + colour_dim) float32: a locked timm trunk's spatial grid of each image
    squashed to `size` (as in training, data.squash), each token followed by its cell's pixel colour statistics
    (data.cell_colours) when colour_dim > 0. Every head over the trunk's grid (captioner, answerer) reads this.
    With `pool` (an openclip.StagePool), (those grids, the pool's features of the same pass) instead."""
    import torch

    from mmsearch.training.data import cell_colours, squash

    if len(images) == 0:
        empty = np.zeros((0, tokens, int(trunk.num_features) + colour_dim), np.float32)
        return empty if pool is None else (empty, np.zeros((0, pool.dim(trunk, size)), np.float32))
    out, pooled = [], []
    for chunk in runtime.batches(list(images), batch_size):
        pixels = np.stack([squash(im.convert("RGB"), size) for im in chunk])
        x = torch.from_numpy(pixels).to(device).permute(0, 3, 1, 2).float().div_(255)
        x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), runtime.autocast(device, dtype):
            if pool is None:
                grid = trunk.forward_features(x)
            else:
                grid, features = pool(trunk, x)
                pooled.append(features.float().cpu().numpy())
        grid = grid.flatten(2).transpose(1, 2).float().cpu().numpy()
        if colour_dim:
            side = int(round(tokens ** 0.5))
            grid = np.concatenate([grid, cell_colours(pixels, side)[..., :colour_dim]], axis=-1)
        out.append(grid)
    return np.concatenate(out) if pool is None else (np.concatenate(out), np.concatenate(pooled))
