"""Django settings for mmsearch.

Everything a deployment changes comes from the environment (12-factor): DATABASE_URL, REDIS_URL,
SECRET_KEY, DEBUG, ALLOWED_HOSTS, MEDIA_ROOT. Unset DATABASE_URL / REDIS_URL mean the embedded services
(`manage.py services start`), which is what the demo and the tests use.

Safe by default: DEBUG is off unless DEBUG=1 (set by `make demo` and by the test settings), and with DEBUG off
start-up refuses a missing or development SECRET_KEY and turns on HTTPS-only cookies, HSTS and the SSL redirect
(`manage.py check --deploy` passes with the environment of deploy/README.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url

from django.core.exceptions import ImproperlyConfigured

from mmsearch import services

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


DEBUG = env_bool("DEBUG", False)
_DEV_SECRET_KEY = "dev-only-insecure-key-change-me"
SECRET_KEY = os.environ.get("SECRET_KEY", _DEV_SECRET_KEY if DEBUG else "")
if not DEBUG and (SECRET_KEY == _DEV_SECRET_KEY or len(SECRET_KEY) < 50 or len(set(SECRET_KEY)) < 5):
    raise ImproperlyConfigured(
        "SECRET_KEY must be set to a long random string (50+ characters) when DEBUG is off, e.g. "
        "SECRET_KEY=$(python3 -c 'import secrets; print(secrets.token_urlsafe(64))'); "
        "for development set DEBUG=1 (make demo and make test do)"
    )
ALLOWED_HOSTS = [h for h in os.environ.get("ALLOWED_HOSTS", "127.0.0.1,localhost,testserver").split(",") if h]
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o]

# HTTPS: on by default in production. Behind a proxy that terminates TLS, set SECURE_PROXY_SSL_HEADER=1 so the
# X-Forwarded-Proto header it sets tells Django the request was HTTPS.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("SECURE_PROXY_SSL_HEADER", False) else None
SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", 0 if DEBUG else 31_536_000))
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("SECURE_COOKIES", not DEBUG)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's files served from here, not from a CDN
    "mmsearch",
    "mmsearch.web",
    "catalog",
    "qa",
    "workers",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "mmsearch.urls"
WSGI_APPLICATION = "mmsearch.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "mmsearch" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

if os.environ.get("DATABASE_URL"):
    # Persistent connections, checked before reuse: a restarted or failed-over server costs one reconnect.
    DATABASES = {"default": dj_database_url.parse(os.environ["DATABASE_URL"], conn_max_age=60, conn_health_checks=True)}
else:
    DATABASES = {"default": services.database_settings()}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", BASE_DIR / "var" / "static"))
MEDIA_URL = "/media/"
MEDIA_ROOT = Path(os.environ.get("MEDIA_ROOT", BASE_DIR / "var" / "media"))
# Shoppers' query photos: a storage of their own outside MEDIA_ROOT, never served, deleted after
# MMSEARCH_QUERY_PHOTO_TTL seconds (mmsearch/web/photos.py).
MMSEARCH_QUERY_PHOTO_ROOT = Path(os.environ.get("MMSEARCH_QUERY_PHOTO_ROOT", BASE_DIR / "var" / "query-photos"))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    "query_photos": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": MMSEARCH_QUERY_PHOTO_ROOT, "base_url": None},
    },
}
SERVE_MEDIA = env_bool("SERVE_MEDIA", DEBUG)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Token first, so an anonymous write gets 401 with "WWW-Authenticate: Token" (non-staff get 403).
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["catalog.api.permissions.IsStaffOrReadOnly"],
    "DEFAULT_PAGINATION_CLASS": "catalog.api.pagination.Pagination",
    "PAGE_SIZE": 24,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "EXCEPTION_HANDLER": "catalog.api.errors.exception_handler",
    # Per-client request rates of the public endpoints that cost model time (views set throttle_scope);
    # MMSEARCH_THROTTLE=0 turns them off (load tests). Counts live in the Django cache.
    "DEFAULT_THROTTLE_CLASSES": ["rest_framework.throttling.ScopedRateThrottle"] if env_bool("MMSEARCH_THROTTLE", True) else [],
    "DEFAULT_THROTTLE_RATES": {
        "search": os.environ.get("MMSEARCH_THROTTLE_SEARCH", "600/min"),
        "photo_search": os.environ.get("MMSEARCH_THROTTLE_PHOTO", "60/min"),
        "similar": os.environ.get("MMSEARCH_THROTTLE_SIMILAR", "600/min"),
        "ask": os.environ.get("MMSEARCH_THROTTLE_ASK", "60/min"),
        "token": os.environ.get("MMSEARCH_THROTTLE_TOKEN", "10/min"),
    },
}

SPECTACULAR_SETTINGS = {
    "TITLE": "mmsearch API",
    "DESCRIPTION": "Multimodal product search: catalog, search, question answering.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # A person's decision on a suggestion (product tags, captions: bulk and PATCH), one named choice set.
    "ENUM_NAME_OVERRIDES": {"ReviewDecisionEnum": [("accepted", "accepted"), ("rejected", "rejected")]},
}

# --- Celery (Redis broker) ----------------------------------------------------------------------------------
REDIS_URL = os.environ.get("REDIS_URL") or services.redis_url()
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = REDIS_URL
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 600}
# Celery beat (`celery -A mmsearch beat`, or a worker started with -B): catalog changes made while the broker
# was down wait in the index outbox; this queues them once it is back.
CELERY_BEAT_SCHEDULE = {
    "drain-index-outbox": {"task": "workers.tasks.drain_index_outbox", "schedule": 60.0},
}
CELERY_BEAT_SCHEDULE_FILENAME = str(services.VAR_DIR / "celerybeat-schedule")

# --- catalog limits -----------------------------------------------------------------------------------------
MMSEARCH_UPLOAD_MAX_BYTES = int(os.environ.get("MMSEARCH_UPLOAD_MAX_BYTES", 10 * 1024 * 1024))
MMSEARCH_UPLOAD_MAX_PIXELS = int(os.environ.get("MMSEARCH_UPLOAD_MAX_PIXELS", 40_000_000))
MMSEARCH_IMAGE_FORMATS = ("JPEG", "PNG", "WEBP")
# Text search configuration for the product full-text vector (stemming handles plurals).
MMSEARCH_FTS_CONFIG = os.environ.get("MMSEARCH_FTS_CONFIG", "english")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "WARNING")},
}

# --- engine -------------------------------------------------------------------------------------------------
# What the engine asks of the catalog (filtering, result cards, facets, texts and files to embed): the one
# boundary between them (mmsearch/adapter.py; docs/architecture.md).
MMSEARCH_CATALOG_ADAPTER = "catalog.adapter.CatalogAdapter"

# Model plugins by role alias: {"BACKEND": dotted path, "OPTIONS": {...}} (see README "Plugins").
# The embedder is the trained open_clip model folder (`manage.py train_embedder --out ...`); only while that
# folder does not exist, the HashingEmbedder stands in, flagged by a WARNING (system check mmsearch.W001).
MMSEARCH_EMBEDDER_PATH = Path(os.environ.get("MMSEARCH_EMBEDDER_PATH") or BASE_DIR / "models" / "embedder")
if MMSEARCH_EMBEDDER_PATH.is_dir():
    _EMBEDDER = {
        "BACKEND": "mmsearch.plugins.openclip.OpenClipEmbedder",
        "OPTIONS": {"pretrained": f"local-dir:{MMSEARCH_EMBEDDER_PATH}", "device": "auto"},
    }
else:
    _EMBEDDER = {
        "BACKEND": "mmsearch.plugins.hashing.HashingEmbedder",
        "OPTIONS": {"dim": 64},
        "WARNING": (
            f"no trained embedder at {MMSEARCH_EMBEDDER_PATH}, so the HashingEmbedder (colour histograms and "
            "hashed words, not a learned model) is used; train one with `manage.py train_embedder` or set "
            "MMSEARCH_EMBEDDER_PATH to an open_clip model folder"
        ),
    }
# The captioner: the folder `manage.py train_captioner` writes (`make train` puts it at models/captioner); the
# `captioner` alias exists only when that folder does (caption jobs then say what to train instead).
MMSEARCH_CAPTIONER_PATH = Path(os.environ.get("MMSEARCH_CAPTIONER_PATH") or BASE_DIR / "models" / "captioner")
MMSEARCH_MODELS = {
    "embedder": _EMBEDDER,
    "text_embedder": {"BACKEND": "mmsearch.plugins.sentence.SentenceEmbedder", "OPTIONS": {}},
    # Zero-shot tags over the merchant's vocabulary with whatever `embedder` is; its per-group calibration and
    # adapters (tagger.json beside the embedder's folder, fitted by `make train`) load when present.
    "tagger": {"BACKEND": "mmsearch.plugins.zeroshot.ZeroShotTagger", "OPTIONS": {"embedder": "embedder"}},
}
if MMSEARCH_CAPTIONER_PATH.is_dir():
    MMSEARCH_MODELS["captioner"] = {
        "BACKEND": "mmsearch.plugins.captioner.TrunkCaptioner",
        "OPTIONS": {"path": str(MMSEARCH_CAPTIONER_PATH), "beam_size": 3, "device": "auto"},
    }
# Product questions (qa/, docs/qa.md): the trained answerer folder (`manage.py train_answerer`, `make train`) when it
# exists; without one the product page's question box is off and the ask API answers 503.
MMSEARCH_ANSWERER_PATH = Path(os.environ.get("MMSEARCH_ANSWERER_PATH") or BASE_DIR / "models" / "answerer")
if MMSEARCH_ANSWERER_PATH.is_dir():
    MMSEARCH_MODELS["answerer"] = {"BACKEND": "mmsearch.plugins.answerer.TrunkAnswerer",
                                   "OPTIONS": {"path": str(MMSEARCH_ANSWERER_PATH), "device": "auto"}}
MMSEARCH_QA_MAX_CHARS = int(os.environ.get("MMSEARCH_QA_MAX_CHARS", 300))  # longest question accepted

# --- embedding pipeline (workers/) --------------------------------------------------------------------------
# Named queues: a worker host consumes the ones it serves (`celery -A mmsearch worker -Q embed`).
CELERY_TASK_ROUTES = {
    "workers.tasks.embed_images": {"queue": "embed"},
    "workers.tasks.embed_products": {"queue": "embed"},
    "workers.tasks.drain_index_outbox": {"queue": "embed"},  # the outbox holds embedding work
    "workers.tasks.tag_products": {"queue": "tag"},
    "workers.tasks.caption_products": {"queue": "caption"},
}
# Items per forward pass, and forward passes per task (a task decodes batch n+1 while batch n runs).
MMSEARCH_EMBED_BATCH_SIZE = int(os.environ.get("MMSEARCH_EMBED_BATCH_SIZE", 32))
MMSEARCH_EMBED_BATCHES_PER_TASK = int(os.environ.get("MMSEARCH_EMBED_BATCHES_PER_TASK", 4))
MMSEARCH_DECODE_THREADS = int(os.environ.get("MMSEARCH_DECODE_THREADS", 2))
# Enqueue embedding work when the catalog changes (products/images saved or imported).
MMSEARCH_AUTO_INDEX = env_bool("MMSEARCH_AUTO_INDEX", True)
# Aliases kept current on change; None = every configured embedder / text_embedder alias.
MMSEARCH_INDEX_ALIASES = None

# --- tagging ------------------------------------------------------------------------------------------------
# Tag jobs accept a suggestion outright when its calibrated confidence reaches its group's auto-accept threshold
# (chosen for MMSEARCH_MODELS["tagger"]'s target precision, 0.95 by default); otherwise it waits for review.
MMSEARCH_TAG_AUTO_ACCEPT = env_bool("MMSEARCH_TAG_AUTO_ACCEPT", False)

# --- captions -----------------------------------------------------------------------------------------------
# A caption's score is this embedder alias's image-text similarity of the caption and its image (the stored
# image vector when there is one): the review list sorts by it.
MMSEARCH_CAPTION_SCORER = os.environ.get("MMSEARCH_CAPTION_SCORER", "embedder")

# --- search (mmsearch.search.engine.DEFAULTS lists every key) -------------------------------------------------
# Weighted reciprocal rank fusion of the lexical, trigram and vector signals; RRF_K is the fusion constant.
MMSEARCH_SEARCH = {
    "RRF_K": 60,
    "WEIGHTS": {"lexical": 1.0, "lexical_partial": 0.3, "trigram": 0.3, "text_vector": 1.0, "image_vector": 0.5},
    "MAX_LIMIT": 100,
    "MAX_QUERY_CHARS": 200,
}
# The search API's `debug` block (per-signal timings, candidate counts) goes to staff tokens only, or to
# everyone when this is on (development).
MMSEARCH_SEARCH_DEBUG = env_bool("MMSEARCH_SEARCH_DEBUG", DEBUG)
# The query-vector cache (and DRF's throttle counters): in each process's memory, where a hit costs microseconds.
# MMSEARCH_CACHE_ENTRIES (20,000: two models' vectors of 10,000 distinct queries, about 30 MB) sizes it; Django's
# default of 300 misses nearly every time. Deployments that want one cache for all web workers set CACHES to
# Redis on a database of its own (docs/search.md, "Query-vector cache").
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
        "OPTIONS": {"MAX_ENTRIES": int(os.environ.get("MMSEARCH_CACHE_ENTRIES", "20000"))},
    }
}
