"""One error shape for the API: {"detail": "...", "errors": {...}} with a 4xx status."""

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import ProtectedError
from rest_framework import status
from rest_framework.response import Response
from rest_framework import exceptions
from rest_framework.views import exception_handler as drf_exception_handler


def _first_message(data) -> str:
    if isinstance(data, dict):
        for key, value in data.items():
            msg = _first_message(value)
            if msg:
                return msg if key in ("detail", "non_field_errors") else f"{key}: {msg}"
    elif isinstance(data, list) and data:
        return _first_message(data[0])
    elif data:
        return str(data)
    return ""


def exception_handler(exc, context):
    if isinstance(exc, ProtectedError):
        # e.g. deleting a category that still has products or subcategories
        used_by = sorted({str(obj) for obj in list(exc.protected_objects)[:5]})
        return Response(
            {"detail": f"cannot delete: still used by {', '.join(used_by)}"
                       f"{' and more' if len(exc.protected_objects) > 5 else ''}"},
            status=status.HTTP_409_CONFLICT,
        )
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(exc.message_dict if hasattr(exc, "error_dict") else exc.messages)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    data = response.data
    if isinstance(data, dict) and set(data) == {"detail"}:
        return response
    response.data = {"detail": _first_message(data) or "invalid request", "errors": data}
    return response
