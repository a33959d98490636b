"""The Celery application: Redis broker, tasks discovered in the installed apps (workers/tasks.py)."""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mmsearch.settings")

app = Celery("mmsearch")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
