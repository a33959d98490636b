"""The engine's storage: vectors keyed by the model that made them, which model is active per role, and jobs.

The vector tables reference the catalog's product and image tables by foreign key (by app label, so a deleted
product takes its vectors with it); everything else the engine reads of the catalog goes through
mmsearch.adapter. No catalog code is imported.
"""

from __future__ import annotations

from django.db import models
from pgvector.django import VectorField

# The catalog tables the vectors describe (as in migration 0002).
PRODUCT_MODEL = "catalog.Product"
IMAGE_MODEL = "catalog.ProductImage"


class ImageEmbedding(models.Model):
    """One vector per (image, model_key). `product` is denormalised so search can group and filter by product."""

    image = models.ForeignKey(IMAGE_MODEL, on_delete=models.CASCADE, related_name="+")
    product = models.ForeignKey(PRODUCT_MODEL, on_delete=models.CASCADE, related_name="+")
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

    product = models.ForeignKey(PRODUCT_MODEL, on_delete=models.CASCADE, related_name="+")
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


class IndexOutbox(models.Model):
    """Items whose embedding could not be queued (the broker was down when the catalog changed).

    Written by the catalog_changed receiver when sending fails; the periodic `drain_index_outbox` task (and
    every later successful send) queues them and deletes the rows it sent, so a broker outage loses nothing."""

    kind = models.CharField(max_length=10)  # "image" | "product"
    item_id = models.BigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["kind", "item_id"], name="indexoutbox_once")]


class ActiveModel(models.Model):
    """Which model_key answers searches for a role alias (blue/green: switched in one UPDATE)."""

    alias = models.CharField(max_length=100, unique=True)
    model_key = models.CharField(max_length=200)
    dim = models.PositiveIntegerField()
    # How the HNSW index stores the vectors and how queries compare them: "vector" (float32) or "halfvec"
    # (float16: about half the index; mmsearch.search.vectors.STORAGES). Set by `activate_model --storage`.
    storage = models.CharField(max_length=10, default="vector")
    switched_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.alias} -> {self.model_key}"


class IndexJob(models.Model):
    """A bulk run of one model alias over catalog items (embedding images and texts, suggesting tags or captions):
    totals and counters updated atomically by the workers, a ledger of written batches, cancel and resume."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"
        CANCELLED = "cancelled"

    class Kind(models.TextChoices):
        ALL = "all", "images and product texts"
        IMAGES = "images"
        PRODUCTS = "products", "product texts"
        TAGS = "tags", "tag suggestions"
        CAPTIONS = "captions", "caption suggestions"

    alias = models.CharField(max_length=100)
    model_key = models.CharField(max_length=200)
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.ALL)
    only_missing = models.BooleanField(default=False)
    force = models.BooleanField(default=False)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED, db_index=True)
    total = models.PositiveIntegerField(default=0)
    done = models.PositiveIntegerField(default=0)  # embedded, or skipped because already current
    skipped = models.PositiveIntegerField(default=0)  # part of `done`: nothing to write
    failed = models.PositiveIntegerField(default=0)  # permanent per-item failures (see EmbeddingFailure)
    batches = models.PositiveIntegerField(default=0)  # write batches planned
    # Seconds summed over all batches, per stage (decode runs beside the forward pass, so they overlap).
    decode_seconds = models.FloatField(default=0.0)
    forward_seconds = models.FloatField(default=0.0)
    write_seconds = models.FloatField(default=0.0)
    error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        verbose_name = "job"

    def __str__(self) -> str:
        return f"job {self.pk} {self.alias} ({self.status} {self.done + self.failed}/{self.total})"

    @property
    def finished(self) -> bool:
        return self.status in (self.Status.DONE, self.Status.FAILED, self.Status.CANCELLED)

    @property
    def progress(self) -> float:
        """Share of items accounted for (embedded, skipped or failed), 0..1."""
        return 1.0 if not self.total else min(1.0, (self.done + self.failed) / self.total)

    @property
    def elapsed_seconds(self) -> float | None:
        if not self.started_at:
            return None
        from django.utils import timezone

        return ((self.finished_at or timezone.now()) - self.started_at).total_seconds()

    @property
    def items_per_second(self) -> float | None:
        elapsed = self.elapsed_seconds
        return (self.done + self.failed) / elapsed if elapsed else None

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the rate so far (None before the first batch, 0 once finished)."""
        if self.finished:
            return 0.0
        rate = self.items_per_second
        return max(0.0, (self.total - self.done - self.failed) / rate) if rate else None


class IndexJobBatch(models.Model):
    """Ledger of a job's written batches: a redelivered task skips what is recorded, so counters count once."""

    job = models.ForeignKey(IndexJob, on_delete=models.CASCADE, related_name="batch_log")
    chunk = models.PositiveIntegerField()  # the task's number within the job
    batch = models.PositiveIntegerField()  # the write batch's number within the task
    done = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    finished_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["job", "chunk", "batch"], name="indexjobbatch_once")]
