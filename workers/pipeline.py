"""The embedding pipeline's task bodies: batched, idempotent, checked against the model_key they were sent for.

A task gets a chunk of ids. It splits them into write batches (MMSEARCH_EMBED_BATCH_SIZE) in a fixed order,
so a redelivered task (acks_late: the worker died before acking) splits them the same way and skips the
batches already recorded in the job's ledger (IndexJobBatch). Each batch's vectors, failures, ledger row and
job counters are written in one transaction: a batch counts once or not at all.

Images are read and decoded in a thread pool, and batch-preprocessed (resize, normalise) in a second stage
when the plugin offers `preprocess` + `embed_pixels`: batch n+1 is being prepared while the model runs batch n.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from PIL import Image, UnidentifiedImageError

from mmsearch.adapter import get_catalog
from mmsearch.indexing import batch_size, bootstrap_activation, fail_job
from mmsearch.models import EmbeddingFailure, IndexJob, IndexJobBatch
from mmsearch.plugins import get_model
from mmsearch.plugins.base import PixelEmbedder
from mmsearch.plugins.runtime import batches as chunks
from mmsearch.search import vectors

logger = logging.getLogger(__name__)


class ModelKeyMismatch(RuntimeError):
    """The worker's plugin for an alias is not the model the task was sent for; nothing is written."""


class PermanentItemError(Exception):
    """One item cannot be embedded (missing or corrupt file); recorded in EmbeddingFailure."""


@dataclass
class Outcome:
    """What one task did (returned as the Celery result)."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    batches: int = 0
    duplicate_batches: int = 0  # already in the job's ledger (a redelivered task)
    status: str = "ok"
    failures: dict[int, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "done": self.done, "skipped": self.skipped, "failed": self.failed, "batches": self.batches,
            "duplicate_batches": self.duplicate_batches, "status": self.status,
            "failures": {str(k): v for k, v in self.failures.items()},
        }


# --- the job ------------------------------------------------------------------------------------------------

def _job_for_task(job_id: int | None) -> IndexJob | None:
    """The job, marked running when this is its first task; None for work outside a job."""
    if job_id is None:
        return None
    IndexJob.objects.filter(pk=job_id, status=IndexJob.Status.QUEUED).update(
        status=IndexJob.Status.RUNNING, started_at=timezone.now()
    )
    return IndexJob.objects.filter(pk=job_id).first()


def _check_model(alias: str, model_key: str, job_id: int | None):
    plugin = get_model(alias)
    if plugin.model_key != model_key:
        message = (
            f"alias {alias!r} is {plugin.model_key!r} on this worker but the task was sent for {model_key!r}; "
            "nothing was written (deploy the same MMSEARCH_MODELS to web and workers, then reindex)"
        )
        fail_job(job_id, message)
        raise ModelKeyMismatch(message)
    return plugin


@dataclass
class BatchCounts:
    """What one write batch accounts for, and the seconds it spent per stage."""

    done: int  # written or skipped
    skipped: int
    failed: int
    decode_s: float = 0.0
    forward_s: float = 0.0


def _commit_batch(
    plugin, alias: str, model_key: str, job_id: int | None, chunk: int, number: int, counts: BatchCounts,
    write: Callable[[], None],
) -> bool:
    """One transaction: check the key, claim the batch in the job's ledger, write, count it on the job (closing
    the job when complete). False when the ledger already had the batch (another delivery of the task wrote it)."""
    started = time.perf_counter()
    with transaction.atomic():
        if plugin.model_key != model_key:  # never write under a key the plugin no longer has
            raise ModelKeyMismatch(f"alias {alias!r} changed model_key during the task; nothing written")
        if job_id is not None:
            try:
                with transaction.atomic():
                    IndexJobBatch.objects.create(
                        job_id=job_id, chunk=chunk, batch=number, done=counts.done, failed=counts.failed
                    )
            except IntegrityError:
                return False
        write()
        if job_id is not None:
            IndexJob.objects.filter(pk=job_id).update(
                done=F("done") + counts.done, skipped=F("skipped") + counts.skipped, failed=F("failed") + counts.failed,
                decode_seconds=F("decode_seconds") + counts.decode_s,
                forward_seconds=F("forward_seconds") + counts.forward_s,
                write_seconds=F("write_seconds") + (time.perf_counter() - started),
            )
            IndexJob.objects.filter(
                pk=job_id, status=IndexJob.Status.RUNNING, total__lte=F("done") + F("failed")
            ).update(status=IndexJob.Status.DONE, finished_at=timezone.now())
    return True


def _recorded_batches(job_id: int | None, chunk: int) -> set[int]:
    if job_id is None:
        return set()
    return set(IndexJobBatch.objects.filter(job_id=job_id, chunk=chunk).values_list("batch", flat=True))


def _write_failures(kind: str, model_key: str, failures: dict[int, str]) -> None:
    for item_id, reason in failures.items():
        EmbeddingFailure.objects.update_or_create(
            kind=kind, item_id=item_id, model_key=model_key, defaults={"reason": reason[:2000]}
        )


def _clear_failures(kind: str, model_key: str, item_ids: Sequence[int]) -> None:
    if item_ids:
        EmbeddingFailure.objects.filter(kind=kind, model_key=model_key, item_id__in=list(item_ids)).delete()


# --- images -------------------------------------------------------------------------------------------------

def decode_image(name: str, size_hint: int | None = None) -> Image.Image:
    """Read and decode a stored image to RGB; raises PermanentItemError naming what is wrong with the file."""
    # The file passed mmsearch.images.check_image when it was stored; failing here means it went missing or
    # was damaged on disk since, which no retry can fix.
    try:
        with default_storage.open(name, "rb") as fh:
            with Image.open(fh) as img:
                if size_hint and img.format == "JPEG":
                    # Let libjpeg decode at a reduced scale when the model wants far fewer pixels.
                    img.draft("RGB", (size_hint, size_hint))
                img.load()
                return img.convert("RGB")
    except FileNotFoundError as exc:
        raise PermanentItemError(f"image file is missing: {name}") from exc
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise PermanentItemError(f"not a readable image: {name} ({exc.__class__.__name__})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise PermanentItemError(f"image is corrupt or truncated: {name} ({exc})") from exc


@dataclass
class _Prepared:
    """One batch ready for the model: decoded images, and the plugin's preprocessed batch when it has one."""

    ids: list[int]
    images: list[Image.Image]
    pixels: Any
    failures: dict[int, str]


