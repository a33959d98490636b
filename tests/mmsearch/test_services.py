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
