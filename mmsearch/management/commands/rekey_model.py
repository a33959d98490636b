"""manage.py rekey_model ALIAS: move vectors stored under the alias's earlier model_key to its current one."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = (
        "Local models were once keyed by their folder or file name plus a weights hash; they are now keyed by "
        "weights and config. Moves the vectors, failures and search slot stored under ALIAS's earlier key to its "
        "current model_key (and rebuilds the HNSW indexes), so nothing is re-embedded."
    )

    def add_arguments(self, parser):
        parser.add_argument("alias", help="an embedder or text_embedder alias of MMSEARCH_MODELS")

    def handle(self, *args, alias: str, **options):
        from mmsearch.indexing import JobError, rekey

        try:
            moved = rekey(alias)
        except JobError as exc:
            raise CommandError(str(exc)) from exc
        for old, rows in moved.items():
            self.stdout.write(f"{old} -> {alias}: {rows['image']} image vectors, {rows['product']} product vectors re-keyed")
