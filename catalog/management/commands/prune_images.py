"""manage.py prune_images: delete stored image files that no product image refers to any more."""

from __future__ import annotations

import time

from django.core.files.storage import default_storage
from django.core.management.base import BaseCommand, CommandError

from catalog.models import ProductImage
from catalog.storage import IMAGE_PREFIX


def stored_image_names(prefix: str = IMAGE_PREFIX) -> list[str]:
    """Every file under the content-addressed image folder (images/ab/abcd....ext)."""
    names: list[str] = []
    if not default_storage.exists(prefix):
        return names
    shards, files = default_storage.listdir(prefix)
    names.extend(f"{prefix}/{f}" for f in files)
    for shard in shards:
        _, inner = default_storage.listdir(f"{prefix}/{shard}")
        names.extend(f"{prefix}/{shard}/{f}" for f in inner)
    return sorted(names)


class Command(BaseCommand):
    help = (
        "Delete image files that no ProductImage uses (left behind when images are detached or products deleted; "
        "files are shared by content, so they are never deleted with a row)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
        parser.add_argument(
            "--min-age", type=float, default=3600,
            help="only files older than this many seconds (default 3600), so an import in progress keeps its files",
        )

    def handle(self, *args, dry_run: bool, min_age: float, **options):
        if min_age < 0:
            raise CommandError("--min-age must be 0 or more")
        used = set(ProductImage.objects.values_list("file", flat=True))
        now = time.time()
        unused = [
            name for name in stored_image_names()
            if name not in used and now - default_storage.get_modified_time(name).timestamp() >= min_age
        ]
        size = sum(default_storage.size(name) for name in unused)
        for name in unused:
            if options["verbosity"] >= 2:
                self.stdout.write(name)
            if not dry_run:
                default_storage.delete(name)
        verb = "would delete" if dry_run else "deleted"
        self.stdout.write(f"{len(used)} image files in use; {verb} {len(unused)} unused files ({size:,} bytes)")
