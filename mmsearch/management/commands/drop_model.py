"""manage.py drop_model MODEL_KEY: delete a model's vectors and HNSW indexes (never the active one)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Delete every vector, failure record and HNSW index of MODEL_KEY. Refuses while a search slot uses it."

    def add_arguments(self, parser):
        parser.add_argument("model_key")

    def handle(self, *args, model_key: str, **options):
        from mmsearch.indexing import JobError, drop

        try:
            deleted = drop(model_key)
        except JobError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"dropped {model_key}: {deleted['image']} image vectors, {deleted['product']} product vectors")
