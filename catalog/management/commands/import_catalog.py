"""manage.py import_catalog PATH/products.jsonl: upsert a catalog in the interchange format."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from catalog.importer import CatalogImporter, count_rows


class Command(BaseCommand):
    help = "Import products.jsonl (the interchange format): upsert by sku, copy images, report bad rows."

    def add_arguments(self, parser):
        parser.add_argument("path", type=Path, help="products.jsonl; image paths are relative to its folder")
        parser.add_argument("--batch-size", type=int, default=500)
        parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    def handle(self, *args, path: Path, batch_size: int, no_progress: bool, **options):
        if not path.is_file():
            raise CommandError(f"{path}: no such file")
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        importer = CatalogImporter(path, batch_size=batch_size)
        with tqdm(total=count_rows(path), unit="row", desc="import", disable=no_progress, file=self.stderr._out) as bar:
            report = importer.run(progress=bar)
        for error in report.rejected:
            self.stderr.write(f"{path}: {error}")
        self.stdout.write(report.summary())
        if report.rejected:
            raise CommandError(f"{len(report.rejected)} of {report.rows} rows rejected (see above); the rest were imported")
