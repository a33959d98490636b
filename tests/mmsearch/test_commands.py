"""The services and demo management commands."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

from catalog.models import Product
from mmsearch import services


def test_services_status_names_both_services():
    out = io.StringIO()
    call_command("services", "status", stdout=out)
    want_pg, want_redis = services.embedded_wanted()
    if want_pg:
        assert f"postgres: running (pid {services.postgres_status().pid})" in out.getvalue()
    if want_redis:
        assert "redis: running" in out.getvalue()


def test_services_start_is_idempotent():
    before = services.postgres_status().pid, services.redis_status().pid
    call_command("services", "start", stdout=io.StringIO())
    assert (services.postgres_status().pid, services.redis_status().pid) == before


@pytest.mark.django_db
def test_demo_no_serve_loads_the_catalog_and_an_admin(settings):
    settings.DEBUG = True  # the demo is development-only (pytest-django runs tests with DEBUG off)
    data = Path(settings.BASE_DIR) / "demo" / "grocery" / "products.jsonl"
    out = io.StringIO()
    call_command("demo", "--data", str(data), "--no-serve", stdout=out, stderr=io.StringIO())
    assert Product.objects.count() == 81
    assert get_user_model().objects.get(username="admin").is_superuser
    from catalog.vocabulary import vocabulary

    groups = {g.slug: len(g.tags) for g in vocabulary()}  # a starting tag vocabulary from the catalog
    assert groups["category-level-1"] == 3 and groups["category-level-2"] == 43
    assert "81 created" in out.getvalue()
    call_command("demo", "--data", str(data), "--no-serve", stdout=out, stderr=io.StringIO())
    assert "0 created, 0 updated, 81 unchanged" in out.getvalue()


def test_demo_refuses_a_missing_file(tmp_path, settings):
    settings.DEBUG = True
    with pytest.raises(CommandError, match="no such file"):
        call_command("demo", "--data", str(tmp_path / "nope.jsonl"), "--no-serve")
