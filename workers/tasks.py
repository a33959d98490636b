"""Celery tasks on the `embed`, `tag` and `caption` queues. Messages carry ids, the alias and the model_key only (never objects).

acks_late (global setting): a task killed mid-way is redelivered; the pipeline's ledger makes that safe.
Transient infrastructure errors retry with exponential backoff; a wrong model_key fails without retrying.
"""

from __future__ import annotations

from celery import Task, shared_task
from django.db import InterfaceError, OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mmsearch.indexing import drain_outbox, fail_job
from workers import pipeline
from workers.captioning import run_captions
from workers.tagging import run_tags

TRANSIENT_ERRORS = (OperationalError, InterfaceError, RedisConnectionError, RedisTimeoutError)


class JobTask(Task):
    """Retries transient errors with backoff; a task that fails for good fails its job, saying why."""

    autoretry_for = TRANSIENT_ERRORS
    retry_backoff = 2  # 2, 4, 8 ... seconds
    retry_backoff_max = 300
    retry_jitter = True
    max_retries = 8
    acks_late = True

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        # Called once retries are exhausted or the error is not retried; a job must not stay "running" forever.
        chunk = kwargs.get("chunk", 0)
        fail_job(kwargs.get("job_id"), f"{self.name} chunk {chunk}: {exc.__class__.__name__}: {exc}")


@shared_task(name="workers.tasks.drain_index_outbox", autoretry_for=TRANSIENT_ERRORS, retry_backoff=2, max_retries=8)
def drain_index_outbox() -> int:
    """Queue what the catalog changed while the broker was down (run every minute by Celery beat)."""
    return drain_outbox()


@shared_task(name="workers.tasks.embed_images", base=JobTask)
def embed_images(
    alias: str, model_key: str, image_ids: list[int], job_id: int | None = None, chunk: int = 0, force: bool = False
) -> dict:
    """Embed images with the plugin for `alias`, refusing to write unless its model_key matches."""
    return pipeline.run_images(alias, model_key, image_ids, job_id=job_id, chunk=chunk, force=force).as_dict()


@shared_task(name="workers.tasks.tag_products", base=JobTask)
def tag_products(
    alias: str, model_key: str, product_ids: list[int], job_id: int | None = None, chunk: int = 0, force: bool = False,
) -> dict:
    """Suggest tags for products with the tagger for `alias`, refusing to write unless its model_key matches."""
    return run_tags(alias, model_key, product_ids, job_id=job_id, chunk=chunk, force=force).as_dict()


@shared_task(name="workers.tasks.caption_products", base=JobTask)
def caption_products(
    alias: str, model_key: str, product_ids: list[int], job_id: int | None = None, chunk: int = 0, force: bool = False,
) -> dict:
    """Caption products' main images with the captioner for `alias`, refusing to write unless its model_key matches."""
    return run_captions(alias, model_key, product_ids, job_id=job_id, chunk=chunk, force=force).as_dict()


@shared_task(name="workers.tasks.embed_products", base=JobTask)
def embed_products(
    alias: str, model_key: str, product_ids: list[int], job_id: int | None = None, chunk: int = 0,
    force: bool = False,
) -> dict:
    """Embed product texts with the plugin for `alias`, skipping unchanged texts."""
    return pipeline.run_products(alias, model_key, product_ids, job_id=job_id, chunk=chunk, force=force).as_dict()
