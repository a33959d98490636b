"""manage.py reindex [--alias embedder] [--only-missing] [--force] [--kind all|images|products] [--wait]"""

from __future__ import annotations

import sys
import time

from django.core.management.base import BaseCommand, CommandError

from mmsearch.models import IndexJob


class Command(BaseCommand):
    help = (
        "Queue embedding of the catalog for a model alias as an IndexJob (workers on the 'embed' queue do the "
        "work); with --wait, show a progress bar until the job finishes."
    )

    def add_arguments(self, parser):
        parser.add_argument("--alias", default="embedder", help="MMSEARCH_MODELS alias to fill (default: embedder)")
        parser.add_argument("--only-missing", action="store_true", help="only items with no vector or failure for the model")
        parser.add_argument("--force", action="store_true", help="re-embed items even when their vector is current")
        parser.add_argument("--kind", choices=[k.value for k in IndexJob.Kind], help="default: what the alias's role embeds")
        parser.add_argument("--wait", action="store_true", help="wait for the job, with a progress bar")
        parser.add_argument("--timeout", type=float, default=0, help="with --wait: give up waiting after this many seconds")

    def handle(self, *args, alias: str, only_missing: bool, force: bool, kind: str | None, wait: bool, timeout: float, **options):
        from mmsearch.indexing import JobError, start_job

        try:
            job = start_job(alias, only_missing=only_missing, force=force, kind=kind)
        except JobError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"job {job.pk}: {job.total} items ({job.get_kind_display()}) for {alias} = {job.model_key}, {job.batches} batches queued"
        )
        if wait and not job.finished:
            job = self._wait(job, timeout)
        if job.finished or wait:
            self._summary(job)
        if job.status == IndexJob.Status.FAILED:
            raise CommandError(f"job {job.pk} failed: {job.error}")

    def _wait(self, job: IndexJob, timeout: float) -> IndexJob:
        from tqdm import tqdm

        deadline = time.monotonic() + timeout if timeout else None
        with tqdm(total=job.total, unit="item", desc=f"job {job.pk}", file=sys.stderr, dynamic_ncols=True) as bar:
            while True:
                job.refresh_from_db()
                bar.n = job.done + job.failed
                bar.set_postfix(failed=job.failed, status=job.status, refresh=False)
                bar.refresh()
                if job.finished:
                    return job
                if deadline and time.monotonic() > deadline:
                    raise CommandError(
                        f"job {job.pk} is still {job.status} after {timeout:.0f}s ({job.done + job.failed}/{job.total}); "
                        "is a worker consuming the 'embed' queue? (celery -A mmsearch worker -Q embed)"
                    )
                time.sleep(0.5)

    def _summary(self, job: IndexJob) -> None:
        rate = f", {job.items_per_second:.1f} items/s" if job.items_per_second else ""
        elapsed = f" in {job.elapsed_seconds:.1f}s" if job.elapsed_seconds is not None else ""
        self.stdout.write(
            f"job {job.pk} {job.status}: {job.done} done ({job.skipped} already current), {job.failed} failed"
            f"{elapsed}{rate}"
        )
