"""Answering shoppers' questions about a product (role `answerer`): the product's data first, the image where
the data is silent, "I don't know" below a calibrated threshold.

    MMSEARCH_MODELS["answerer"] = {"BACKEND": "mmsearch.plugins.answerer.TrunkAnswerer",
                                   "OPTIONS": {"path": "models/answerer"}}

Every backend shares `ProductAnswerer`, which does what does not depend on the model:
- routing: the text embedder (alias `text_embedder`, the MiniLM sentence encoder) compares the question with the
  prototype phrasings of every type (training/qa/questions.py: colour, article type, gender, usage; price, brand,
  origin, description); the parser then reads values it names ("is it red?" -> yes/no about colour, "red or
  blue?" -> a choice between them);
- facts (price, brand, origin, description, other attributes) come from the product's fields, with that text
  as evidence: the description sentence or attribute line nearest to the question by the text embedder, when it
  is near enough (`fact_similarity`);
- a visual question whose attribute the product's data holds is answered from the data; the image is asked too,
  and when it confidently says otherwise (data Red, image Blue) the answer keeps the data's value and says the
  image looks different;
- otherwise the image answers, ranking only the answers the question allows, with the backend's calibrated
  confidence; below `threshold` the answer is "I don't know" (abstained).

Backends supply the image side (`image_features`, `visual_probabilities`) and a vocabulary:
- TrunkAnswerer: the project's own VQA model, a folder written by `manage.py train_answerer` (question tokens of
  the locked MiniLM cross-attend to the locked EfficientNet-Lite0 grid and, for a model trained with an
  embedder, to that embedder's image vector of the same grid, computed by the copy of its head the folder
  holds; training/qa/). model_key
  "answerer:local:<content key of weights + config>". Its threshold defaults to the folder's (chosen for 0.90
  answered accuracy on the calibration split).
- LateFusionAnswerer: the baseline, the zero-shot tagger (alias `tagger`) scoring the image vector against the
  asked attribute's values; yes/no is P(value), a choice the two values' renormalised probabilities.
- transformers_vqa.TransformersVQA: ViLT / BLIP VQA models (hub names or local folders).
LateFusionAnswerer and TransformersVQA read their vocabulary from an answerer folder or a JSON file.
Constructors only validate options and read small config files; torch loads on first use.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmsearch.plugins import files, runtime
from mmsearch.plugins.base import Answer, Evidence, ProductFacts
from mmsearch.training.qa import questions as Q

DONT_KNOW = "I don't know"
ORIGIN_KEYS = re.compile(r"origin|country|made|grown|provenance", re.I)
BRAND_KEYS = re.compile(r"^(brand|make|manufacturer|maker)$", re.I)


def sentences(text: str) -> list[str]:
    """A description's sentences (split after . ! ? and at line breaks), stripped, empty ones dropped."""
    parts = re.split(r"(?<=[.!?])\s+|\n+", text or "")
    return [p.strip() for p in parts if p and p.strip()]


def facts_from_product(product: Any) -> ProductFacts:
    """ProductFacts from any object with sku / title / category / attributes (training.data.Product, a catalog
    row) and, where it has them, description / brand / price / currency."""
    price = getattr(product, "price", None)
    return ProductFacts(sku=str(getattr(product, "sku", "")), title=str(getattr(product, "title", "")),
                        category=str(getattr(product, "category", "") or ""),
                        attributes=dict(getattr(product, "attributes", {}) or {}),
                        description=str(getattr(product, "description", "") or ""),
                        brand=str(getattr(product, "brand", "") or ""),
                        price=None if price in (None, "") else str(price),
                        currency=str(getattr(product, "currency", "") or ""))


