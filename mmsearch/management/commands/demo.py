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
        parser.add_argument("--no-train", action="store_true",
                            help="do not train a small embedder on --data when no trained one exists")

    def handle(self, *args, data: Path, addr: str, no_serve: bool, no_train: bool = False, **options):
        if not settings.DEBUG:
            raise CommandError("the demo runs in development mode only (DEBUG=1, as `make demo` sets it): it creates "
                               "the superuser admin / admin; see deploy/README.md for production")
        if not data.is_file():
            raise CommandError(f"{data}: no such file (give DATA=path/to/products.jsonl)")
        if not no_serve and not no_train:
            answerer_trained = self._ensure_answerer(data)
            self._ensure_embedder(data, restart=answerer_trained)
        self.stdout.write(f"Importing {data} ...")
        try:
            call_command("import_catalog", str(data), stdout=self.stdout, stderr=self.stderr)
        except CommandError as exc:
            self.stderr.write(f"warning: {exc}")
        # A starting tag vocabulary from the catalog's attributes and category levels (admins edit it in the
        # admin and run "Suggest tags" on products or categories).
        call_command("create_vocabulary", "--category-levels", "1,2", stdout=self.stdout, stderr=self.stderr)
        if not no_serve:
            # Whatever an earlier run or another model left unembedded is queued too (cheap when nothing is).
            for alias in ("embedder", "text_embedder"):
                if alias in settings.MMSEARCH_MODELS:
                    call_command("reindex", "--alias", alias, "--only-missing", stdout=self.stdout, stderr=self.stderr)
        self._ensure_admin()
        if no_serve:
            return
        self._serve(addr)

    def _ensure_answerer(self, data: Path) -> bool:
        """No trained answerer yet: train a small one on --data for the product page's questions (a minute or so);
        True when it trained one (the settings of this process predate it: the demo restarts)."""
        import json

        folder = Path(settings.MMSEARCH_ANSWERER_PATH)
        card = folder / "model_card.json"
        if folder.is_dir() and (not card.is_file() or json.loads(card.read_text()).get("training", {}).get("finished")):
            return False  # trained already, or someone's own folder: leave it alone
        if os.environ.get("MMSEARCH_DEMO_RESTARTED"):
            raise CommandError(f"the demo answerer trained into {folder} did not finish; see the output above")
        self.stdout.write(f"No trained answerer at {folder}: training a small one on {data} "
                          "(train_answerer --preset demo; `make train` trains the full models) ...")
        call_command("train_answerer", "--data", str(data), "--out", str(folder), "--preset", "demo",
                     "--no-progress", stdout=self.stdout, stderr=self.stderr)
        return True

    def _ensure_embedder(self, data: Path, restart: bool = False) -> None:
        """No trained embedder yet (a fresh machine): train a small one on --data (minutes; resumable).

        The worker and web server started afterwards are new processes, so their settings find the model.
        """
        import json

        folder = Path(settings.MMSEARCH_EMBEDDER_PATH)
        card = folder / "model_card.json"
        if folder.is_dir() and not card.is_file() and any(folder.iterdir()):
            return self._restart("the trained answerer") if restart else None  # someone's own model folder
        if card.is_file() and json.loads(card.read_text()).get("training", {}).get("finished"):
            return self._restart("the trained answerer") if restart else None
        if os.environ.get("MMSEARCH_DEMO_RESTARTED"):
            raise CommandError(f"the demo embedder trained into {folder} did not finish; see the output above")
        self.stdout.write(f"No trained embedder at {folder}: training a small one on {data} "
                          "(train_embedder --preset demo; `make train` trains the full models) ...")
        call_command("train_embedder", "--data", str(data), "--out", str(folder), "--preset", "demo",
                     stdout=self.stdout, stderr=self.stderr)
        self._restart("the trained embedder")

    def _restart(self, what: str) -> None:
        # This process chose its models when it read the settings, before the model existed: start afresh so
        # the import, the index jobs and the children all use the trained model.
        self.stdout.write(f"Restarting the demo with {what} ...")
        self.stdout.flush()
        os.environ["MMSEARCH_DEMO_RESTARTED"] = "1"
        os.execv(sys.executable, [sys.executable, *sys.argv])

    def _ensure_admin(self) -> None:
        User = get_user_model()
        if not User.objects.filter(username="admin").exists():
            User.objects.create_superuser("admin", "admin@example.com", "admin")
        self.stdout.write("The demo superuser admin / admin exists for this demo; it is removed when the demo stops "
                          "(unless its password was changed).")

    def _remove_admin(self) -> None:
        """The demo superuser does not outlive the demo (a changed password means someone adopted it)."""
        user = get_user_model().objects.filter(username="admin").first()
        if user is not None and user.check_password("admin"):
            user.delete()
            self.stdout.write("Removed the demo superuser admin.")

    def _serve(self, addr: str) -> None:
        python = sys.executable
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        children: list[subprocess.Popen] = [
            subprocess.Popen(
                [python, "-m", "celery", "-A", "mmsearch", "worker", "--loglevel", "INFO", "--concurrency", "1",
                 "-Q", "celery,embed,caption,tag,qa", "-n", "demo@%h", "--beat"],
                env=env, cwd=settings.BASE_DIR, start_new_session=True,
            ),
            subprocess.Popen([python, "manage.py", "runserver", addr, "--noreload"], env=env, cwd=settings.BASE_DIR,
                             start_new_session=True),
        ]
        # Each child leads its own process group (so the worker's pool processes can be stopped with it), and
        # this command decides how they stop: a terminal's Ctrl-C reaches only this process and make.
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
            self.stdout.write("Stopping the worker (it finishes its current task) and the web server ...")
            for child in children:
                if child.poll() is None:
                    # The leader only: Celery's main process then stops its pool after the current task.
                    child.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 30
            for child in children:
                try:
                    child.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
                _signal_group(child, signal.SIGKILL)  # whatever is left of its group, pool processes included
                child.wait()
            self._remove_admin()
            self.stdout.write("Stopped the worker and the web server (the embedded services keep running; "
                              "`make services-stop` stops them).")
        if not stopping:
            died = [(name, c.returncode) for name, c in zip(("the Celery worker", "the web server"), children)
                    if c.returncode not in (None, 0, -signal.SIGTERM, -signal.SIGKILL)]
            if died:
                name, code = died[0]
                raise CommandError(f"{name} exited by itself (code {code}; is {addr} already in use?); stopped the rest")


def _signal_group(child: subprocess.Popen, sig: int) -> None:
    """Send `sig` to the child's process group (it leads one); a group that is gone already is fine."""
    try:
        os.killpg(child.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