def _split_model(plugin) -> tuple[Callable | None, Callable | None]:
    """(preprocess, embed_pixels) when the plugin is a PixelEmbedder (open_clip, HF CLIP), else (None, None).

    `preprocess(images) -> batch` then runs in a pipeline thread and only `embed_pixels(batch)` stays on the
    model's critical path. Other embedders get `embed_images`.
    """
    if isinstance(plugin, PixelEmbedder):
        return plugin.preprocess, plugin.embed_pixels
    return None, None


def _size_hint(plugin) -> int | None:
    size = getattr(plugin, "image_size", None)
    if isinstance(size, (tuple, list)):
        size = max(size)
    return int(size) if isinstance(size, int) and size > 0 else None


def _forward_isolating(forward: Callable[[list], Any], items: list, ids: list[int]) -> tuple[Any, dict[int, str]]:
    """Run the batch; if it fails, run items one by one so one bad input does not sink the batch.

    When every item fails alone too, the model (not the data) is broken: re-raise so the task fails.
    """
    try:
        return forward(items), {}
    except Exception as batch_exc:  # noqa: BLE001 - narrowed below by trying each item alone
        if len(items) == 1:
            raise
        rows, failures, good = [], {}, 0
        for item, item_id in zip(items, ids):
            try:
                rows.append(forward([item])[0])
                good += 1
            except Exception as exc:  # noqa: BLE001 - recorded per item
                rows.append(None)
                failures[item_id] = f"model failed on this image: {exc.__class__.__name__}: {exc}"
        if not good:
            raise batch_exc
        return rows, failures


def _embed_prepared(plugin, embed_pixels: Callable | None, batch: _Prepared) -> tuple[Any, dict[int, str]]:
    if not batch.ids:
        return [], {}
    if batch.pixels is not None:
        try:
            return embed_pixels(batch.pixels), {}
        except Exception:  # noqa: BLE001 - retried image by image below, which names the bad one
            logger.warning("batch forward pass failed; retrying image by image", exc_info=True)
    return _forward_isolating(plugin.embed_images, batch.images, batch.ids)


def _outcome_for_job(job_id: int | None) -> Outcome:
    """A fresh Outcome; its status is not "ok" when the task's job is gone or finished (nothing to do)."""
    out = Outcome()
    job = _job_for_task(job_id)
    if job_id is not None and job is None:
        out.status = "job deleted"
    elif job is not None and job.finished:
        out.status = f"job {job.status}"
    return out


