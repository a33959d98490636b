"""Settings for bench/pipeline.py and the Celery worker it starts: the project's settings plus the bench model.

BENCH_BACKEND=openclip uses the random-init open_clip folder in BENCH_MODEL_DIR (speed does not depend on the
weights); BENCH_BACKEND=hashing is the model-independent fallback.
"""

import os

from mmsearch.settings import *  # noqa: F401,F403

_batch = int(os.environ.get("MMSEARCH_EMBED_BATCH_SIZE", 32))
if os.environ.get("BENCH_BACKEND", "openclip") == "openclip":
    MMSEARCH_MODELS = {
        "embedder": {
            "BACKEND": "mmsearch.plugins.openclip.OpenClipEmbedder",
            "OPTIONS": {"model": "local-dir:" + os.environ.get("BENCH_MODEL_DIR", ""), "device": "cpu", "batch_size": _batch},
        }
    }
else:
    MMSEARCH_MODELS = {"embedder": {"BACKEND": "mmsearch.plugins.hashing.HashingEmbedder", "OPTIONS": {"dim": 64}}}
MMSEARCH_AUTO_INDEX = False  # the bench queues its own job
