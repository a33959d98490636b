"""The engine's storage: vectors keyed by the model that made them, and which model is active per role.

The engine refers to the catalog only through the model labels in settings (MMSEARCH_PRODUCT_MODEL,
MMSEARCH_IMAGE_MODEL), never by importing catalog code.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from pgvector.django import VectorField


class ImageEmbedding(models.Model):
    """One vector per (image, model_key). `product` is denormalised so search can group and filter by product."""

    image = models.ForeignKey(settings.MMSEARCH_IMAGE_MODEL, on_delete=models.CASCADE, related_name="+")
    product = models.ForeignKey(settings.MMSEARCH_PRODUCT_MODEL, on_delete=models.CASCADE, related_name="+")
    model_key = models.CharField(max_length=200)
    # No fixed dimension: one table serves every model. The HNSW index is a partial expression index per
    # model_key that casts to that model's dimension (see mmsearch.search.vectors.ensure_index).
    vector = VectorField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["image", "model_key"], name="imageemb_unique_per_model")]
        indexes = [models.Index(fields=["model_key", "product"], name="imageemb_model_product_idx")]


class ProductTextEmbedding(models.Model):
    """One vector per (product, model_key) of the product's text (title, category, attributes, tags)."""

    product = models.ForeignKey(settings.MMSEARCH_PRODUCT_MODEL, on_delete=models.CASCADE, related_name="+")
    model_key = models.CharField(max_length=200)
    vector = VectorField()
    # sha256 of the embedded text, so an unchanged product is not embedded again.
    text_sha256 = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["product", "model_key"], name="textemb_unique_per_model")]
        indexes = [models.Index(fields=["model_key", "product"], name="textemb_model_product_idx")]


class EmbeddingFailure(models.Model):
    """A permanent per-item failure (e.g. a corrupt image file), recorded so the rest of a batch goes on."""

    kind = models.CharField(max_length=20)  # "image" | "product"
    item_id = models.BigIntegerField()
    model_key = models.CharField(max_length=200)
    reason = models.TextField()
    created_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["kind", "item_id", "model_key"], name="embfail_unique")]


class ActiveModel(models.Model):
    """Which model_key answers searches for a role alias (blue/green: switched in one UPDATE)."""

    alias = models.CharField(max_length=100, unique=True)
    model_key = models.CharField(max_length=200)
    dim = models.PositiveIntegerField()
    switched_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.alias} -> {self.model_key}"
