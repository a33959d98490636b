from django.apps import AppConfig


class WorkersConfig(AppConfig):
    """The Celery tasks (workers/tasks.py, found by the Celery app's autodiscovery) and their batch pipeline."""

    name = "workers"
    verbose_name = "Embedding workers"
