"""manage.py create_vocabulary: tag groups and tags from the catalog's own attribute values and category levels."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError


def _levels(raw: str) -> list[int]:
    try:
        levels = [int(x) for x in raw.split(",") if x.strip()]
    except ValueError:
        raise CommandError(f"--category-levels takes numbers such as 1,2, not {raw!r}") from None
    if any(level < 1 for level in levels):
        raise CommandError("--category-levels counts from 1 (the top level)")
    return levels


class Command(BaseCommand):
    help = (
        "Create a starting tag vocabulary from the active products: one tag group per attribute (its distinct "
        "values are the tags) and per category level. Existing groups gain missing tags; nothing is removed."
    )

    def add_arguments(self, parser):
        parser.add_argument("--attributes", default=None,
                            help="comma-separated attribute names (default: every attribute with 2..--max-values values)")
        parser.add_argument("--category-levels", default="", help="e.g. 1,2: a group per category depth")
        parser.add_argument("--max-values", type=int, default=200, help="skip attributes with more values (default 200)")

    def handle(self, *args, attributes, category_levels, max_values, **options):
        from catalog.vocabulary import create_from_catalog

        keys = [a.strip() for a in attributes.split(",") if a.strip()] if attributes is not None else None
        if keys == []:
            raise CommandError("--attributes names no attribute")
        if max_values < 2:
            raise CommandError("--max-values must be at least 2")
        made = create_from_catalog(keys, _levels(category_levels), max_values)
        self.stdout.write(f"{made.groups} tag groups and {made.tags} tags created")
        if made.skipped:
            self.stdout.write(f"skipped (fewer than 2 or more than {max_values} values): {', '.join(made.skipped)}")
