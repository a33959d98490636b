"""manage.py export_answers: the questions admins answered in the log, as training questions for train_answerer."""

from __future__ import annotations

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = ("Write every logged question with an admin's corrected answer as JSONL {sku, question, answer} "
            "(train_answerer --questions FILE learns from them).")

    def add_arguments(self, parser):
        parser.add_argument("--out", required=True, type=Path, help="JSONL file to write")

    def handle(self, *args, out: Path, **options):
        from qa.models import Question

        rows = Question.objects.exclude(corrected_answer="").select_related("product").order_by("id")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            with out.open("w", encoding="utf-8") as fh:
                n = 0
                for q in rows.iterator():
                    fh.write(json.dumps({"sku": q.product.sku, "question": q.question, "answer": q.corrected_answer},
                                        ensure_ascii=False) + "\n")
                    n += 1
        except OSError as exc:
            raise CommandError(f"--out {out}: {exc.strerror or exc}") from exc
        self.stdout.write(self.style.SUCCESS(f"wrote {n} answered questions to {out}"))
