"""mmsearch: a plugin-based multimodal search engine for e-commerce catalogs."""
from mmsearch.celery import app as celery_app

__all__ = ["celery_app"]
