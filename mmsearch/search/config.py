"""The search engine's settings: DEFAULTS, overlaid with settings.MMSEARCH_SEARCH, overlaid with the fitted
weights file (WEIGHTS_FILE, written by `manage.py fit_search_weights`); and their system check."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from django.conf import settings

from mmsearch.search import photo

DEFAULTS: dict[str, Any] = {
    # Reciprocal rank fusion: score = sum(weight / (RRF_K + rank)) over the signals that found the product.
    "RRF_K": 60,
    # lexical_partial: products with only some of the query's words (weak evidence, e.g. a synonym missed).
    # understood: the products that have every value the query's words name (query understanding), ranked by
    # their text vector's similarity to the query.
    "WEIGHTS": {"lexical": 1.0, "lexical_partial": 0.3, "trigram": 0.3, "text_vector": 1.0, "image_vector": 0.5,
                "understood": 1.0},
    # Query understanding's boosts: a fused candidate with a value the query names gains BOOSTS[filter] x the
    # span's confidence (filter = "attr.colour", "category", "tag"; "default" for the others). On the RRF scale:
    # a first rank in one signal of weight 1 is 1 / (RRF_K + 1) = 0.016.
    "BOOSTS": {"default": 0.01},
    "UNDERSTAND": {
        "ENABLED": True,
        # Attribute values are re-read after this many seconds; synonyms, tags and categories at their next edit.
        "VOCABULARY_TTL": 600,
        # The embedding stage: cosine similarity to a phrase, and its lead over another value of that filter.
        "EMBED_THRESHOLD": 0.6,
        "EMBED_MARGIN": 0.03,
        # A modifier + an exactly matched word ("tee shirts", "midnight blue") is read as another value when the
        # pair is this much closer to that value than to the word's own.
        "COMPOUND_MARGIN": 0.05,
        "EXACT_CONFIDENCE": {"merchant": 1.0, "name": 1.0, "synonym": 0.95},
        # The typo stage also corrects a word that at most TYPO_RARE products contain (a catalog's own
        # misspelling) into a value that at least TYPO_RARE_RATIO times as many products have.
        "TYPO_RARE": 2,
        "TYPO_RARE_RATIO": 20,
        # The lexicon stage (WordNet, mmsearch.search.lexicon): a word maps to the values whose names it is a
        # kind of, at most LEXICON_DEPTH hyponym steps below them; among those, the value whose phrase is
        # closest to the word's embedding after LEXICON_STEP x the WordNet cost, if that similarity reaches
        # LEXICON_MIN_SIMILARITY.
        "LEXICON": True,
        "LEXICON_DEPTH": 3,
        "LEXICON_STEP": 0.2,
        "LEXICON_MIN_SIMILARITY": 0.0,
        # confidence = sigmoid(a * relative edit distance + b) for typos; sigmoid(a * sim + b * margin + c) for
        # the embedding stage; sigmoid(a * sim + b * WordNet cost + c) for the lexicon (fitted by
        # fit_search_weights on a labelled set's spans).
        "CALIBRATION": {"typo": [-6.0, 3.0], "embedding": [10.0, 5.0, -6.0], "lexicon": [6.0, -0.5, -1.0]},
        # The understood candidates are ranked by an exact vector search when they are at most this many, else
        # through the HNSW index with the filter.
        "EXACT_LIMIT": 3000,
    },
    # The fitted weights (WEIGHTS, BOOSTS, UNDERSTAND), over DEFAULTS and settings; None: no file.
    "WEIGHTS_FILE": str(Path(__file__).with_name("fitted.json")),
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
    # Vector plans by the filter's size (mmsearch.search.signals.vector_candidates): a filter passing at most
    # EXACT_SCOPE_LIMIT products is searched exactly over their vectors; one passing at least POST_FILTER_SHARE
    # of the catalog reads the bare index scan and tests its rows; in between, the HNSW walk with the filter.
    "EXACT_SCOPE_LIMIT": 10000,
    "POST_FILTER_SHARE": 0.3,
    # A request's independent queries (the signals, the facets) run side by side on this many threads of the
    # web process, each with a database connection of its own that it keeps; 0: one after another on the
    # request's connection. Read when the first search of a process starts.
    "SQL_THREADS": 4,
    # A candidate found only by a vector signal counts as a match (in `total`, the facets and the pages) when
    # its cosine similarity to the query reaches this: text_vector (text query to product texts), image_vector
    # (text query to images), photo (a photo or a product's images to images). Model-specific: see
    # docs/search.md for how the defaults were chosen (MiniLM text vectors).
    "SIMILARITY_FLOOR": {"text_vector": 0.35, "image_vector": -1.0, "photo": -1.0},
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


MERGED = ("WEIGHTS", "BOOSTS", "UNDERSTAND", "SIMILARITY_FLOOR")
_FILE_CACHE: dict[str, tuple[float, dict]] = {}
_FILE_LOCK = threading.Lock()


def fitted(path: str | None) -> dict[str, Any]:
    """The WEIGHTS / BOOSTS / UNDERSTAND blocks of a fitted weights file ({} when there is none); re-read when
    the file changes."""
    if not path:
        return {}
    try:
        mtime = Path(path).stat().st_mtime
    except OSError:
        return {}
    with _FILE_LOCK:
        cached = _FILE_CACHE.get(path)
        if cached and cached[0] == mtime:
            return cached[1]
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    blocks = {k: data[k] for k in MERGED if isinstance(data.get(k), dict)}
    with _FILE_LOCK:
        _FILE_CACHE[path] = (mtime, blocks)
    return blocks


def _merge(*layers: dict) -> dict[str, Any]:
    conf: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if key in MERGED and isinstance(value, dict):
                base = dict(conf.get(key) or {})
                for sub, subvalue in value.items():
                    if isinstance(subvalue, dict) and isinstance(base.get(sub), dict):
                        base[sub] = {**base[sub], **subvalue}
                    else:
                        base[sub] = subvalue
                conf[key] = base
            else:
                conf[key] = value
    return conf


def config() -> dict[str, Any]:
    """DEFAULTS, then settings.MMSEARCH_SEARCH, then the fitted weights file (WEIGHTS_FILE); WEIGHTS, BOOSTS and
    UNDERSTAND are merged key by key (UNDERSTAND's dicts too). The fitted values win over settings for the keys
    the file holds: weights are fitted, not typed in; settings with WEIGHTS_FILE = None use their own."""
    user = getattr(settings, "MMSEARCH_SEARCH", {}) or {}
    path = user.get("WEIGHTS_FILE", DEFAULTS["WEIGHTS_FILE"])
    return _merge(DEFAULTS, user, fitted(path))


def check_settings(app_configs=None, **kwargs) -> list:
    """Django system check (mmsearch.E008): the photo query views in settings.MMSEARCH_SEARCH."""
    from django.core import checks

    try:
        photo.PhotoViews.from_config(config())
    except ValueError as exc:
        return [checks.Error(f"MMSEARCH_SEARCH: {exc}", hint="e.g. PHOTO_QUERY_SCALES = (1.0, 0.7, 0.5)",
                             id="mmsearch.E008")]
    return []