def load_vocabulary(vocabulary: str) -> Q.Vocabulary:
    """The attributes and values an image answers: an answerer folder's, or a JSON file {key: {value: count}}."""
    import json

    path = Path(str(vocabulary)).expanduser()
    if path.is_dir():
        from mmsearch.training.qa.model import read_config

        values = read_config(path)["vocabulary"]
    elif path.is_file():
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"vocabulary={vocabulary!r} is not valid JSON: {exc}") from exc
    else:
        raise FileNotFoundError(f"vocabulary={vocabulary!r}: neither an answerer folder nor a JSON file")
    if not isinstance(values, dict) or not values or not all(isinstance(v, dict) for v in values.values()):
        raise ValueError(f"vocabulary={vocabulary!r} must map attribute keys to {{value: count}}")
    return Q.Vocabulary(values)


class Router:
    """A question's type by its nearest prototype phrasing under the text embedder (cosine of unit vectors)."""

    def __init__(self, embedder, keys: Sequence[str]):
        self.embedder = embedder
        protos: list[tuple[str, str]] = []
        for k in keys:
            protos += [(k, t) for t in Q.open_phrasings(k)]
        for t, phrasings in Q.FACT_PHRASINGS.items():
            protos += [(t, p) for p in phrasings]
        self.types = [t for t, _ in protos]
        self.vectors = runtime.unit_rows(np.asarray(embedder.embed_texts([p for _, p in protos]), np.float32))

    def route(self, question: str) -> tuple[str, float]:
        """(type, cosine of its nearest prototype)."""
        q = runtime.unit_rows(np.asarray(self.embedder.embed_texts([question]), np.float32))[0]
        sims = self.vectors @ q
        i = int(sims.argmax())
        return self.types[i], float(sims[i])


