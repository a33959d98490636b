"""Safe by default: DEBUG off unless asked for, no development SECRET_KEY in production, check --deploy clean."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The production environment deploy/README.md documents (TLS terminated by the proxy in front).
PRODUCTION = {
    "DEBUG": "0", "SECRET_KEY": secrets.token_urlsafe(64), "ALLOWED_HOSTS": "shop.example.com",
    "SECURE_PROXY_SSL_HEADER": "1", "CSRF_TRUSTED_ORIGINS": "https://shop.example.com",
}


def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "SECRET_KEY"}}
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**base, "DJANGO_SETTINGS_MODULE": "mmsearch.settings", **env},
    )


def test_check_deploy_passes_with_the_production_environment():
    run = manage("check", "--deploy", **PRODUCTION)
    assert run.returncode == 0, run.stderr
    assert "security." not in run.stdout + run.stderr  # no W004 HSTS, W008 SSL redirect, W012/W016 cookies, W009 ...


def test_debug_is_off_unless_asked_for():
    run = manage("shell", "-c", "from django.conf import settings; print(settings.DEBUG, settings.SESSION_COOKIE_SECURE, "
                 "settings.SECURE_HSTS_SECONDS, settings.MMSEARCH_SEARCH_DEBUG)", SECRET_KEY=PRODUCTION["SECRET_KEY"])
    assert run.stdout.strip().splitlines()[-1].split() == ["False", "True", "31536000", "False"], run.stderr


def test_start_up_refuses_the_development_secret_key_when_debug_is_off():
    for key in (None, "dev-only-insecure-key-change-me", "short"):
        run = manage("check", DEBUG="0", **({"SECRET_KEY": key} if key else {}))
        assert run.returncode != 0
        assert "SECRET_KEY must be set to a long random string" in run.stderr


def test_the_demo_and_its_superuser_are_for_development_only():
    run = manage("demo", "--no-serve", **PRODUCTION)
    assert run.returncode != 0
    assert "the demo runs in development mode only" in run.stderr
