"""Settings for the Celery worker subprocesses the pipeline tests start (DJANGO_SETTINGS_MODULE points here).

The database and Redis database come from the environment as usual (MMSEARCH_DB_NAME = the test database).
"""

import os

from mmsearch.settings import *  # noqa: F401,F403
from mmsearch.settings import CELERY_BROKER_TRANSPORT_OPTIONS
from tests.workers.config import TEST_MODELS, captioner_models

# The caption tests train a tiny captioner and name its folder here.
MMSEARCH_MODELS = captioner_models(os.environ["TEST_CAPTIONER_PATH"]) if os.environ.get("TEST_CAPTIONER_PATH") else TEST_MODELS
# A killed worker's unacked task comes back after the visibility timeout; the kill test shortens it and
# sweeps every second so the restarted worker picks the task up within seconds.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    **CELERY_BROKER_TRANSPORT_OPTIONS,
    "visibility_timeout": float(os.environ.get("TEST_VISIBILITY_TIMEOUT", 600)),
    "unacked_restore_interval": 1,
    "unacked_restore_throttle": 1,
}
