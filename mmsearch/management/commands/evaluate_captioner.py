"""manage.py evaluate_captioner: a captioner folder against the nearest-neighbour and tag-template baselines."""

from __future__ import annotations

import json
import os
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = ("Caption held-out products with a trained captioner, the nearest training product's text (by the "
            "embedder) and a zero-shot tag template; BLEU-4, CIDEr-D, ROUGE-L, mentions of article type / colour "
            "/ gender, brand hallucination and ms per image for each (docs/captioning.md).")

    def add_arguments(self, parser):
        parser.add_argument("--model", required=True, type=Path, help="captioner folder (train_captioner --out)")
        parser.add_argument("--data", required=True, type=Path, help="held-out products.jsonl to caption")
        parser.add_argument("--corpus", action="append", default=[], type=Path,
                            help="products.jsonl of the training side (the nearest-neighbour baseline's texts; "
                                 "repeatable; products also in --data are left out)")
        parser.add_argument("--embedder", help="embedder alias or open_clip folder (default models/embedder)")
        parser.add_argument("--json", type=Path, help="write the report here")
        parser.add_argument("--cache-dir", type=Path, help="trunk grids and decoded images (default models/cache)")
        parser.add_argument("--timing-images", type=int, default=128, help="images timed per method (128)")
        parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, **o):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch

        from mmsearch.plugins import PluginError
        from mmsearch.training.caption.evaluation import evaluate_captioner
        from mmsearch.training.data import DataError

        if o["threads"]:
            torch.set_num_threads(o["threads"])
        embedder = o["embedder"] or str(Path(settings.BASE_DIR) / "models" / "embedder")
        cache = o["cache_dir"] or Path(settings.BASE_DIR) / "models" / "cache"
        try:
            report = evaluate_captioner(o["model"], o["data"], o["corpus"], embedder, cache,
                                        progress=not o["no_progress"], timing_images=o["timing_images"],
                                        log=lambda m: self.stdout.write(m))
        except (DataError, PluginError, FileNotFoundError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        if o["json"]:
            o["json"].parent.mkdir(parents=True, exist_ok=True)
            o["json"].write_text(json.dumps(report, indent=2, ensure_ascii=False))
        self.stdout.write(f"{report['data']['products']} products, corpus {report['data']['corpus_products']}")
        self.stdout.write(f"{'method':18s} {'BLEU-4':>7s} {'CIDEr-D':>8s} {'ROUGE-L':>8s} {'type':>6s} {'colour':>7s} "
                          f"{'gender':>7s} {'brand':>6s} {'ms/img':>7s}")
        for name in ("captioner", "nearest_neighbour", "tag_template"):
            r = report[name]
            m = r["mentions"]
            self.stdout.write(
                f"{name:18s} {r['bleu4']:7.3f} {r['cider']:8.3f} {r['rouge_l']:8.3f} {_f(m['article_type']):>6s} "
                f"{_f(m['colour']):>7s} {_f(m['gender']):>7s} {r['brand_hallucination']:6.3f} {r['ms_per_image']:7.1f}")
        if o["json"]:
            self.stdout.write(self.style.SUCCESS(f"wrote {o['json']}"))


def _f(value) -> str:
    return "-" if value is None else f"{value:.3f}"
