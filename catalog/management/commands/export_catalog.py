"""manage.py export_catalog OUT/products.jsonl: write the catalog in the interchange format."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from catalog.exporter import export_catalog
from catalog.filters import filter_categories
from catalog.models import Category, Product


class Command(BaseCommand):
    help = "Export products (optionally one category subtree) as products.jsonl with an images/ folder beside it."

    def add_arguments(self, parser):
        parser.add_argument("out", type=Path)
        parser.add_argument("--category", help="only this category path and below")
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, out: Path, category: str | None, no_progress: bool, **options):
        if out.exists() and out.is_dir():
            raise CommandError(f"{out} is a folder; give the path of the .jsonl file to write")
        if not out.parent.exists():
            raise CommandError(f"{out.parent}: no such folder")
        queryset = Product.objects.all()
        if category:
            node = Category.objects.filter(path=category.strip("/")).first()
            if node is None:
                raise CommandError(f"unknown category {category!r}")
            queryset = filter_categories(queryset, [node.path])
        with tqdm(total=queryset.count(), unit="row", desc="export", disable=no_progress, file=self.stderr._out) as bar:
            count = export_catalog(out, queryset, progress=bar)
        self.stdout.write(f"wrote {count} products to {out}")
