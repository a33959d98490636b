"""Logged questions and the image features the answerer read, per (image sha256, model_key)."""

from __future__ import annotations

import numpy as np
from django.conf import settings
from django.db import models


class Question(models.Model):
    """One shopper question, the answer it got and why; an admin may correct the answer (training data for the
    next answerer: `manage.py export_answers`)."""

    product = models.ForeignKey("catalog.Product", on_delete=models.CASCADE, related_name="questions")
    question = models.TextField()
    answer = models.TextField()
    confidence = models.FloatField()
    abstained = models.BooleanField(default=False)
    kind = models.CharField(max_length=40, blank=True, default="", help_text="the question's type (colour, price ...)")
    evidence = models.JSONField(default=list, blank=True)
    model_key = models.CharField(max_length=200)
    latency_ms = models.FloatField()
    feature_cache_hit = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    corrected_answer = models.TextField(blank=True, default="", help_text="the right answer, when the model's was wrong "
                                        "or it did not know")
    corrected_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="+")
    corrected_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["product", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.question[:60]} -> {self.answer[:40]}"


class ImageFeatures(models.Model):
    """What an answerer computed from one image (e.g. the trunk's grid), so later questions skip the image pass."""

    sha256 = models.CharField(max_length=64)
    model_key = models.CharField(max_length=200)
    shape = models.JSONField()
    dtype = models.CharField(max_length=16, default="float16")
    data = models.BinaryField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["sha256", "model_key"], name="qa_features_unique")]

    def array(self) -> np.ndarray:
        return np.frombuffer(bytes(self.data), dtype=self.dtype).reshape(self.shape).astype(np.float32)
