"""manage.py demo: load a catalog, start a Celery worker and the web server, stop both on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from catalog.models import Product


class Command(BaseCommand):
    help = "Run the demo: import --data, start a Celery worker and the web server; Ctrl-C stops what it started."

    def add_arguments(self, parser):
        parser.add_argument("--data", type=Path, default=Path("demo/grocery/products.jsonl"))
        parser.add_argument("--addr", default="127.0.0.1:8000")
        parser.add_argument("--no-serve", action="store_true", help="load and index, then exit (for scripts)")

    def handle(self, *args, data: Path, addr: str, no_serve: bool, **options):
        if not data.is_file():
            raise CommandError(f"{data}: no such file (give DATA=path/to/products.jsonl)")
        self.stdout.write(f"Importing {data} ...")
        try:
            call_command("import_catalog", str(data), stdout=self.stdout, stderr=self.stderr)
        except CommandError as exc:
            self.stderr.write(f"warning: {exc}")
        self._ensure_admin()
        if no_serve:
            return
        self._serve(addr)

    def _ensure_admin(self) -> None:
        User = get_user_model()
        if not User.objects.filter(username="admin").exists():
            User.objects.create_superuser("admin", "admin@example.com", "admin")
            self.stdout.write("Created the demo superuser admin / admin (change it before exposing the site).")

    def _serve(self, addr: str) -> None:
        python = sys.executable
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        children: list[subprocess.Popen] = [
            subprocess.Popen(
                [python, "-m", "celery", "-A", "mmsearch", "worker", "--loglevel", "INFO", "--concurrency", "1",
                 "-Q", "celery,embed,caption,tag,qa", "-n", "demo@%h"],
                env=env, cwd=settings.BASE_DIR,
            ),
            subprocess.Popen([python, "manage.py", "runserver", addr, "--noreload"], env=env, cwd=settings.BASE_DIR),
        ]
        base = f"http://{addr}"
        self.stdout.write(
            f"\nmmsearch demo ({Product.objects.count()} products)\n"
            f"  site      {base}/\n  products  {base}/api/v1/products/\n  API docs  {base}/api/v1/docs/\n"
            f"  admin     {base}/admin/  (admin / admin)\nPress Ctrl-C to stop.\n"
        )
        stopping = False

        def stop(*_):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        try:
            while not stopping and all(c.poll() is None for c in children):
                time.sleep(0.5)
        finally:
            for child in children:
                if child.poll() is None:
                    child.terminate()
            for child in children:
                try:
                    child.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    child.kill()
            self.stdout.write("Stopped the worker and the web server (the embedded services keep running; "
                              "`make services-stop` stops them).")
