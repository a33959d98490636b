import pytest
from django.db import connection

from mmsearch import services


def test_embedded_services_are_running():
    want_pg, want_redis = services.embedded_wanted()
    if want_pg:
        assert services.postgres_status().running
    if want_redis:
        assert services.redis_status().running


@pytest.mark.django_db
def test_database_is_postgres_with_pgvector_and_trgm():
    assert connection.vendor == "postgresql"
    with connection.cursor() as cursor:
        cursor.execute("SELECT extname, extversion FROM pg_extension")
        extensions = dict(cursor.fetchall())
    assert "pg_trgm" in extensions
    major, minor = (int(x) for x in extensions["vector"].split(".")[:2])
    assert (major, minor) >= (0, 8)


def test_redis_answers():
    import redis
    from django.conf import settings

    from kombu import Connection

    client = Connection(settings.REDIS_URL).default_channel.client
    client.set("mmsearch-test", "1")
    assert client.get("mmsearch-test") == b"1"


def test_slow_postgres_start_is_waited_for_not_fatal():
    """pg_ctl gives up after 10 s during crash recovery; the start then waits for the server to answer."""
    import subprocess

    if not services.embedded_wanted()[0]:
        pytest.skip("PostgreSQL is external here (DATABASE_URL)")
    calls = []

    def get_server(path, cleanup_mode=None):
        calls.append(path)
        if len(calls) == 1:
            raise subprocess.TimeoutExpired(["pg_ctl", "start"], 10)
        return "server"

    assert services._get_server(get_server, recovery_timeout=30) == "server"
    assert len(calls) == 2  # attached once the (running) server accepted connections


def test_postgres_that_never_answers_is_a_clear_error(monkeypatch):
    import subprocess

    monkeypatch.setattr(services, "_accepts_connections", lambda: False)

    def get_server(path, cleanup_mode=None):
        raise subprocess.TimeoutExpired(["pg_ctl", "start"], 10)

    with pytest.raises(services.ServiceError, match="did not accept connections within 1s"):
        services._get_server(get_server, recovery_timeout=1)
