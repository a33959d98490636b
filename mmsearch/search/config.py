"""The search engine's settings: DEFAULTS overlaid with settings.MMSEARCH_SEARCH, and their system check."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from mmsearch.search import photo

DEFAULTS: dict[str, Any] = {
    # Reciprocal rank fusion: score = sum(weight / (RRF_K + rank)) over the signals that found the product.
    "RRF_K": 60,
    # lexical_partial: products with only some of the query's words (weak evidence, e.g. a synonym missed).
    "WEIGHTS": {"lexical": 1.0, "lexical_partial": 0.3, "trigram": 0.3, "text_vector": 1.0, "image_vector": 0.5},
    # Candidates each signal contributes before fusion (at least page * limit).
    "CANDIDATES": 200,
    "MAX_LIMIT": 100,
    "DEFAULT_LIMIT": 24,
    "MAX_PAGE": 100,
    # page * limit may not go past this: each signal fetches that many candidates.
    "MAX_RESULTS": 1000,
    "MAX_QUERY_CHARS": 200,
    # HNSW search breadth (pgvector hnsw.ef_search, at most 1000) and the iterative-scan budget for filtered
    # searches (hnsw.max_scan_tuples); beyond it the exact search over the filtered rows takes over.
    "EF_SEARCH": 100,
    "MAX_SCAN_TUPLES": 20000,
    # Images fetched per wanted product from the image index, so products with several images still fill k.
    "IMAGE_OVERFETCH": 3,
    # pg_trgm.word_similarity_threshold for the typo signal.
    "TRIGRAM_THRESHOLD": 0.5,
    "QUERY_CACHE_SECONDS": 3600,
    "PRICE_BUCKETS": 5,
    # Search by photo embeds the photo as the mean of these views: centre crops keeping each scale of its
    # width and height, each also mirrored (mmsearch.search.photo). (1.0,) and False = the whole photo only.
    "PHOTO_QUERY_SCALES": photo.DEFAULT_SCALES,
    "PHOTO_QUERY_MIRROR": photo.DEFAULT_MIRROR,
}


def config() -> dict[str, Any]:
    """DEFAULTS overlaid with settings.MMSEARCH_SEARCH (WEIGHTS merged key by key)."""
    user = getattr(settings, "MMSEARCH_SEARCH", {}) or {}
    conf = {**DEFAULTS, **user}
    conf["WEIGHTS"] = {**DEFAULTS["WEIGHTS"], **(user.get("WEIGHTS") or {})}
    return conf


def check_settings(app_configs=None, **kwargs) -> list:
    """Django system check (mmsearch.E008): the photo query views in settings.MMSEARCH_SEARCH."""
    from django.core import checks

    try:
        photo.PhotoViews.from_config(config())
    except ValueError as exc:
        return [checks.Error(f"MMSEARCH_SEARCH: {exc}", hint="e.g. PHOTO_QUERY_SCALES = (1.0, 0.7, 0.5)",
                             id="mmsearch.E008")]
    return []
