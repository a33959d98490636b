"""manage.py evaluate_qa: an answerer folder on held-out products, per question type, against two baselines."""

from __future__ import annotations

import json
import os
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

TYPES_FIRST = ("colour", "article_type", "gender", "usage", "yes_no", "choice")


class Command(BaseCommand):
    help = ("Ask held-out products generated questions (image only) and labelled fact questions (product data); "
            "per question type: accuracy, majority baseline, late fusion (the zero-shot tagger over the embedder), "
            "coverage and answered accuracy at the model's threshold, ECE, ms per question (docs/qa.md).")

    def add_arguments(self, parser):
        parser.add_argument("--model", required=True, type=Path, help="answerer folder (train_answerer --out)")
        parser.add_argument("--data", required=True, type=Path, help="held-out products.jsonl")
        parser.add_argument("--facts", type=Path,
                            help="labelled fact questions JSONL {sku, question, evidence[, type]} about --data")
        parser.add_argument("--embedder", help="embedder alias or open_clip folder for the late-fusion baseline "
                                               "(default models/embedder when it exists; 'none' skips it)")
        parser.add_argument("--json", type=Path, help="write the report here")
        parser.add_argument("--cache-dir", type=Path, help="trunk grids and image vectors (default models/cache)")
        parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, **o):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch

        from mmsearch.plugins import PluginError
        from mmsearch.training.data import DataError
        from mmsearch.training.qa.evaluation import evaluate_qa

        if o["threads"]:
            torch.set_num_threads(o["threads"])
        embedder = o["embedder"]
        if embedder is None:
            default = Path(settings.BASE_DIR) / "models" / "embedder"
            embedder = str(default) if default.is_dir() else None
        elif embedder.lower() == "none":
            embedder = None
        cache = o["cache_dir"] or Path(settings.BASE_DIR) / "models" / "cache"
        if not o["model"].is_dir():
            raise CommandError(f"--model {o['model']}: no such folder (train one with `manage.py train_answerer`)")
        try:
            report = evaluate_qa(o["model"], o["data"], embedder, o["facts"], cache, progress=not o["no_progress"],
                                 log=lambda m: self.stdout.write(m))
        except (DataError, PluginError, FileNotFoundError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        if o["json"]:
            o["json"].parent.mkdir(parents=True, exist_ok=True)
            o["json"].write_text(json.dumps(report, indent=2, ensure_ascii=False))
        self.stdout.write(f"{report['model_key']}: threshold {report['threshold']}, {report['data']['visual_questions']} "
                          f"visual and {report['data']['fact_questions']} fact questions")
        self.stdout.write(f"{'type':14s} {'n':>6s} {'acc':>6s} {'major':>6s} {'late':>6s} {'alone':>6s} {'cover':>6s} "
                          f"{'ans.acc':>7s} {'ms/q':>7s}")
        names = [n for n in TYPES_FIRST if n in report] + sorted(
            n for n, v in report.items() if isinstance(v, dict) and "accuracy" in v and n not in TYPES_FIRST
            and n != "overall") + (["overall"] if "overall" in report else [])
        for name in names:
            r = report[name]
            self.stdout.write(f"{name:14s} {r['questions']:6d} {_f(r['accuracy'])} {_f(r.get('majority_baseline'))} "
                              f"{_f(r.get('late_fusion_accuracy'))} {_f(r.get('model_alone_accuracy'))} {_f(r.get('coverage'))} "
                              f"{_f(r.get('answered_accuracy'), 7)} {_f(r.get('ms_per_question'), 7, 1)}")
        if o["json"]:
            self.stdout.write(self.style.SUCCESS(f"wrote {o['json']}"))


def _f(value, width: int = 6, digits: int = 3) -> str:
    return f"{'-':>{width}s}" if value is None else f"{value:{width}.{digits}f}"
