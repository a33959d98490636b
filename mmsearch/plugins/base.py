"""Capability contracts for model plugins: one small Protocol per role, plain dataclasses out.

Plugins are built by mmsearch.plugins.handler from settings.MMSEARCH_MODELS[alias] = {"BACKEND": dotted path,
"OPTIONS": {...}} as BACKEND(**OPTIONS). Heavy libraries (torch, open_clip, transformers) are imported only
inside plugin modules, and weights load on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image


@runtime_checkable
class Embedder(Protocol):
    """Maps images and texts into one space (CLIP-style). Vectors are L2-normalised float32 rows."""

    model_key: str

    @property
    def dim(self) -> int:
        """Length of every vector this model returns."""

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed decoded RGB images; returns an array of shape (len(images), dim)."""

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts; returns an array of shape (len(texts), dim)."""


@runtime_checkable
class PixelEmbedder(Protocol):
    """Optional extra of an Embedder: CPU preprocessing split from the forward pass.

    A pipeline runs `preprocess` in loader threads and keeps only `embed_pixels` on the model's critical path;
    `embed_pixels(preprocess(images))` equals `embed_images(images)`. OpenClipEmbedder and HFClipEmbedder have it.
    """

    def preprocess(self, images: Sequence[Image.Image]) -> Any:
        """Decoded images -> one batch in the model's input format (a CPU tensor)."""

    def embed_pixels(self, pixels: Any) -> np.ndarray:
        """Embed a batch from `preprocess`; returns an array of shape (len(batch), dim), L2-normalised."""


@runtime_checkable
class TextEmbedder(Protocol):
    """Text-only embedder (e.g. a sentence encoder) for product text and query text."""

    model_key: str

    @property
    def dim(self) -> int:
        """Length of every vector this model returns."""

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts; returns an array of shape (len(texts), dim), L2-normalised."""


@dataclass(frozen=True)
class Caption:
    text: str
    model_key: str
    score: float | None = None


@runtime_checkable
class Captioner(Protocol):
    model_key: str

    def caption(self, images: Sequence[Image.Image]) -> list[Caption]:
        """One caption per image."""


# The templates a tag group's prompts use when it names none: "{group}: {tag}" is how product texts write an
# attribute ("colour: Red", mmsearch.text.product_text), so the same wording serves training and tagging.
DEFAULT_TAG_TEMPLATES: tuple[str, ...] = ("{group}: {tag}", "a photo of a {tag} product", "{tag}")


@dataclass(frozen=True)
class VocabTag:
    slug: str
    name: str
    synonyms: tuple[str, ...] = ()


@dataclass(frozen=True)
class VocabGroup:
    """One facet of a merchant's vocabulary (colour, pattern ...): the tags an image is scored against, one
    softmax per group. `version` changes whenever anything that changes the scores does."""

    slug: str
    name: str
    tags: tuple[VocabTag, ...]
    templates: tuple[str, ...] = DEFAULT_TAG_TEMPLATES

    @property
    def version(self) -> str:
        import hashlib
        import json

        body = json.dumps([self.name, list(self.templates), [[t.slug, t.name, list(t.synonyms)] for t in self.tags]])
        return hashlib.sha256(body.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class TagScore:
    group: str
    tag: str  # the tag's slug
    score: float  # probability within the group (calibrated when `calibrated`)
    calibrated: bool = False


@dataclass(frozen=True)
class TagSuggestions:
    tags: list[TagScore]
    model_key: str


@runtime_checkable
class Tagger(Protocol):
    model_key: str

    def tag(self, images: Sequence[Image.Image], vocabulary: Sequence[VocabGroup]) -> list[TagSuggestions]:
        """Score each image against every group of the vocabulary; one TagSuggestions per image."""


@dataclass(frozen=True)
class ProductFacts:
    """What an answerer may read about one product besides its images (the serving side fills it from the
    catalog; evaluation from a products.jsonl row). `price` is the decimal as text, or None when unknown."""

    sku: str
    title: str
    category: str = ""
    attributes: dict = field(default_factory=dict)
    description: str = ""
    brand: str = ""
    price: str | None = None
    currency: str = ""


@dataclass(frozen=True)
class Evidence:
    """Why an answer says what it says: `source` is image, attribute, description, price, brand or title; `text`
    the words a shopper is shown; `key`, `value` and `confidence` where they apply."""

    source: str
    text: str
    key: str | None = None
    value: str | None = None
    confidence: float | None = None


@dataclass(frozen=True)
class Answer:
    """An answer to one question. `confidence` is calibrated (the probability the answer is right); below the
    answerer's threshold the answer is "I don't know" with `abstained` True. `kind` is the question's type."""

    text: str
    confidence: float
    model_key: str
    abstained: bool = False
    evidence: list[Evidence] = field(default_factory=list)
    kind: str = ""


@runtime_checkable
class Answerer(Protocol):
    model_key: str

    def answer(self, question: str, product: ProductFacts, images: Sequence[Image.Image]) -> Answer:
        """Answer a shopper's question about one product from its data and its images."""


@runtime_checkable
class FeatureAnswerer(Protocol):
    """Optional extra of an Answerer: the image side split off, so a caller can cache it per (image, model_key).

    `answer_features(q, product, image_features(images))` equals `answer(q, product, images)`."""

    def image_features(self, images: Sequence[Image.Image]) -> np.ndarray:
        """What the answerer reads from the images (a float32 array), computed once per image set."""

    def answer_features(self, question: str, product: ProductFacts, features: np.ndarray | None) -> Answer:
        """Answer from precomputed image features (None: no image)."""


# role -> the Protocol an alias of that role must satisfy
ROLE_PROTOCOLS: dict[str, type] = {
    "embedder": Embedder,
    "text_embedder": TextEmbedder,
    "captioner": Captioner,
    "tagger": Tagger,
    "answerer": Answerer,
}
