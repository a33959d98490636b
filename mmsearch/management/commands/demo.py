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
                            help="do not train a small embedder and captioner on --data when no trained ones exist")

    def handle(self, *args, data: Path, addr: str, no_serve: bool, no_train: bool = False, **options):
        if not settings.DEBUG:
            raise CommandError("the demo runs in development mode only (DEBUG=1, as `make demo` sets it): it creates "
                               "the superuser admin / admin; see deploy/README.md for production")
        if not data.is_file():
            raise CommandError(f"{data}: no such file (give DATA=path/to/products.jsonl)")
        if not no_serve and not no_train:
            self._ensure_models(data)
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
        caption_job = None if no_serve else self._start_captions()
        self._ensure_admin()
        if no_serve:
            return
        self._serve(addr, caption_job)

    def _ensure_models(self, data: Path) -> None:
        """No trained embedder, captioner or answerer yet (a fresh machine): train small ones on --data (minutes; resumable).

        This process chose its models when it read the settings, before the models existed: it starts afresh
        afterwards, so the import, the jobs and the children (worker, web server) all use the trained models.
        """
        trained = [
            role for role, folder, command in (
                ("embedder", settings.MMSEARCH_EMBEDDER_PATH, "train_embedder"),
                ("captioner", settings.MMSEARCH_CAPTIONER_PATH, "train_captioner"),
                ("answerer", settings.MMSEARCH_ANSWERER_PATH, "train_answerer"),
            ) if self._train_if_missing(role, Path(folder), command, data)
        ]
        if trained:
            names = ", ".join(trained[:-1]) + (" and " if len(trained) > 1 else "") + trained[-1]
            self.stdout.write(f"Restarting the demo with the trained {names} ...")
            self.stdout.flush()
            os.environ["MMSEARCH_DEMO_RESTARTED"] = "1"
            os.execv(sys.executable, [sys.executable, *sys.argv])

    def _train_if_missing(self, role: str, folder: Path, command: str, data: Path) -> bool:
        """Train the demo preset of `command` into `folder` unless a finished model is there; True when it trained."""
        import json

        card = folder / "model_card.json"
        if folder.is_dir() and not card.is_file() and any(folder.iterdir()):
            return False  # someone's own model folder: leave it alone
        if card.is_file() and json.loads(card.read_text()).get("training", {}).get("finished"):
            return False
        if os.environ.get("MMSEARCH_DEMO_RESTARTED"):
            raise CommandError(f"the demo {role} trained into {folder} did not finish; see the output above")
        self.stdout.write(f"No trained {role} at {folder}: training a small one on {data} "
                          f"({command} --preset demo; `make train` trains the full models) ...")
        call_command(command, "--data", str(data), "--out", str(folder), "--preset", "demo",
                     stdout=self.stdout, stderr=self.stderr)
        return True

    def _start_captions(self):
        """A caption job for what the captioner has not captioned yet (its captions are accepted once it is done:
        see _accept_demo_captions)."""
        from mmsearch.indexing import JobError, start_caption_job

        if "captioner" not in settings.MMSEARCH_MODELS:
            self.stdout.write("No captioner configured (no folder at MMSEARCH_CAPTIONER_PATH): no captions.")
            return None
        try:
            job = start_caption_job("captioner")
        except JobError as exc:
            self.stderr.write(f"warning: no caption job: {exc}")
            return None
        self.stdout.write(f"Caption job {job.pk}: {job.total} products to caption on the caption queue.")
        return job

    def _accept_demo_captions(self, job) -> None:
        """The demo accepts its caption job's suggestions, so the product pages show them at once; in a real
        catalog an admin reviews them (/admin/catalog/caption/) or REST integrations do."""
        from catalog.models import Caption
        from catalog.review import set_status

        accepted = set_status(Caption.objects.filter(model_key=job.model_key, status=Caption.Status.SUGGESTED),
                              Caption.Status.ACCEPTED)
        self.stdout.write(f"Caption job {job.pk} {job.status}: the demo accepted its {accepted} captions (they show on "
                          "the product pages and join search); review them in the admin under Captions.")

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

    def _serve(self, addr: str, caption_job=None) -> None:
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
                if caption_job is not None:
                    caption_job.refresh_from_db()
                    if caption_job.finished:
                        self._accept_demo_captions(caption_job)
                        caption_job = None
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
