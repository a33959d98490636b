"""Asking a question about a catalog product: validation, the answerer plugin, the feature cache, the log.

One function, `ask`, serves the API and the product page. The answerer is the `answerer` alias of
MMSEARCH_MODELS (mmsearch/plugins/answerer.py); when it can split off its image side (FeatureAnswerer), the
features of a product's first image are kept per (image sha256, model_key) in qa.ImageFeatures, so the second
question about a product skips the image pass.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import numpy as np
from django.conf import settings
from django.db import IntegrityError, transaction

from mmsearch.plugins.base import Answer, FeatureAnswerer, ProductFacts
from mmsearch.validation import clean_text
from qa.models import ImageFeatures, Question

ALIAS = "answerer"


def max_chars() -> int:
    return int(getattr(settings, "MMSEARCH_QA_MAX_CHARS", 300))


def enabled() -> bool:
    """Whether an answerer is configured."""
    from mmsearch.plugins import model_settings

    return ALIAS in model_settings()


def clean_question(value) -> str:
    """The question as text (BadText names what is wrong: not text, empty, too long, control characters)."""
    return clean_text(value, name="question", max_length=max_chars())


def facts_for(product) -> ProductFacts:
    """What the answerer may read about a catalog product."""
    return ProductFacts(sku=product.sku, title=product.title,
                        category=product.category.path if product.category_id else "",
                        attributes=dict(product.attributes or {}) if isinstance(product.attributes, dict) else {},
                        description=product.description or "", brand=product.brand or "",
                        price=None if product.price is None else str(product.price), currency=product.currency or "")


def first_image(product):
    return product.images.order_by("position", "id").first()


def _open(image):
    from PIL import Image

    with image.file.open("rb") as fh:
        with Image.open(fh) as im:
            return im.convert("RGB")


def cached_features(answerer, image) -> tuple[np.ndarray, bool]:
    """(features of the image, whether they came from the cache)."""
    row = ImageFeatures.objects.filter(sha256=image.sha256, model_key=answerer.model_key).first()
    if row is not None:
        return row.array(), True
    features = np.asarray(answerer.image_features([_open(image)]), np.float32)
    try:
        with transaction.atomic():
            ImageFeatures.objects.create(sha256=image.sha256, model_key=answerer.model_key, shape=list(features.shape),
                                         dtype="float16", data=features.astype(np.float16).tobytes())
    except IntegrityError:
        pass  # another request stored the same image's features first
    return features, False


def answer_data(answer: Answer) -> dict:
    """The JSON shape of an answer (evidence items without empty fields)."""
    return {"answer": answer.text, "confidence": round(float(answer.confidence), 4), "abstained": answer.abstained,
            "kind": answer.kind,
            "evidence": [{k: v for k, v in asdict(e).items() if v is not None} for e in answer.evidence],
            "model_key": answer.model_key}


def ask(product, question: str) -> tuple[Question, Answer]:
    """Answer one (already cleaned) question about a product and log it."""
    from mmsearch.plugins import get_model

    t = time.perf_counter()
    answerer = get_model(ALIAS)
    facts = facts_for(product)
    image = first_image(product)
    hit = False
    if isinstance(answerer, FeatureAnswerer):
        features = None
        if image is not None:
            features, hit = cached_features(answerer, image)
        answer = answerer.answer_features(question, facts, features)
    else:
        answer = answerer.answer(question, facts, [_open(image)] if image is not None else [])
    latency = 1000 * (time.perf_counter() - t)
    data = answer_data(answer)
    row = Question.objects.create(product=product, question=question, answer=answer.text,
                                  confidence=data["confidence"], abstained=answer.abstained, kind=answer.kind,
                                  evidence=data["evidence"], model_key=answer.model_key, latency_ms=round(latency, 2),
                                  feature_cache_hit=hit)
    return row, answer


def confidence_words(confidence: float, abstained: bool) -> str:
    """How sure, in words, for the product page."""
    if abstained:
        return "not sure enough to answer"
    if confidence >= 0.97:
        return "very sure"
    if confidence >= 0.9:
        return "sure"
    if confidence >= 0.75:
        return "fairly sure"
    return "unsure"
