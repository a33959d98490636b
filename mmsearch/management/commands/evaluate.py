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
        parser.add_argument("--calibration", type=Path,
                            help="tagger calibration file (default: tagger.json in --model's folder, when there "
                                 "is one)")
        parser.add_argument("--no-calibration", action="store_true", help="report the zero-shot numbers only")
        parser.add_argument("--target-precision", type=float,
                            help="auto_accept at this precision (default: the calibration file's target)")
        parser.add_argument("--cache-dir", type=Path,
                            help="cache image vectors per (model_key, file) here (make train: models/cache)")
        parser.add_argument("--cached-trunk", action="store_true",
                            help="a model folder with a locked trunk: catalog image vectors from the trunk-feature "
                                 "cache of --cache-dir (view 0 through the head, as training computes them; the "
                                 "plugin's vectors up to float16 rounding), so the trunk runs only on new images")
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, data: Path, corpus: list[Path], photos: Path | None, model: str, json_out: Path,
               plots: Path | None, no_progress: bool, threads: int, calibration: Path | None = None,
               no_calibration: bool = False, target_precision: float | None = None, cache_dir: Path | None = None,
               cached_trunk: bool = False, **options):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch

        torch.set_num_threads(max(1, threads))
        from mmsearch.plugins import PluginError
        from mmsearch.plugins.zeroshot import CalibrationError, TaggerCalibration, calibration_beside
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
        if target_precision is not None and not 0 < target_precision < 1:
            raise CommandError(f"--target-precision {target_precision}: must be between 0 and 1")
        tagger_cal = None
        if calibration is not None and no_calibration:
            raise CommandError("--calibration and --no-calibration exclude each other")
        if not no_calibration:
            path = calibration or calibration_beside(embedder)
            if path is not None:
                try:
                    tagger_cal = TaggerCalibration.load(path)
                except CalibrationError as exc:
                    raise CommandError(f"--calibration: {exc}") from exc
                if tagger_cal.embedder_model_key != embedder.model_key:
                    message = (f"{path} was fitted for the embedder {tagger_cal.embedder_model_key}, not "
                               f"{embedder.model_key}")
                    if calibration is not None:
                        raise CommandError(f"--calibration: {message}")
                    self.stderr.write(f"warning: {message}: calibrated numbers left out")
                    tagger_cal = None
        catalog_vectors = None
        if cached_trunk:
            from mmsearch.training.model import build_from_init
            from mmsearch.training.trainer import model_vectors

            folder = Path(model[len("local-dir:"):] if model.startswith("local-dir:") else model).expanduser()
            if not folder.is_dir():
                raise CommandError(f"--cached-trunk needs --model to be a trained folder, not {model!r}")
            built = build_from_init(str(folder))
            if not (hasattr(built.net.visual, "trunk") and hasattr(built.net.visual, "head")):
                raise CommandError(f"--cached-trunk: {folder} has no timm trunk with a head (arch {built.arch})")

            def from_trunk_cache(paths):
                return model_vectors(built, paths, [], cache_dir, progress=not no_progress)[0]

            catalog_vectors = from_trunk_cache
        try:
            # Photos are embedded as search by photo embeds them (settings.MMSEARCH_SEARCH PHOTO_QUERY_*).
            report = evaluate(embedder, data, corpus, photos, progress=not no_progress, model_seconds=time.time() - t,
                              photo_views=PhotoViews.from_config(search_config()), calibration=tagger_cal,
                              cache_dir=cache_dir, target_precision=target_precision,
                              catalog_vectors=catalog_vectors)
        except DataError as exc:
            raise CommandError(str(exc)) from exc
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2))
        if plots:
            write_plots(report, plots)
        t2i = report["text_to_image"]
        line = (f"{report['model_key']}: text->image R@1 {t2i['recall@1']:.3f} R@10 {t2i['recall@10']:.3f} "
                f"MRR {t2i['mrr']:.3f} ({t2i['queries']} queries, {t2i['corpus']} images)")
        for name in ("article_type", "colour", "gender"):
            task = report["zero_shot"].get(name)
            if task:
                line += f"; zero-shot {name} {task['accuracy']:.3f}"
                if task.get("adapted_accuracy") is not None:
                    line += f" (adapted {task['adapted_accuracy']:.3f})"
                if task.get("ece_calibrated") is not None:
                    line += f" ECE {task['ece']:.3f} -> {task['ece_calibrated']:.3f}"
                accept = task.get("auto_accept")
                if accept and accept["threshold"] is not None:
                    line += (f", auto-accept >= {accept['threshold']:.3f}: precision "
                             f"{accept['precision'] if accept['precision'] is not None else float('nan'):.3f} "
                             f"coverage {accept['coverage']:.3f}")
        if report["photo_to_product"]:
            p2p = report["photo_to_product"]
            line += (f"; photo->product acc@1 {p2p['accuracy@1']:.3f} ({p2p['views']['count']} views; "
                     f"whole photo alone {p2p['single_view']['accuracy@1']:.3f})")
        self.stdout.write(line)
        self.stdout.write(f"wrote {json_out}" + (f" and plots in {plots}" if plots else ""))
