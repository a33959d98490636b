"""The caption_products task body: caption the main image of each product in a chunk.

One trunk pass per image for the caption: the captioner runs its trunk and decoder on the decoded image. The
caption's score is the scoring embedder's (settings.MMSEARCH_CAPTION_SCORER) image-text similarity, read off the
image vector the embed pipeline already stored for that embedder (embedded now only when there is none), so
scoring adds one text forward per caption and no second image pass. Batches are written with the embedding
ledger (a redelivered task writes nothing twice), and captions are stored per (image, model_key): a rerun, or
a caption a person rejected or edited, is never duplicated or overwritten.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from django.conf import settings

from mmsearch.adapter import CaptionRow, get_catalog
from mmsearch.indexing import batch_size
from mmsearch.plugins import get_model
from mmsearch.plugins.runtime import batches, unit_rows
from workers.pipeline import (
    BatchCounts, Outcome, PermanentItemError, _check_model, _commit_batch, _outcome_for_job, _recorded_batches,
    decode_image,
)
from workers.tagging import image_vectors


def caption_scores(scorer: str, image_ids: Sequence[int], texts: Sequence[str], files) -> list[float | None]:
    """Cosine similarity of each caption and its image under the embedder alias `scorer` (None where the image
    has no vector)."""
    embedder = get_model(scorer)
    vecs, _ = image_vectors(scorer, embedder.model_key, files)
    text_vecs = unit_rows(embedder.embed_texts(list(texts))) if texts else np.zeros((0, 0), np.float32)
    return [round(float(unit_rows(vecs[i]) @ t), 6) if i in vecs else None for i, t in zip(image_ids, text_vecs)]


def run_captions(alias: str, model_key: str, product_ids: Sequence[int], *, job_id: int | None = None,
                 chunk: int = 0, force: bool = False) -> Outcome:
    """Caption these products' main images with the captioner `alias` (the caption_products task body)."""
    captioner = _check_model(alias, model_key, job_id)
    out = _outcome_for_job(job_id)
    if out.status != "ok":
        return out
    catalog = get_catalog()
    scorer = settings.MMSEARCH_CAPTION_SCORER
    ids = sorted(set(int(i) for i in product_ids))
    recorded = _recorded_batches(job_id, chunk)
    for number, batch_ids in enumerate(batches(ids, batch_size())):
        if number in recorded:
            out.duplicate_batches += 1
            continue
        t0 = time.perf_counter()
        mains = [files[0] for files in catalog.product_images(batch_ids).values()]
        decoded, failures = [], {}
        for f in mains:
            try:
                decoded.append((f, decode_image(f.name)))
            except PermanentItemError as exc:
                failures[f.product_id] = str(exc)
        t1 = time.perf_counter()
        captions = captioner.caption([image for _, image in decoded]) if decoded else []
        files = [f for f, _ in decoded]
        scores = caption_scores(scorer, [f.image_id for f in files], [c.text for c in captions], files)
        rows = [CaptionRow(f.product_id, f.image_id, c.text, model_key, s) for f, c, s in zip(files, captions, scores)]
        skipped = len(batch_ids) - len(rows) - len(failures)  # no image, or deleted meanwhile
        counts = BatchCounts(len(batch_ids) - len(failures), skipped, len(failures), t1 - t0, time.perf_counter() - t1)
        if not _commit_batch(captioner, alias, model_key, job_id, chunk, number, counts,
                             lambda rows=rows: catalog.store_captions(rows)):
            out.duplicate_batches += 1
            continue
        out.done += counts.done
        out.skipped += skipped
        out.failed += len(failures)
        out.failures.update(failures)
        out.batches += 1
    return out
