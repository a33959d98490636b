"""manage.py evaluate: retrieval, zero-shot and photo-search quality of any embedder on any catalog."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = ("Evaluate an embedder (MMSEARCH_MODELS alias or trained model folder) on a catalog in the interchange "
            "format, in memory: text_to_image, zero_shot, photo_to_product; writes JSON (and PNG plots).")

    def add_arguments(self, parser):
        parser.add_argument("--data", required=True, type=Path, help="products.jsonl whose titles are the queries")
        parser.add_argument("--corpus", action="append", default=[], type=Path,
                            help="more products.jsonl whose images join the corpus (repeatable)")
        parser.add_argument("--photos", type=Path, help="photos-<split>.jsonl: shopper photos as queries")
        parser.add_argument("--model", default="embedder", help="MMSEARCH_MODELS alias or model folder")
        parser.add_argument("--json", required=True, type=Path, dest="json_out", help="write the report here")
        parser.add_argument("--plots", type=Path, help="folder for PNG plots")
        parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (see train_embedder --threads)")
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, data: Path, corpus: list[Path], photos: Path | None, model: str, json_out: Path,
               plots: Path | None, no_progress: bool, threads: int, **options):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch

        torch.set_num_threads(max(1, threads))
        from mmsearch.plugins import PluginError
        from mmsearch.search.config import config as search_config
        from mmsearch.search.photo import PhotoViews
        from mmsearch.training.data import DataError
        from mmsearch.training.evaluation import evaluate, load_embedder, write_plots

        for path in [data, *corpus, *([photos] if photos else [])]:
            if not path.is_file():
                raise CommandError(f"{path}: no such file")
        t = time.time()
        try:
            embedder = load_embedder(model)
            embedder.embed_texts(["warm-up"])  # loads the weights now, so a broken model fails before the work
        except (DataError, PluginError, ValueError, OSError, RuntimeError) as exc:
            raise CommandError(f"--model {model}: {str(exc).splitlines()[0]}") from exc
        try:
            # Photos are embedded as search by photo embeds them (settings.MMSEARCH_SEARCH PHOTO_QUERY_*).
            report = evaluate(embedder, data, corpus, photos, progress=not no_progress, model_seconds=time.time() - t,
                              photo_views=PhotoViews.from_config(search_config()))
        except DataError as exc:
            raise CommandError(str(exc)) from exc
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2))
        if plots:
            write_plots(report, plots)
        t2i = report["text_to_image"]
        line = (f"{report['model_key']}: text->image R@1 {t2i['recall@1']:.3f} R@10 {t2i['recall@10']:.3f} "
                f"MRR {t2i['mrr']:.3f} ({t2i['queries']} queries, {t2i['corpus']} images)")
        for name in ("article_type", "colour"):
            if name in report["zero_shot"]:
                line += f"; zero-shot {name} {report['zero_shot'][name]['accuracy']:.3f}"
        if report["photo_to_product"]:
            p2p = report["photo_to_product"]
            line += (f"; photo->product acc@1 {p2p['accuracy@1']:.3f} ({p2p['views']['count']} views; "
                     f"whole photo alone {p2p['single_view']['accuracy@1']:.3f})")
        self.stdout.write(line)
        self.stdout.write(f"wrote {json_out}" + (f" and plots in {plots}" if plots else ""))
