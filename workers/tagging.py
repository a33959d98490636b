"""The tag_products task body: suggest tags from the merchant's vocabulary for a chunk of products.

One trunk pass per image serves search and tagging: the tagger scores the image vectors the embed pipeline
already stored for its embedder's model_key, and embeds only images that have none yet (a calibration fitted
with flip adds one pass over each image's mirror). A product with several
images is scored from all of them (the mean of their per-group probabilities). Batches are written with the
same ledger as embedding (a redelivered task writes nothing twice), and suggestions are stored with the
tagger's per-group key (tagger + vocabulary version), so a rerun or a rejected suggestion is never duplicated.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
from django.conf import settings

from mmsearch.adapter import TagRow, get_catalog
from mmsearch.indexing import batch_size
from mmsearch.plugins import get_model
from mmsearch.plugins.runtime import batches, unit_rows
from mmsearch.search import vectors
from workers.pipeline import (
    BatchCounts, Outcome, PermanentItemError, _check_model, _commit_batch, _outcome_for_job, _recorded_batches,
    decode_image,
)

logger = logging.getLogger(__name__)


def image_vectors(embedder: str, model_key: str, files) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    """{image_id: unit vector} of these images by the embedder alias `embedder` (whose model_key is
    `model_key`): the vectors the embed pipeline stored first, the rest embedded now; and {image_id: reason}
    for unreadable ones. Shared by the tag and caption tasks."""
    got = vectors.image_vectors(model_key, [f.image_id for f in files])
    missing = [f for f in files if f.image_id not in got]
    failures: dict[int, str] = {}
    if missing:
        decoded = []
        for f in missing:
            try:
                decoded.append((f.image_id, decode_image(f.name)))
            except PermanentItemError as exc:
                failures[f.image_id] = str(exc)
        if decoded:
            rows = unit_rows(get_model(embedder).embed_images([im for _, im in decoded]))
            got.update({image_id: row for (image_id, _), row in zip(decoded, rows)})
    return got, failures


def flip_vectors(tagger, files, vecs: dict[int, np.ndarray]) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    """The vectors a tagger whose calibration scores flip-averaged images needs (ZeroShotTagger.image_vectors):
    every image decoded and its mirror embedded, averaged with the vector at hand; and {image_id: reason} for
    images that can no longer be read."""
    if not getattr(tagger, "flip", False):
        return vecs, {}
    ids, decoded, failures = [], [], {}
    for f in {f.image_id: f for f in files if f.image_id in vecs}.values():
        try:
            decoded.append(decode_image(f.name))
            ids.append(f.image_id)
        except PermanentItemError as exc:
            failures[f.image_id] = str(exc)
    if not ids:
        return {}, failures
    rows = tagger.image_vectors(decoded, np.stack([vecs[i] for i in ids]))
    return dict(zip(ids, rows)), failures


def suggestions(tagger, vocabulary, product_images: dict[int, list], vecs: dict[int, np.ndarray],
                auto_accept: bool = False) -> list[TagRow]:
    """The top tags of every group for each product, from the mean of its images' probabilities; with
    auto_accept, those at or above their group's calibrated threshold are accepted."""
    rows: list[TagRow] = []
    owners = [(pid, f.image_id) for pid, files in product_images.items() for f in files if f.image_id in vecs]
    if not owners:
        return rows
    matrix = np.stack([vecs[image_id] for _, image_id in owners])
    for group in vocabulary:
        probs, _calibrated = tagger.score_vectors(matrix, group)
        threshold = tagger.threshold(group) if auto_accept else None
        key = tagger.group_key(group)
        by_product: dict[int, list[int]] = {}
        for row, (pid, _) in enumerate(owners):
            by_product.setdefault(pid, []).append(row)
        for pid, product_rows in by_product.items():
            mean = probs[product_rows].mean(axis=0)
            for j in np.argsort(-mean)[: tagger.top_k]:
                score = float(mean[j])
                rows.append(TagRow(pid, group.slug, group.tags[j].slug, round(score, 6), key,
                                   accept=threshold is not None and score >= threshold))
    return rows


def run_tags(alias: str, model_key: str, product_ids: Sequence[int], *, job_id: int | None = None, chunk: int = 0,
             force: bool = False) -> Outcome:
    """Suggest tags for these products with the tagger `alias` (the tag_products task body)."""
    tagger = _check_model(alias, model_key, job_id)
    out = _outcome_for_job(job_id)
    if out.status != "ok":
        return out
    catalog = get_catalog()
    vocabulary = catalog.vocabulary()
    ids = sorted(set(int(i) for i in product_ids))
    recorded = _recorded_batches(job_id, chunk)
    for number, batch_ids in enumerate(batches(ids, batch_size())):
        if number in recorded:
            out.duplicate_batches += 1
            continue
        t0 = time.perf_counter()
        images = catalog.product_images(batch_ids)
        files = [f for files in images.values() for f in files]
        vecs, failures = image_vectors(tagger.embedder, tagger.embedder_model_key, files)
        vecs, unreadable = flip_vectors(tagger, files, vecs)
        failures.update(unreadable)
        rows = suggestions(tagger, vocabulary, images, vecs, auto_accept=settings.MMSEARCH_TAG_AUTO_ACCEPT)
        tagged = {r.product_id for r in rows}
        failed = [pid for pid in batch_ids if pid in images and pid not in tagged]  # every image unreadable
        skipped = len(batch_ids) - len(tagged) - len(failed)  # no images, or deleted meanwhile
        counts = BatchCounts(len(batch_ids) - len(failed), skipped, len(failed), 0.0, time.perf_counter() - t0)
        if not _commit_batch(tagger, alias, model_key, job_id, chunk, number, counts,
                             lambda rows=rows: catalog.store_suggestions(rows)):
            out.duplicate_batches += 1
            continue
        out.done += counts.done
        out.skipped += skipped
        out.failed += len(failed)
        out.failures.update({pid: "; ".join(failures.values()) or "no readable image" for pid in failed})
        out.batches += 1
    return out
