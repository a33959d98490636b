"""WSGI entry point (gunicorn mmsearch.wsgi)."""
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mmsearch.settings")
application = get_wsgi_application()
