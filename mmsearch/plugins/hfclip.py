"""transformers CLIP / SigLIP image-text embedder (role `embedder`).

`model` is a hub name (e.g. "openai/clip-vit-base-patch32", "google/siglip-base-patch16-224"; downloads in
production) or a local folder written by `save_pretrained` (model config + weights + processor files).
model_key: "hfclip:<hub name>" or "hfclip:local:<content key of the weights and configs>" (files.content_key).

Construction only validates and stores options; transformers is imported and the weights loaded on first use.
With text_only=True no image processor is loaded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmsearch.plugins import files, runtime

# save_pretrained's single-file names, then the index of a sharded checkpoint (files.sha12 hashes its shards).
WEIGHTS_NAMES = (
    "model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json",
)
# Model types trained with fixed-length text padding (their text pooling reads the last position).
_PAD_TO_MAX = ("siglip", "siglip2")


def _features(output: Any) -> Any:
    """The projected embedding from get_*_features: a tensor in transformers 4, a model output in 5."""
    if hasattr(output, "pooler_output"):
        return output.pooler_output
    if isinstance(output, (tuple, list)):
        return output[0]
    return output


class HFClipEmbedder(runtime.PixelModel):
    """Images and texts into one space with a transformers CLIPModel / SiglipModel; normalised float32 rows."""

    def __init__(
        self,
        model: str,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int = 64,
        text_only: bool = False,
    ):
        if not isinstance(model, str) or not model:
            raise ValueError(f"model={model!r} must be a hub name or a local folder")
        self.model = model
        self.device = runtime.check_device(device)
        self.precision = runtime.check_precision(precision)
        self.batch_size = runtime.check_batch_size(batch_size)
        self.text_only = bool(text_only)
        path = Path(model).expanduser()
        self.folder: Path | None = None
        self.weights: Path | None = None
        if path.is_dir():
            self.folder = path.resolve()
            if not (self.folder / "config.json").is_file():
                raise FileNotFoundError(f"{self.folder} has no config.json (write it with model.save_pretrained)")
            self.weights = files.find_weights(self.folder, WEIGHTS_NAMES)
        elif model.startswith((".", "/", "~")) or model.count("/") > 1:  # a path, not an "org/name" hub id
            raise FileNotFoundError(f"model folder {model!r} does not exist")
        self._model_key: str | None = None
        self._net: Any = None
        self._tokenizer: Any = None
        self._image_processor: Any = None
        self._device = "cpu"
        self._dtype: Any = None

    @property
    def model_key(self) -> str:
        """'hfclip:<hub name>' or 'hfclip:local:<content key>' for a folder."""
        if self._model_key is None:
            if self.folder is not None:
                self._model_key = f"hfclip:local:{files.content_key(self.weights, files.config_files(self.folder))}"
            else:
                self._model_key = f"hfclip:{self.model}"
        return self._model_key

    @property
    def legacy_model_keys(self) -> tuple[str, ...]:
        """The earlier key of a folder (its name + weights hash), for `manage.py rekey_model`."""
        return (f"hfclip:{self.folder.name}:{files.sha12(self.weights)}",) if self.folder is not None else ()

    @property
    def dim(self) -> int:
        """Length of every vector: the projection size (CLIP) or the text tower's width (SigLIP)."""
        if self.folder is not None:
            return _config_dim(json.loads((self.folder / "config.json").read_text()))
        self._ensure_loaded()
        return _config_dim(self._net.config.to_dict())

    def _load(self) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        device = runtime.resolve_device(self.device)
        net = AutoModel.from_pretrained(self.model)
        for name in ("get_image_features", "get_text_features"):
            if not callable(getattr(net, name, None)):
                raise ValueError(
                    f"{self.model} loads as {type(net).__name__}, which has no {name} (not a CLIP-style model)"
                )
        if self.text_only and hasattr(net, "vision_model"):
            net.vision_model = None  # frees the image tower; get_text_features never touches it
        net.eval().requires_grad_(False)
        self._net = net.to(device)
        self._tokenizer = AutoTokenizer.from_pretrained(self.model)
        model_type = getattr(net.config, "model_type", "")
        text_cfg = getattr(net.config, "text_config", None)
        max_length = getattr(text_cfg, "max_position_embeddings", None) or 77
        if model_type in _PAD_TO_MAX:
            # SigLIP was trained on fixed-length padded ids without an attention mask; feed it the same.
            self._text_kwargs = {"padding": "max_length", "truncation": True, "max_length": max_length}
            self._text_inputs = ("input_ids",)
        else:
            self._text_kwargs = {"padding": True, "truncation": True, "max_length": max_length}
            self._text_inputs = ("input_ids", "attention_mask")
        self._device = device
        self._dtype = runtime.resolve_dtype(self.precision, device)
        self._torch = torch

    def _processor(self):
        if self._image_processor is None:
            from transformers import AutoImageProcessor

            self._image_processor = AutoImageProcessor.from_pretrained(self.model)
        return self._image_processor

    def preprocess(self, images: Sequence[Image.Image]):
        """Decoded images -> pixel_values tensor (CPU), e.g. in a data-loading thread off the model's path."""
        self._ensure_loaded()
        if self.text_only:
            raise RuntimeError(
                f"this HFClipEmbedder ({self.model_key}) was configured with text_only=True; configure an alias "
                "without text_only for image embedding"
            )
        return self._processor()(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]

    def embed_pixels(self, pixels) -> np.ndarray:
        """Embed a preprocessed batch from `preprocess`; (len(batch), dim) normalised rows."""
        self._ensure_loaded()
        with self._torch.inference_mode(), runtime.autocast(self._device, self._dtype):
            out = self._net.get_image_features(pixel_values=pixels.to(self._device, non_blocking=True))
        return runtime.to_unit_rows(_features(out))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts; (len(texts), dim) L2-normalised float32 rows."""
        if len(texts) == 0:
            return runtime.empty(self.dim)
        self._ensure_loaded()
        out = []
        for chunk in runtime.batches(list(texts), self.batch_size):
            enc = self._tokenizer(list(chunk), return_tensors="pt", **self._text_kwargs)
            inputs = {k: v.to(self._device) for k, v in enc.items() if k in self._text_inputs}
            with self._torch.inference_mode(), runtime.autocast(self._device, self._dtype):
                out.append(runtime.to_unit_rows(_features(self._net.get_text_features(**inputs))))
        return np.concatenate(out)

    def describe(self) -> dict:
        """Where the weights come from, for `manage.py plugins` (no weights loaded)."""
        if self.folder is not None:
            return {"source": "folder", "weights": str(self.weights)}
        return {"source": "hub", "weights": self.model}

    def __repr__(self) -> str:
        return f"HFClipEmbedder(model={self.model!r}, device={self.device!r})"


def _config_dim(config: dict) -> int:
    if config.get("projection_dim"):
        return int(config["projection_dim"])
    text = config["text_config"]
    return int(text.get("projection_size") or text["hidden_size"])
