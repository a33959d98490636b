from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from catalog.models import Product


def home(request: HttpRequest) -> HttpResponse:
    """Landing page with links to the API, its docs and the admin."""
    return render(request, "mmsearch/home.html", {"product_count": Product.objects.count()})


def healthz(request: HttpRequest) -> JsonResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        row = cursor.fetchone()
    return JsonResponse({"ok": True, "pgvector": row[0] if row else None})
