"""Fixtures for the pipeline tests: test plugins, a clean Redis database, the demo catalog, real workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection

from mmsearch import plugins
from tests.workers.config import TEST_MODELS

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "demo" / "grocery" / "products.jsonl"


@pytest.fixture
def models(settings):
    """The test plugins (the same MMSEARCH_MODELS the worker subprocesses load)."""
    settings.MMSEARCH_MODELS = TEST_MODELS
    settings.MMSEARCH_INDEX_ALIASES = ["embedder"]
    plugins.reset()
    yield TEST_MODELS
    plugins.reset()


def nearest_images(query, k: int = 5, alias: str = "embedder") -> list[int]:
    """Image ids of the k nearest images under alias's active key, through the search engine's vector signal."""
    from django.db import transaction

    from mmsearch.search import signals, vectors

    active = vectors.active_model(alias)
    encoder = signals.Encoder(alias, None, active.model_key, active.dim)
    fsql, fparams = signals.filter_sql({})
    with transaction.atomic():
        hits = signals.vector_candidates("image", encoder, query, fsql, fparams, k, {})
    return [hit.extra["image_id"] for hit in hits]


def purge_broker() -> None:
    """Empty this run's Redis database (MMSEARCH_REDIS_DB): queued, unacked and result keys."""
    from mmsearch.celery import app

    with app.connection_for_write() as conn:
        conn.default_channel.client.flushdb()


@pytest.fixture
def broker():
    purge_broker()
    yield
    purge_broker()


def import_demo(limit: int | None = None, tmp_path: Path | None = None):
    """Import the grocery demo catalog (81 products, one image each), or its first `limit` rows."""
    from catalog.importer import CatalogImporter

    path = DEMO
    if limit is not None:
        lines = DEMO.read_text().splitlines()[:limit]
        path = tmp_path / "products.jsonl"
        path.write_text("\n".join(lines) + "\n")
        (tmp_path / "images").symlink_to(DEMO.parent / "images")
    return CatalogImporter(path).run()


class Worker:
    """A real `celery worker` subprocess on `queues`, using the test database and Redis database."""

    def __init__(self, log: Path, env: dict[str, str], queues: str = "embed"):
        self.log_path = log
        self.env = env
        self.queues = queues
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> "Worker":
        self._fh = open(self.log_path, "ab")
        start_offset = self.log_path.stat().st_size
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "mmsearch", "worker", "-Q", self.queues, "--pool", "solo",
                "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "info",
            ],
            cwd=ROOT, env=self.env, stdout=self._fh, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log()}")
            if b" ready." in self.log_path.read_bytes()[start_offset:]:
                return self
            time.sleep(0.1)
        raise RuntimeError(f"worker not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no warm shutdown, no ack of the running task."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if getattr(self, "_fh", None):
            self._fh.close()


@pytest.fixture
def worker_factory(transactional_db, settings, models, broker, tmp_path):
    """start_worker(**env) -> a running Worker; every worker is stopped before the test database is flushed."""
    started: list[Worker] = []

    def start_worker(queues: str = "embed", **extra_env: str) -> Worker:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.workers.worker_settings",
            # The subprocess must see the test database this test writes to (settings read MMSEARCH_DB_NAME).
            "MMSEARCH_DB_NAME": connection.settings_dict["NAME"],
            "MEDIA_ROOT": str(settings.MEDIA_ROOT),
            "MMSEARCH_EMBED_BATCH_SIZE": str(settings.MMSEARCH_EMBED_BATCH_SIZE),
            "MMSEARCH_EMBED_BATCHES_PER_TASK": str(settings.MMSEARCH_EMBED_BATCHES_PER_TASK),
            "OMP_NUM_THREADS": "1",
            **extra_env,
        }
        worker = Worker(tmp_path / "worker.log", env, queues)
        started.append(worker)
        return worker.start()

    yield start_worker
    for worker in started:
        worker.stop()


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.1, what: str = "condition", log=None):
    """Poll until predicate() is truthy; fail with `what` (and the worker log) after timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}" + (f"\n--- worker log ---\n{log()}" if log else ""))


def wait_job(job_id: int, timeout: float = 60.0, log=None):
    from mmsearch.models import IndexJob

    def finished():
        job = IndexJob.objects.get(pk=job_id)
        return job if job.finished else None

    return wait_for(finished, timeout, what=f"job {job_id} to finish", log=log)
