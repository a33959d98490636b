"""manage.py activate_model ALIAS [--as SLOT] [--force]: the blue/green switch."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = (
        "Make the model of an MMSEARCH_MODELS alias answer searches for a slot (default: the alias's role) in one "
        "step. Refuses while the model's coverage of the catalog is incomplete, unless --force."
    )

    def add_arguments(self, parser):
        parser.add_argument("alias", help="configured alias whose vectors should answer searches, e.g. embedder_v2")
        parser.add_argument("--as", dest="as_role", help="search slot to point at it (default: the alias's role)")
        parser.add_argument("--force", action="store_true", help="switch even if some items have no vector yet")

    def handle(self, *args, alias: str, as_role: str | None, force: bool, **options):
        from mmsearch.indexing import JobError, activate

        try:
            result = activate(alias, as_role=as_role, force=force)
        except JobError as exc:
            raise CommandError(str(exc)) from exc
        for cov in result.coverage:
            self.stdout.write(f"  {cov}")
        self.stdout.write(f"{result.slot}: {result.previous_key or '(none)'} -> {result.model_key}")