class ProductAnswerer(runtime.CheapConstructor):
    """The shared answering logic of the module docstring; subclasses provide the image side."""

    kind_name = "answerer"

    def __init__(self, text_embedder: str = "text_embedder", threshold: float | None = None,
                 fact_similarity: float = 0.3):
        if not isinstance(text_embedder, str) or not text_embedder:
            raise ValueError(f"text_embedder={text_embedder!r} must name a text_embedder or embedder alias")
        for name, value in (("threshold", threshold), ("fact_similarity", fact_similarity)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0 <= value <= 1):
                raise ValueError(f"{name}={value!r} must be a number from 0 to 1")
        self.text_embedder = text_embedder
        self._threshold = None if threshold is None else float(threshold)
        self.fact_similarity = float(fact_similarity)
        self._lock = threading.RLock()
        self._router: Router | None = None
        self._parser: Q.QuestionParser | None = None

    # --- what subclasses provide --------------------------------------------------------------------------
    @property
    def vocabulary(self) -> Q.Vocabulary:
        """The attributes the image can answer and their values."""
        raise NotImplementedError(f"{type(self).__name__} must provide a vocabulary")

    @property
    def threshold(self) -> float:
        """Calibrated confidence below which the image's answer is "I don't know"."""
        return 0.0 if self._threshold is None else self._threshold

    def image_features(self, images: Sequence[Image.Image]) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} must compute image features")

    def visual_probabilities(self, question: str, parsed: Q.Parsed, features: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of parsed.candidates (in that order) for the first image of `features`."""
        raise NotImplementedError(f"{type(self).__name__} must score visual questions")

    # --- shared parts -------------------------------------------------------------------------------------
    @property
    def text_model(self):
        from mmsearch.plugins import get_model

        return get_model(self.text_embedder)

    @property
    def router(self) -> Router:
        if self._router is None:
            with self._lock:
                if self._router is None:
                    self._router = Router(self.text_model, sorted(self.vocabulary.values))
        return self._router

    @property
    def parser(self) -> Q.QuestionParser:
        if self._parser is None:
            self._parser = Q.QuestionParser(self.vocabulary)
        return self._parser

    def parse(self, question: str) -> tuple[str, Q.Parsed]:
        """(routed type, parsed question): the router's type for open questions, the parser's form otherwise."""
        routed, _ = self.router.route(question)
        parsed = self.parser.parse(question, routed if routed in self.vocabulary.values else None)
        return routed, parsed

    def answer(self, question: str, product: ProductFacts, images: Sequence[Image.Image]) -> Answer:
        """Answer one question (the module docstring's rules)."""
        features = self.image_features(list(images)[:1]) if images else None
        return self.answer_features(question, product, features)

    def answer_features(self, question: str, product: ProductFacts, features: np.ndarray | None) -> Answer:
        routed, parsed = self.parse(question)
        if parsed.type is not None:
            return self.visual_answer(question, parsed, product, features)
        return self.fact_answer(routed, question, product)

    def image_answer(self, question: str, parsed: Q.Parsed, features: np.ndarray | None
                     ) -> tuple[str, float] | None:
        """The image's (answer, calibrated confidence) among parsed.candidates, or None without an image."""
        if features is None or len(features) == 0 or not parsed.candidates:
            return None
        probs = np.asarray(self.visual_probabilities(question, parsed, features), np.float64)
        i = int(probs.argmax())
        return parsed.candidates[i], float(probs[i])

    def visual_answer(self, question: str, parsed: Q.Parsed, product: ProductFacts,
                      features: np.ndarray | None) -> Answer:
        key = parsed.key
        data_value = Q.value_of(product, key)
        kind = parsed.type
        if data_value is not None:
            truth = Q.truth_of(parsed, data_value)
            line = Evidence("attribute", f"{Q.name_of(key)}: {data_value}", key=key, value=data_value)
            text = _say(truth) if truth is not None else f"Neither: the {Q.name_of(key)} is {data_value}"
            evidence = [line]
            # The image's view of the attribute itself (an open question about the key), for disagreement.
            seen = self.image_answer(question, Q.Parsed(key, key, (), tuple(self.vocabulary.values.get(key, ()))),
                                     features) if key in self.vocabulary.values else None
            if seen is not None:
                value, conf = seen
                if value != data_value and conf >= max(self.threshold, 0.5):
                    text += f" (the product data says {data_value}; the image looks {value.lower()})"
                    evidence.append(Evidence("image", f"the image looks {value}", key=key, value=value,
                                             confidence=round(conf, 4)))
                else:
                    evidence.append(Evidence("image", f"the image agrees ({value})" if value == data_value
                                             else f"the image is unsure ({value}?)", key=key, value=value,
                                             confidence=round(conf, 4)))
            return Answer(text, 1.0, self.model_key, False, evidence, kind)
        seen = self.image_answer(question, parsed, features)
        if seen is None or seen[1] < self.threshold:
            # Neither the data's attribute nor a sure image: a description sentence may still say it
            # ("the pulp is orange coloured").
            written = self.evidence_answer(kind, question, product)
            if not written.abstained or seen is None:
                return written if not written.abstained else Answer(DONT_KNOW, 0.0, self.model_key, True, [], kind)
        value, conf = seen
        ev = [Evidence("image", f"the image suggests {value}" if kind != Q.YES_NO
                       else f"the image {'shows' if value == Q.YES else 'does not show'} {parsed.values[0]}",
                       key=key, value=value, confidence=round(conf, 4))]
        if conf < self.threshold:
            return Answer(DONT_KNOW, conf, self.model_key, True, ev, kind)
        return Answer(_say(value), conf, self.model_key, False, ev, kind)

    def fact_answer(self, kind: str, question: str, product: ProductFacts) -> Answer:
        """Price, brand, origin, description and other attributes, from the product's fields."""
        if kind == "price":
            if product.price is None:
                return Answer(DONT_KNOW, 0.0, self.model_key, True, [], kind)
            text = f"{product.price} {product.currency}".strip()
            return Answer(text, 1.0, self.model_key, False, [Evidence("price", text, value=product.price)], kind)
        if kind == "brand":
            brand = product.brand or next((str(v) for k, v in product.attributes.items() if BRAND_KEYS.match(k)
                                           and v not in (None, "")), "")
            if brand:
                return Answer(brand, 1.0, self.model_key, False, [Evidence("brand", brand, value=brand)], kind)
        if kind == "origin":
            for k, v in product.attributes.items():
                if ORIGIN_KEYS.search(k) and v not in (None, ""):
                    line = f"{Q.name_of(k)}: {v}"
                    return Answer(str(v), 1.0, self.model_key, False,
                                  [Evidence("attribute", line, key=k, value=str(v))], kind)
        return self.evidence_answer(kind, question, product)

    def evidence_answer(self, kind: str, question: str, product: ProductFacts) -> Answer:
        """The description sentence or attribute line nearest to the question (text embedder), when near enough."""
        candidates: list[Evidence] = [Evidence("description", s) for s in sentences(product.description)]
        candidates += [Evidence("attribute", f"{Q.name_of(k)}: {v}", key=k, value=str(v))
                       for k, v in product.attributes.items() if v not in (None, "") and not isinstance(v, (dict, list))]
        if not candidates:
            return Answer(DONT_KNOW, 0.0, self.model_key, True, [], kind)
        vecs = runtime.unit_rows(np.asarray(self.text_model.embed_texts([question] + [c.text for c in candidates]),
                                            np.float32))
        sims = vecs[1:] @ vecs[0]
        i = int(sims.argmax())
        best = candidates[i]
        sim = float(sims[i])
        ev = Evidence(best.source, best.text, key=best.key, value=best.value, confidence=round(sim, 4))
        if sim < self.fact_similarity:
            return Answer(DONT_KNOW, sim, self.model_key, True, [ev], kind)
        return Answer(best.text, sim, self.model_key, False, [ev], kind)


def _say(answer: str) -> str:
    return answer.capitalize() if answer in (Q.YES, Q.NO) else answer


# --- the project's own VQA model -------------------------------------------------------------------------------
class TrunkAnswerer(ProductAnswerer, runtime.LazyModel):
    """Answers from a folder written by `manage.py train_answerer`."""

    def __init__(self, path: str, device: str = "auto", threshold: float | None = None,
                 text_embedder: str = "text_embedder", fact_similarity: float = 0.3, batch_size: int = 64):
        if not isinstance(path, (str, Path)) or not str(path):
            raise ValueError(f"path={path!r} must be an answerer folder (manage.py train_answerer --out)")
        from mmsearch.training.qa.folder import CONFIG_NAME, WEIGHTS_NAME, read_config

        self.path = Path(path).expanduser().resolve()
        if not self.path.is_dir():
            raise FileNotFoundError(f"answerer folder {str(path)!r} does not exist "
                                    "(train one with `manage.py train_answerer`)")
        self.config = read_config(self.path)
        super().__init__(text_embedder=text_embedder, threshold=threshold, fact_similarity=fact_similarity)
        self.device = runtime.check_device(device)
        self.batch_size = runtime.check_batch_size(batch_size)
        self._files = (self.path / WEIGHTS_NAME, self.path / CONFIG_NAME)
        if self.config.get("model", {}).get("embed_dim") and not (self.config.get("embedder") or {}).get("model_key"):
            raise ValueError(f"{self.path / CONFIG_NAME}: the model reads an embedder's image vector but the config "
                             "names no embedder (an edited file? retrain with `train_answerer --embedder`)")
        self._vocab = Q.Vocabulary(self.config["vocabulary"])
        if list(self._vocab.answers) != list(self.config["answers"]):
            raise ValueError(f"{self.path / CONFIG_NAME}: its answers do not match its vocabulary (an edited file?)")
        self._model_key: str | None = None

    @property
    def model_key(self) -> str:
        if self._model_key is None:
            self._model_key = f"answerer:local:{files.content_key(self._files[0], [self._files[1]])}"
        return self._model_key

    @property
    def vocabulary(self) -> Q.Vocabulary:
        return self._vocab

    @property
    def threshold(self) -> float:
        return float(self.config.get("threshold", 0.0)) if self._threshold is None else self._threshold

    @property
    def temperature(self) -> float:
        return float(self.config.get("temperature", 1.0))

    def _load(self) -> None:
        import torch

        from mmsearch.training.qa.model import QuestionEncoder, load_answerer

        device = runtime.resolve_device(self.device)
        self._trunk, self._net, _ = load_answerer(self.path, device)
        self._trunk = self._trunk.to(memory_format=torch.channels_last)
        spec = self.config["trunk"]
        self._mean = torch.tensor(spec["mean"], device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(spec["std"], device=device).view(1, 3, 1, 1)
        self._encoder = QuestionEncoder(int(self.config["model"]["max_tokens"]), device)
        stage_pool = (self.config.get("embedder") or {}).get("stage_pool")
        self._stage_pool = None
        if stage_pool:  # the embedder's head reads its StagePool features of the same trunk pass
            from mmsearch.plugins.openclip import make_stage_pool

            self._stage_pool = make_stage_pool(spec["mean"], spec["std"], stage_pool).to(device)
        self._device, self._torch = device, torch

    def image_features(self, images: Sequence[Image.Image]) -> np.ndarray:
        """The trunk's grid + cell colours of each image, (N, 16, 1286) float32 (captioner.trunk_grids), and for
        a stage-pooled embedder its head input in extra rows (qa.model.pack_head_input), from one trunk pass."""
        from mmsearch.plugins.captioner import trunk_grids

        self._ensure_loaded()
        m = self.config["model"]
        out = trunk_grids(self._trunk, images, int(self.config["trunk"]["image_size"]), self._mean, self._std,
                          self._device, None, int(m["grid_tokens"]), int(m["colour_dim"]), self.batch_size,
                          self._stage_pool)
        if self._stage_pool is None:
            return out
        from mmsearch.training.qa.model import pack_head_input

        return pack_head_input(*out)

    def logits(self, questions: Sequence[str], features: np.ndarray) -> np.ndarray:
        """Uncalibrated logits over every answer, (len(questions), answers), question i about image row i."""
        from mmsearch.training.qa.model import token_mask

        self._ensure_loaded()
        return self.logits_from_tokens(self._encoder.encode(list(questions)), features)

    def logits_from_tokens(self, tokens: np.ndarray, features: np.ndarray) -> np.ndarray:
        """`logits` from the questions' MiniLM token states (QuestionEncoder.encode, or a cache of them)."""
        from mmsearch.training.qa.model import token_mask

        self._ensure_loaded()
        torch = self._torch
        out = []
        for s in range(0, len(tokens), 256):
            t = torch.as_tensor(np.asarray(tokens[s:s + 256], np.float32), device=self._device)
            grids = torch.as_tensor(np.asarray(features[s:s + 256], np.float32), device=self._device)
            with torch.inference_mode():
                out.append(self._net.logits(self._net.encode(grids), t, token_mask(t)).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self._vocab)), np.float32)

    def zeroshot(self, features: np.ndarray) -> np.ndarray | None:
        """(N, answers) cosines of each image's embedder vector with every value answer's text vector (the
        late-fusion scores the folder's combination weighs), or None for a model trained without an embedder."""
        self._ensure_loaded()
        torch = self._torch
        grids = torch.as_tensor(np.asarray(features, np.float32), device=self._device)
        with torch.inference_mode():
            cos = self._net.zeroshot(grids)
        return None if cos is None else cos.float().cpu().numpy()

    def candidate_probabilities(self, logits: np.ndarray, cos: np.ndarray | None, parsed: Q.Parsed) -> np.ndarray:
        """Calibrated probabilities of parsed.candidates from one row of logits and of zero-shot cosines: the
        folder's per-group combination of the two (model.combined_logits), else temperature scaling."""
        import torch

        from mmsearch.training.qa.model import combined_logits, question_terms

        named = parsed.values[0] if parsed.type == Q.YES_NO and parsed.values else None
        terms = question_terms(self._vocab, [(parsed.type, parsed.key, parsed.candidates, named)],
                               self.config.get("combination"), self.temperature)
        z = combined_logits(torch.as_tensor(np.asarray(logits, np.float32))[None],
                            None if cos is None else torch.as_tensor(np.asarray(cos, np.float32))[None], **terms,
                            yes=self._vocab.index[Q.YES])[0].double().numpy()
        z = z[[self._vocab.index[c] for c in parsed.candidates]]
        e = np.exp(z - z.max())
        return e / e.sum()

    def visual_probabilities(self, question: str, parsed: Q.Parsed, features: np.ndarray) -> np.ndarray:
        cos = self.zeroshot(features[:1])
        return self.candidate_probabilities(self.logits([question], features[:1])[0],
                                            None if cos is None else cos[0], parsed)

    def describe(self) -> dict:
        from mmsearch.training.qa.model import CARD_NAME

        info = {"source": "folder", "weights": str(self._files[0]), "threshold": self.threshold,
                "temperature": self.temperature}
        if self.config.get("embedder"):
            info["embedder"] = self.config["embedder"]["model_key"]  # its image head, saved in the folder
        if (self.path / CARD_NAME).is_file():
            info["card"] = str(self.path / CARD_NAME)
        return info

    def __repr__(self) -> str:
        return f"TrunkAnswerer(path={str(self.path)!r}, device={self.device!r})"


# --- the late-fusion baseline ----------------------------------------------------------------------------------
class LateFusionAnswerer(ProductAnswerer):
    """The zero-shot tagger answering the question: the asked attribute's values scored against the image vector.

    `vocabulary`: an answerer folder (its vocabulary) or a JSON file {key: {value: count}}."""

    def __init__(self, vocabulary: str, tagger: str = "tagger", threshold: float | None = None,
                 text_embedder: str = "text_embedder", fact_similarity: float = 0.3):
        super().__init__(text_embedder=text_embedder, threshold=threshold, fact_similarity=fact_similarity)
        self._vocab = load_vocabulary(vocabulary)
        if not isinstance(tagger, str) or not tagger:
            raise ValueError(f"tagger={tagger!r} must name a tagger alias")
        self.tagger = tagger
        self._groups: dict[str, Any] = {}

    @property
    def vocabulary(self) -> Q.Vocabulary:
        return self._vocab

    @property
    def tagger_model(self):
        from mmsearch.plugins import get_model

        return get_model(self.tagger)

    @property
    def model_key(self) -> str:
        return f"latefusion:{self.tagger_model.model_key}"

    def group(self, key: str):
        if key not in self._groups:
            from mmsearch.plugins import zeroshot

            self._groups[key] = zeroshot.vocabulary_from_products(
                [{key: v} for v in self._vocab.values[key]], [key], max_values=10_000)[0]
        return self._groups[key]

    def image_features(self, images: Sequence[Image.Image]) -> np.ndarray:
        """The unit image vectors the tagger scores (the embedder's, flip-averaged when its calibration says so)."""
        return np.asarray(self.tagger_model.image_vectors(list(images)), np.float32)

    def value_probabilities(self, key: str, vectors: np.ndarray) -> np.ndarray:
        """(N, values of key) the tagger's probabilities (calibrated where its file covers the group)."""
        probs, _ = self.tagger_model.score_vectors(np.asarray(vectors, np.float32), self.group(key))
        return np.asarray(probs, np.float64)

    def candidates_from_values(self, parsed: Q.Parsed, probs: np.ndarray) -> np.ndarray:
        """One row of value probabilities -> probabilities of parsed.candidates."""
        values = self._vocab.values[parsed.key]
        p = {v: float(probs[i]) for i, v in enumerate(values)}
        if parsed.type == Q.YES_NO:
            yes = p.get(parsed.values[0], 0.0)
            return np.array([yes, 1 - yes])
        out = np.array([p.get(c, 0.0) for c in parsed.candidates]) + 1e-12
        return out / out.sum()

    def visual_probabilities(self, question: str, parsed: Q.Parsed, features: np.ndarray) -> np.ndarray:
        return self.candidates_from_values(parsed, self.value_probabilities(parsed.key, features[:1])[0])

    def describe(self) -> dict:
        return {"source": "tagger", "tagger": self.tagger}
