"""transformers image-to-text captioner (role `captioner`): BLIP, GIT or a VisionEncoderDecoderModel.

    MMSEARCH_MODELS["captioner"] = {"BACKEND": "mmsearch.plugins.transformers_captioner.TransformersCaptioner",
                                    "OPTIONS": {"model": "Salesforce/blip-image-captioning-base", "num_beams": 3}}

`model` is a hub name (downloads in production) or a local folder written by `save_pretrained` (the model's
config + weights, and its image processor and tokenizer files). The model class follows the config's
model_type: "blip" -> BlipForConditionalGeneration, "git" -> GitForCausalLM, "vision-encoder-decoder" ->
VisionEncoderDecoderModel, anything else -> AutoModelForImageTextToText.

Decoding: greedy (`num_beams=1`) or beam search, at most `max_new_tokens` tokens; `prompt` starts the caption
(BLIP's conditional captioning, GIT's prefix; the prompt is removed from the text returned). A Caption's score
is the mean log-probability per generated token (not a calibrated probability). CUDA is used when present
(`device="auto"`), with bf16/fp16 autocast there (`precision`).

model_key: "transformers:<hub name>" or "transformers:local:<content key of weights + configs>", then
":greedy" / ":beam<N>" (and ":prompt-<hash>"), since decoding changes the captions. Construction only validates
options; transformers is imported and the weights loaded on first use.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from mmsearch.plugins import files, runtime
from mmsearch.plugins.base import Caption

WEIGHTS_NAMES = (
    "model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json",
)
MODEL_CLASSES = {
    "blip": "BlipForConditionalGeneration",
    "git": "GitForCausalLM",
    "vision-encoder-decoder": "VisionEncoderDecoderModel",
}


class TransformersCaptioner(runtime.LazyModel):
    """Captions from a transformers image-to-text model (hub name or save_pretrained folder)."""

    def __init__(self, model: str, device: str = "auto", precision: str = "auto", batch_size: int = 16,
                 num_beams: int = 1, max_new_tokens: int = 30, prompt: str | None = None):
        if not isinstance(model, str) or not model:
            raise ValueError(f"model={model!r} must be a hub name or a local folder")
        self.model = model
        self.device = runtime.check_device(device)
        self.precision = runtime.check_precision(precision)
        self.batch_size = runtime.check_batch_size(batch_size)
        if not isinstance(num_beams, int) or isinstance(num_beams, bool) or not 1 <= num_beams <= 16:
            raise ValueError(f"num_beams={num_beams!r} must be an integer from 1 (greedy) to 16")
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or not 1 <= max_new_tokens <= 512:
            raise ValueError(f"max_new_tokens={max_new_tokens!r} must be an integer from 1 to 512")
        if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
            raise ValueError(f"prompt={prompt!r} must be None or a non-empty text")
        self.num_beams, self.max_new_tokens, self.prompt = num_beams, max_new_tokens, prompt
        path = Path(model).expanduser()
        self.folder: Path | None = None
        self.weights: Path | None = None
        if path.is_dir():
            self.folder = path.resolve()
            if not (self.folder / "config.json").is_file():
                raise FileNotFoundError(f"{self.folder} has no config.json (write it with model.save_pretrained)")
            self.weights = files.find_weights(self.folder, WEIGHTS_NAMES)
            model_type = json.loads((self.folder / "config.json").read_text()).get("model_type")
            if prompt is not None and model_type not in ("blip", "git"):
                raise ValueError(f"prompt is supported for BLIP and GIT models, not {model_type!r}")
        elif model.startswith((".", "/", "~")) or model.count("/") > 1:  # a path, not an "org/name" hub id
            raise FileNotFoundError(f"model folder {model!r} does not exist")
        self._model_key: str | None = None
        self._net: Any = None

    @property
    def decoding(self) -> str:
        mode = "greedy" if self.num_beams == 1 else f"beam{self.num_beams}"
        if self.prompt is not None:
            mode += f":prompt-{hashlib.sha256(self.prompt.encode()).hexdigest()[:8]}"
        return mode

    @property
    def model_key(self) -> str:
        """'transformers:<hub name>:<decoding>' or 'transformers:local:<content key>:<decoding>'."""
        if self._model_key is None:
            if self.folder is not None:
                ident = f"local:{files.content_key(self.weights, files.config_files(self.folder))}"
            else:
                ident = self.model
            self._model_key = f"transformers:{ident}:{self.decoding}"
        return self._model_key

    def _load(self) -> None:
        import torch
        import transformers
        from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

        device = runtime.resolve_device(self.device)
        model_type = AutoConfig.from_pretrained(self.model).model_type
        cls = getattr(transformers, MODEL_CLASSES.get(model_type, "AutoModelForImageTextToText"))
        net = cls.from_pretrained(self.model)
        if not callable(getattr(net, "generate", None)):
            raise ValueError(f"{self.model} loads as {type(net).__name__}, which cannot generate text")
        self._net = net.eval().requires_grad_(False).to(device)
        self._model_type = model_type
        self._image_processor = AutoImageProcessor.from_pretrained(self.model)
        self._tokenizer = AutoTokenizer.from_pretrained(self.model)
        self._device = device
        self._dtype = runtime.resolve_dtype(self.precision, device)
        self._torch = torch

    def _prompt_ids(self, n: int):
        """The prompt as the model's generate() expects it, repeated for n images (None without a prompt)."""
        if self.prompt is None:
            return None
        tok = self._tokenizer
        if self._model_type == "git":  # [CLS] + prompt, no [SEP] (the GIT model card's recipe)
            ids = [tok.cls_token_id] + tok(self.prompt, add_special_tokens=False).input_ids
        else:  # BLIP replaces the first id by its decoder start token and drops the trailing [SEP]
            ids = tok(self.prompt).input_ids
        return self._torch.tensor([ids] * n, device=self._device)

    def caption(self, images: Sequence[Image.Image]) -> list[Caption]:
        """One caption per image."""
        if len(images) == 0:
            return []
        self._ensure_loaded()
        torch = self._torch
        out: list[Caption] = []
        for chunk in runtime.batches(list(images), self.batch_size):
            pixels = self._image_processor(images=[im.convert("RGB") for im in chunk],
                                           return_tensors="pt")["pixel_values"].to(self._device)
            kwargs = {"pixel_values": pixels, "max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams,
                      "do_sample": False, "return_dict_in_generate": True, "output_scores": True}
            prompt = self._prompt_ids(len(chunk))
            if prompt is not None:
                kwargs["input_ids"] = prompt
            with torch.inference_mode(), runtime.autocast(self._device, self._dtype):
                gen = self._net.generate(**kwargs)
            scores = self._scores(gen)
            texts = self._tokenizer.batch_decode(gen.sequences, skip_special_tokens=True)
            out += [Caption(self._strip_prompt(t), self.model_key, s) for t, s in zip(texts, scores)]
        return out

    def _scores(self, gen) -> list[float | None]:
        """Mean log-probability per generated token of each sequence (None when the model gives no scores)."""
        if getattr(gen, "scores", None) is None:
            return [None] * len(gen.sequences)
        try:
            steps = self._net.compute_transition_scores(gen.sequences, gen.scores, getattr(gen, "beam_indices", None),
                                                        normalize_logits=self.num_beams == 1)
        except (TypeError, ValueError, RuntimeError, AttributeError):
            return [None] * len(gen.sequences)
        steps = steps.float()
        finite = self._torch.isfinite(steps) & (steps != 0)
        total = self._torch.where(finite, steps, self._torch.zeros_like(steps)).sum(1)
        return [float(t / max(1, int(n))) for t, n in zip(total, finite.sum(1))]

    def _strip_prompt(self, text: str) -> str:
        text = text.strip()
        if self.prompt is not None and text.lower().startswith(self.prompt.strip().lower()):
            text = text[len(self.prompt.strip()):].strip()
        return text

    def describe(self) -> dict:
        """Where the weights come from, for `manage.py plugins` (no weights loaded)."""
        if self.folder is not None:
            return {"source": "folder", "weights": str(self.weights), "decoding": self.decoding}
        return {"source": "hub", "weights": self.model, "decoding": self.decoding}

    def __repr__(self) -> str:
        return f"TransformersCaptioner(model={self.model!r}, decoding={self.decoding!r}, device={self.device!r})"
