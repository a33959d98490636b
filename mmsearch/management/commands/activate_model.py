"""manage.py activate_model ALIAS [--as SLOT] [--force] [--storage vector|halfvec]: the blue/green switch."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = (
        "Make the model of an MMSEARCH_MODELS alias answer searches for a slot (default: the alias's role) in one "
        "step. Refuses while the model's coverage of the catalog is incomplete, unless --force. --storage halfvec "
        "searches through float16 HNSW indexes (about half the size)."
    )

    def add_arguments(self, parser):
        from mmsearch.search.vectors import STORAGES

        parser.add_argument("alias", help="configured alias whose vectors should answer searches, e.g. embedder_v2")
        parser.add_argument("--as", dest="as_role", help="search slot to point at it (default: the alias's role)")
        parser.add_argument("--force", action="store_true", help="switch even if some items have no vector yet")
        parser.add_argument("--storage", choices=STORAGES, default="vector",
                            help="index storage: vector (float32, default) or halfvec (float16)")

    def handle(self, *args, alias: str, as_role: str | None, force: bool, storage: str, **options):
        from mmsearch.indexing import ROLE_KINDS, JobError, activate, embedding_role
        from mmsearch.search import vectors

        try:
            result = activate(alias, as_role=as_role, force=force)
        except JobError as exc:
            raise CommandError(str(exc)) from exc
        active = vectors.active_model(result.slot)
        vectors.use_storage(result.slot, ROLE_KINDS[embedding_role(alias)], result.model_key, active.dim, storage)
        for cov in result.coverage:
            self.stdout.write(f"  {cov}")
        self.stdout.write(f"{result.slot}: {result.previous_key or '(none)'} -> {result.model_key} ({storage})")
