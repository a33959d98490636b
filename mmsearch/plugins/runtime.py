"""Device, precision and batching helpers shared by the torch-based plugins.

Option values are validated without importing torch (so `manage.py check` stays light); the functions
that need torch import it when called.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device(device: str) -> str:
    """Validate a device option ('auto', 'cpu', 'cuda', 'cuda:N', 'mps') without importing torch."""
    if not isinstance(device, str) or not _DEVICE_RE.match(device):
        raise ValueError(f"device={device!r} is not one of auto, cpu, cuda, cuda:N, mps")
    return device


def check_precision(precision: str) -> str:
    """Validate a precision option without importing torch."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {', '.join(PRECISIONS)}")
    return precision


def check_batch_size(batch_size: int) -> int:
    """Validate a batch size option."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
    return batch_size


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is present, else 'cpu'; explicit devices must be available."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but torch sees no CUDA device; use device='auto' or 'cpu'")
    return device


def resolve_dtype(precision: str, device: str) -> Any:
    """The autocast dtype for `precision` on `device`, or None for full float32."""
    import torch

    if precision == "auto":
        if not device.startswith("cuda"):
            return None  # CPU autocast is slower than fp32 for these models on most CPUs
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: str, dtype: Any) -> contextlib.AbstractContextManager:
    """Mixed-precision context for `device`, or a no-op for float32."""
    if dtype is None:
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)


def batches(items: Sequence, size: int) -> Iterator[Sequence]:
    """Consecutive slices of at most `size` items."""
    for start in range(0, len(items), size):
        yield items[start:start + size]


def to_unit_rows(features: Any) -> np.ndarray:
    """A torch tensor of features as L2-normalised float32 numpy rows (normalised in float32, after autocast)."""
    import torch

    rows = features.detach().to(torch.float32)
    rows = torch.nn.functional.normalize(rows, dim=-1)
    return rows.cpu().numpy().astype(np.float32, copy=False)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Numpy rows (along the last axis) scaled to unit length, as float32; all-zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def empty(dim: int) -> np.ndarray:
    """The (0, dim) result for an empty input."""
    return np.zeros((0, dim), dtype=np.float32)


class CheapConstructor:
    """For plugins whose constructor only validates and stores options (no weights, no heavy imports).

    The system checks call `check_options(options)` on a backend class when it has one; here it simply
    constructs an instance, so the checks and first use report the same problems.
    """

    @classmethod
    def check_options(cls, options: dict) -> list[str]:
        """Problems with `options` found without loading weights (an empty list when they are fine)."""
        try:
            cls(**options)
        except (ValueError, OSError) as exc:
            return [str(exc)]
        return []


class LazyModel(CheapConstructor):
    """Base for plugins whose weights load on first use.

    Subclasses implement `_load()`; `_ensure_loaded()` runs it once per instance, thread-safely.
    """

    _loaded: bool = False

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        lock = self.__dict__.setdefault("_load_lock", _new_lock())
        with lock:
            if not self._loaded:
                self._load()
                self._loaded = True

    def _load(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement _load()")

    @property
    def loaded(self) -> bool:
        """Whether the weights are in memory."""
        return self._loaded


class PixelModel(LazyModel):
    """A lazily loaded image-text model whose subclasses provide `preprocess` and `embed_pixels`."""

    batch_size: int

    def embed_images(self, images: Sequence) -> np.ndarray:
        """Embed decoded images; (len(images), dim) L2-normalised float32 rows."""
        if len(images) == 0:
            return empty(self.dim)
        return np.concatenate([self.embed_pixels(self.preprocess(chunk)) for chunk in batches(images, self.batch_size)])


def _new_lock():
    import threading

    return threading.RLock()
