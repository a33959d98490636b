"""manage.py match_report PRODUCTS.jsonl --csv OUT.csv: which products' text does not match their images."""

from __future__ import annotations

import csv
import math
import os
from dataclasses import asdict
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = ("Score how well each product's text matches its images (mmsearch.training.matching) for a catalog file in "
            "the interchange format, no import needed: a CSV with one row per product, worst match first, and the "
            "caption the captioner proposes when one is configured. --store keeps the scores for the database's "
            "products of the same sku and title (the admin's data-quality report).")

    def add_arguments(self, parser):
        from mmsearch.training.matching import DEFAULT_SCORE, SCORES, TEXTS

        parser.add_argument("products", type=Path, help="products.jsonl in the interchange format")
        parser.add_argument("--csv", type=Path, dest="csv_out", help="write the report here")
        parser.add_argument("--store", action="store_true",
                            help="store the scores for the database's products with the same sku and title")
        parser.add_argument("--model", default="embedder", help="MMSEARCH_MODELS alias or model folder (default: embedder)")
        parser.add_argument("--score", choices=SCORES, default=DEFAULT_SCORE, help=f"ranking score (default {DEFAULT_SCORE})")
        parser.add_argument("--text", choices=TEXTS, default="title",
                            help="what is matched against the images: the title (default) or the whole product text")
        parser.add_argument("--threshold", type=float,
                            help="flag scores at or below this (evaluate_matching's threshold for the score)")
        parser.add_argument("--captioner", default="captioner",
                            help="MMSEARCH_MODELS alias of the captioner (used when configured; default: captioner)")
        parser.add_argument("--no-captions", action="store_true", help="leave the proposed captions out")
        parser.add_argument("--cache-dir", type=Path, help="cache image vectors per (model_key, file) here")
        parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, products: Path, csv_out: Path | None, store: bool, model: str, score: str, text: str,
               captioner: str, no_captions: bool, cache_dir: Path | None, threads: int, no_progress: bool,
               threshold: float | None = None, **options):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from tqdm import tqdm

        from mmsearch.plugins import get_model, model_settings
        from mmsearch.training import data as D
        from mmsearch.training import matching

        if csv_out is None and not store:
            raise CommandError("nothing to do: give --csv OUT.csv and/or --store")
        if not products.is_file():
            raise CommandError(f"{products}: no such file")
        if csv_out is not None and (csv_out.is_dir() or not csv_out.parent.is_dir()):
            raise CommandError(f"--csv {csv_out}: give a file path in an existing folder")
        if threads < 1:
            raise CommandError(f"--threads {threads}: must be at least 1")
        if threshold is not None and not math.isfinite(threshold):
            raise CommandError(f"--threshold {threshold}: must be a finite number")
        try:
            items = D.load_products(products)
        except D.DataError as exc:
            raise CommandError(str(exc)) from exc
        import torch

        torch.set_num_threads(threads)
        embedder = self._model(lambda: matching_embedder(model), f"--model {model}")
        cap_model = None
        if not no_captions and captioner in model_settings():
            cap_model = self._model(lambda: get_model(captioner), f"--captioner {captioner}")

        bars: dict[str, tqdm] = {}

        def progress(stage: str, done: int, total: int) -> None:
            bar = bars.get(stage)
            if bar is None:
                bar = bars[stage] = tqdm(total=total, desc=f"embed {stage}", disable=no_progress, mininterval=1.0,
                                         file=self.stderr._out)
            bar.update(done - bar.n)
            if done >= total:
                bar.close()

        try:
            vectors = matching.product_vectors(embedder, items, text=text, cache_dir=cache_dir, progress=progress)
            captions = None
            if cap_model is not None:
                with tqdm(total=len(items), desc="caption", disable=no_progress, mininterval=1.0,
                          file=self.stderr._out) as bar:
                    captions = matching.propose_captions(cap_model, items, lambda n: bar.update(n - bar.n))
        except D.DataError as exc:
            raise CommandError(str(exc)) from exc
        finally:
            for bar in bars.values():
                bar.close()
        rows = matching.report(items, vectors, captions, score=score, threshold=threshold)
        if csv_out is not None:
            with csv_out.open("w", newline="", encoding="utf-8") as fh:
                writer = csv.DictWriter(fh, fieldnames=matching.REPORT_COLUMNS)
                writer.writeheader()
                writer.writerows(asdict(r) for r in rows)
            flagged = "" if threshold is None else f", {sum(bool(r.flagged) for r in rows)} flagged"
            self.stdout.write(f"wrote {len(rows)} products to {csv_out} (score {rows[0].model_key}; worst first"
                              f"{flagged})")
        if store:
            from mmsearch.adapter import MatchRow, get_catalog

            counts = get_catalog().store_match_scores([
                MatchRow(r.sku, r.title, r.score, r.model_key, r.caption, r.caption_model_key) for r in rows])
            self.stdout.write(f"stored {counts['stored']} scores ({counts['unknown_sku']} skus not in the catalog, "
                              f"{counts['title_changed']} whose title has changed since: left out)")

    @staticmethod
    def _model(load, what: str):
        """Build a model now and run it once, so a broken one fails before the work, with one line."""
        from mmsearch.plugins import PluginError
        from mmsearch.training.data import DataError

        try:
            return load()
        except (DataError, PluginError, ValueError, OSError, RuntimeError) as exc:
            raise CommandError(f"{what}: {str(exc).splitlines()[0]}") from exc


def matching_embedder(spec: str):
    """The embedder of an alias or folder (as `evaluate` loads it), its weights loaded."""
    from mmsearch.training.evaluation import load_embedder

    embedder = load_embedder(spec)
    embedder.embed_texts(["warm-up"])
    return embedder