def run_images(
    alias: str, model_key: str, image_ids: Sequence[int], *, job_id: int | None = None, chunk: int = 0,
    force: bool = False,
) -> Outcome:
    """Embed these images with `alias` and store the vectors under model_key (the embed_images task body)."""
    plugin = _check_model(alias, model_key, job_id)
    out = _outcome_for_job(job_id)
    if out.status != "ok":
        return out
    ids = sorted(set(int(i) for i in image_ids))
    files = get_catalog().image_files(ids)
    have = set() if force else vectors.embedded_ids("image", model_key, ids)
    recorded = _recorded_batches(job_id, chunk)
    all_batches = list(chunks(ids, batch_size()))
    batches = [(n, list(b)) for n, b in enumerate(all_batches) if n not in recorded]
    out.duplicate_batches = len(all_batches) - len(batches)
    preprocess, embed_pixels = _split_model(plugin)
    hint = _size_hint(plugin)

    def prepare(decoding: list[tuple[int, Future]]) -> _Prepared:
        batch = _Prepared([], [], None, {})
        for image_id, future in decoding:
            try:
                batch.images.append(future.result())
                batch.ids.append(image_id)
            except PermanentItemError as exc:
                batch.failures[image_id] = str(exc)
        if preprocess is not None and batch.images:
            try:
                batch.pixels = preprocess(batch.images)
            except Exception:  # noqa: BLE001 - embed_images on the forward side isolates the bad image
                logger.warning("batch preprocessing failed; embedding image by image", exc_info=True)
        return batch

    threads = max(1, int(settings.MMSEARCH_DECODE_THREADS))
    # Two stages off the model's path: images decode in parallel; one thread then preprocesses the batch.
    with ThreadPoolExecutor(threads, thread_name_prefix="decode") as pool, \
            ThreadPoolExecutor(1, thread_name_prefix="preprocess") as stage:

        def submit(batch_ids: list[int]) -> Future:
            decoding = [
                (i, pool.submit(decode_image, files[i].name, hint)) for i in batch_ids if i in files and i not in have
            ]
            return stage.submit(prepare, decoding)

        pending = submit(batches[0][1]) if batches else None
        for position, (number, batch_ids) in enumerate(batches):
            t0 = time.perf_counter()
            prepared = pending.result()
            # Time the model waited for decoding (not hidden behind the previous forward pass).
            decode_s = time.perf_counter() - t0
            if position + 1 < len(batches):
                pending = submit(batches[position + 1][1])
            t1 = time.perf_counter()
            vecs, model_failures = _embed_prepared(plugin, embed_pixels, prepared)
            forward_s = time.perf_counter() - t1
            failures = {**prepared.failures, **model_failures}
            written = [
                (image_id, files[image_id].product_id, vec)
                for image_id, vec in zip(prepared.ids, vecs) if image_id not in model_failures
            ]
            skipped = len(batch_ids) - len(written) - len(failures)

            def write() -> None:
                vectors.upsert_image_vectors(model_key, written)
                _write_failures("image", model_key, failures)
                _clear_failures("image", model_key, [w[0] for w in written])

            counts = BatchCounts(len(written) + skipped, skipped, len(failures), decode_s, forward_s)
            if not _commit_batch(plugin, alias, model_key, job_id, chunk, number, counts, write):
                out.duplicate_batches += 1  # another delivery of this task wrote this batch meanwhile
                continue
            out.done += len(written) + skipped
            out.skipped += skipped
            out.failed += len(failures)
            out.failures.update(failures)
            out.batches += 1
    for image_id, reason in out.failures.items():
        logger.warning("image %s not embedded for %s: %s", image_id, model_key, reason)
    if out.batches:
        bootstrap_activation(alias)
    return out


# --- product texts ------------------------------------------------------------------------------------------

def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def run_products(
    alias: str, model_key: str, product_ids: Sequence[int], *, job_id: int | None = None, chunk: int = 0,
    force: bool = False,
) -> Outcome:
    """Embed these products' texts with `alias`, skipping unchanged texts (the embed_products task body)."""
    plugin = _check_model(alias, model_key, job_id)
    out = _outcome_for_job(job_id)
    if out.status != "ok":
        return out
    ids = sorted(set(int(i) for i in product_ids))
    texts = get_catalog().product_texts(ids)
    shas = {pid: text_sha256(t) for pid, t in texts.items()}
    stored = {} if force else vectors.text_hashes(model_key, ids)
    recorded = _recorded_batches(job_id, chunk)
    all_batches = list(chunks(ids, batch_size()))
    out.duplicate_batches = sum(1 for n in range(len(all_batches)) if n in recorded)
    for number, batch_ids in enumerate(all_batches):
        if number in recorded:
            continue
        todo = [pid for pid in batch_ids if pid in texts and stored.get(pid) != shas[pid]]
        t1 = time.perf_counter()
        vecs = plugin.embed_texts([texts[pid] for pid in todo]) if todo else []
        counts = BatchCounts(len(batch_ids), len(batch_ids) - len(todo), 0, 0.0, time.perf_counter() - t1)

        def write() -> None:
            vectors.upsert_product_vectors(model_key, [(pid, shas[pid], vec) for pid, vec in zip(todo, vecs)])
            _clear_failures("product", model_key, todo)

        if not _commit_batch(plugin, alias, model_key, job_id, chunk, number, counts, write):
            out.duplicate_batches += 1
            continue
        out.done += len(batch_ids)
        out.skipped += counts.skipped
        out.batches += 1
    if out.batches:
        bootstrap_activation(alias)
    return out
