"""Project-level endpoints: health check and the throttled token endpoint."""

from django.db import DatabaseError, connection
from django.http import HttpRequest, JsonResponse
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.settings import api_settings


def healthz(request: HttpRequest) -> JsonResponse:
    """200 while the database answers (search needs nothing else), else 503 with the reason."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            row = cursor.fetchone()
    except DatabaseError as exc:
        return JsonResponse({"ok": False, "database": f"{exc.__class__.__name__}: {exc}".strip()}, status=503)
    return JsonResponse({"ok": True, "pgvector": row[0] if row else None})


class ThrottledAuthToken(ObtainAuthToken):
    """POST username + password -> {"token": ...}, at most MMSEARCH_THROTTLE_TOKEN attempts per client."""

    throttle_classes = api_settings.DEFAULT_THROTTLE_CLASSES  # DRF's own view turns throttling off
    throttle_scope = "token"
