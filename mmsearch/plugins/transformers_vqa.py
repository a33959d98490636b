"""transformers VQA answerer (role `answerer`): ViLT or BLIP visual question answering models.

    MMSEARCH_MODELS["answerer"] = {"BACKEND": "mmsearch.plugins.transformers_vqa.TransformersVQA",
                                   "OPTIONS": {"model": "dandelin/vilt-b32-finetuned-vqa", "vocabulary": "models/answerer"}}

`model` is a hub name (downloads in production) or a local folder written by `save_pretrained` (config, weights,
image processor and tokenizer files). The config's model_type picks the class: "vilt" ->
ViltForQuestionAnswering (a classifier over its config's answer labels), "blip" -> BlipForQuestionAnswering
(a generative decoder). Either way the model ranks only the answers a question allows (the candidates of
answerer.ProductAnswerer: a key's values, yes / no, the two values named), as BLIP's rank_answer does: ViLT by
its logits of the candidates it has labels for, BLIP by the log-likelihood of each candidate's tokens. The
softmax over the candidates is divided by `temperature` (1.0: uncalibrated until fitted on held-out data) and
`threshold` decides abstention. The routing, facts and data-first rules are the shared ones (answerer.py);
`vocabulary` names the attributes and values the image answers (an answerer folder or a JSON file, as for
LateFusionAnswerer).

image_features are the processor's pixel arrays (what the model reads, cached per image by the qa app).
model_key: "transformers-vqa:<hub name>" or "transformers-vqa:local:<content key of weights + configs>".
Construction only validates options; transformers is imported and the weights loaded on first use.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from mmsearch.plugins import files, runtime
from mmsearch.plugins.answerer import ProductAnswerer, load_vocabulary
from mmsearch.training.qa import questions as Q

WEIGHTS_NAMES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                 "pytorch_model.bin.index.json")
MODEL_CLASSES = {"vilt": ("ViltForQuestionAnswering", "ViltProcessor"),
                 "blip": ("BlipForQuestionAnswering", "BlipProcessor")}


class TransformersVQA(ProductAnswerer, runtime.LazyModel):
    """Answers visual questions with a transformers ViLT / BLIP VQA model (hub name or save_pretrained folder)."""

    def __init__(self, model: str, vocabulary: str, device: str = "auto", temperature: float = 1.0,
                 threshold: float | None = 0.5, text_embedder: str = "text_embedder", fact_similarity: float = 0.3):
        if not isinstance(model, str) or not model:
            raise ValueError(f"model={model!r} must be a hub name or a local folder")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"temperature={temperature!r} must be a positive number")
        super().__init__(text_embedder=text_embedder, threshold=threshold, fact_similarity=fact_similarity)
        self.model = model
        self.device = runtime.check_device(device)
        self.temperature = float(temperature)
        self._vocab = load_vocabulary(vocabulary)
        path = Path(model).expanduser()
        self.folder: Path | None = None
        self.weights: Path | None = None
        if path.is_dir():
            self.folder = path.resolve()
            if not (self.folder / "config.json").is_file():
                raise FileNotFoundError(f"{self.folder} has no config.json (write it with model.save_pretrained)")
            self.weights = files.find_weights(self.folder, WEIGHTS_NAMES)
            model_type = json.loads((self.folder / "config.json").read_text()).get("model_type")
            if model_type not in MODEL_CLASSES:
                raise ValueError(f"{self.folder} is a {model_type!r} model; TransformersVQA loads "
                                 f"{' or '.join(MODEL_CLASSES)} VQA models")
        elif model.startswith((".", "/", "~")) or model.count("/") > 1:
            raise FileNotFoundError(f"model folder {model!r} does not exist")
        self._model_key: str | None = None

    @property
    def vocabulary(self) -> Q.Vocabulary:
        return self._vocab

    @property
    def model_key(self) -> str:
        if self._model_key is None:
            ident = (f"local:{files.content_key(self.weights, files.config_files(self.folder))}"
                     if self.folder is not None else self.model)
            self._model_key = f"transformers-vqa:{ident}"
        return self._model_key

    def _load(self) -> None:
        import torch
        import transformers
        from transformers import AutoConfig

        device = runtime.resolve_device(self.device)
        model_type = AutoConfig.from_pretrained(self.model).model_type
        if model_type not in MODEL_CLASSES:
            raise ValueError(f"{self.model} is a {model_type!r} model; TransformersVQA loads vilt or blip VQA models")
        model_cls, processor_cls = (getattr(transformers, n) for n in MODEL_CLASSES[model_type])
        self._net = model_cls.from_pretrained(self.model).eval().requires_grad_(False).to(device)
        self._processor = processor_cls.from_pretrained(self.model)
        self._model_type, self._device, self._torch = model_type, device, torch

    def image_features(self, images: Sequence[Image.Image]) -> np.ndarray:
        """The processor's pixel arrays, (N, 3, H, W) float32."""
        self._ensure_loaded()
        out = self._processor.image_processor(images=[im.convert("RGB") for im in images], return_tensors="np")
        return np.asarray(out["pixel_values"], np.float32)

    def candidate_scores(self, question: str, candidates: Sequence[str], pixels: np.ndarray) -> np.ndarray:
        """A score per candidate (ViLT: its logit, -inf without a label; BLIP: its tokens' summed log-likelihood)."""
        self._ensure_loaded()
        torch = self._torch
        pixel_values = torch.as_tensor(np.asarray(pixels[:1], np.float32), device=self._device)
        text = self._processor.tokenizer([question], return_tensors="pt", padding=True, truncation=True,
                                         max_length=40).to(self._device)
        with torch.inference_mode():
            if self._model_type == "vilt":
                logits = self._net(input_ids=text["input_ids"], attention_mask=text["attention_mask"],
                                   pixel_values=pixel_values).logits[0].float().cpu().numpy()
                label2id = {str(k).lower(): int(v) for k, v in self._net.config.label2id.items()}
                return np.array([logits[label2id[c.lower()]] if c.lower() in label2id else -np.inf
                                 for c in candidates])
            return self._blip_scores(text, candidates, pixel_values)

    def _blip_scores(self, text, candidates: Sequence[str], pixel_values) -> np.ndarray:
        """BLIP's rank_answer: the question encoded over the image, then each candidate decoded from [DEC]."""
        torch, net = self._torch, self._net
        image = net.vision_model(pixel_values=pixel_values)[0]
        question = net.text_encoder(input_ids=text["input_ids"], attention_mask=text["attention_mask"],
                                    encoder_hidden_states=image, return_dict=False)[0]
        ids = self._processor.tokenizer([c.lower() for c in candidates], return_tensors="pt", padding=True
                                        ).input_ids.to(self._device)
        ids[:, 0] = net.decoder_start_token_id
        n = len(candidates)
        out = net.text_decoder(input_ids=ids, encoder_hidden_states=question.repeat(n, 1, 1), return_dict=True)
        logp = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)
        target = ids[:, 1:]
        pad = net.config.text_config.pad_token_id
        tok = logp.gather(2, target.unsqueeze(-1)).squeeze(-1) * (target != pad)
        return tok.sum(1).cpu().numpy()

    def visual_probabilities(self, question: str, parsed: Q.Parsed, features: np.ndarray) -> np.ndarray:
        scores = np.asarray(self.candidate_scores(question, parsed.candidates, features), np.float64)
        if not np.isfinite(scores).any():
            return np.full(len(scores), 1.0 / max(1, len(scores)))  # the model knows none of the answers
        z = scores / self.temperature
        e = np.exp(z - z[np.isfinite(z)].max())
        e[~np.isfinite(z)] = 0.0
        return e / e.sum()

    def describe(self) -> dict:
        if self.folder is not None:
            return {"source": "folder", "weights": str(self.weights)}
        return {"source": "hub", "weights": self.model}

    def __repr__(self) -> str:
        return f"TransformersVQA(model={self.model!r}, device={self.device!r})"
