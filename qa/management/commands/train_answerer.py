"""manage.py train_answerer: train the project's answerer (question tokens attending to the image trunk's grid)."""

from __future__ import annotations

import os
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

# Presets fill in what the flags leave unset; "default" is what `make train` trains (docs/qa.md).
PRESETS: dict[str, dict] = {
    "default": {"n_layer": 2, "n_head": 4, "n_embd": 128, "epochs": 2, "questions_per_product": 2, "batch_size": 256,
                "lr": 2e-3},
    "tiny": {"n_layer": 1, "n_head": 2, "n_embd": 32, "epochs": 1, "questions_per_product": 0, "batch_size": 8,
             "lr": 3e-3},
    # the demo's own small answerer when `make train` has not run (its catalog is small: many epochs; its
    # calibration split holds a few dozen questions, too few for any threshold's lower bound to reach 0.90, so
    # the threshold is the point estimate)
    "demo": {"n_layer": 1, "n_head": 4, "n_embd": 128, "epochs": 30, "questions_per_product": 0, "batch_size": 64,
             "lr": 2e-3, "holdout": 0.0, "holdout_products": 0.0, "calibration": 0.2, "threshold_confidence": None,
             "keys": ["colour", "article_type", "gender", "usage", "category"]},
}


class Command(BaseCommand):
    help = ("Train the product answerer: the locked MiniLM's question tokens cross-attend to the locked ImageNet "
            "trunk's spatial grid and classify over the catalog's attribute values and yes / no; temperature and "
            "abstention threshold fitted on a calibration split. Writes a folder the TrunkAnswerer plugin loads.")

    def add_arguments(self, parser):
        parser.add_argument("--data", action="append", required=True, help="products.jsonl (repeatable)")
        parser.add_argument("--out", required=True, type=Path, help="output folder (resumed when it holds this run)")
        parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
        parser.add_argument("--key", action="append", dest="keys",
                            help="attribute the image answers (repeatable; default colour, article_type, gender, usage)")
        parser.add_argument("--questions", action="append", default=[], type=Path,
                            help="answered questions JSONL {sku, question, answer} (e.g. `manage.py export_answers`)")
        parser.add_argument("--embedder", type=Path,
                            help="train_embedder folder over the same locked trunk: its image vector of the same "
                                 "grid becomes one more memory token (make train passes models/embedder)")
        parser.add_argument("--trunk", help="architecture whose pretrained trunk reads the image (default effl0-128)")
        parser.add_argument("--layers", dest="n_layer", type=int, help="fusion blocks")
        parser.add_argument("--heads", dest="n_head", type=int, help="attention heads")
        parser.add_argument("--width", dest="n_embd", type=int, help="fusion width")
        parser.add_argument("--dropout", type=float)
        parser.add_argument("--epochs", type=int)
        parser.add_argument("--questions-per-product", type=int,
                            help="questions of each product drawn per epoch (default 2; 0: all of its questions)")
        parser.add_argument("--batch-size", type=int)
        parser.add_argument("--lr", type=float)
        parser.add_argument("--holdout", type=float, help="share of titles held out (default 0.1, the embedder's)")
        parser.add_argument("--holdout-products", type=float, help="share of skus then held out (default 0.1)")
        parser.add_argument("--calibration", type=float,
                            help="share of the training titles also kept for calibration (default 0: the products "
                                 "held out by sku whose titles training never saw calibrate)")
        parser.add_argument("--target-accuracy", type=float,
                            help="answered accuracy the abstention threshold is chosen for (default 0.9)")
        parser.add_argument("--threshold-confidence", type=float,
                            help="the threshold's answered accuracy on the calibration split is a one-sided Wilson "
                                 "lower bound at this level (default 0.95; 0: the point estimate)")
        parser.add_argument("--max-steps", type=int, help="stop after this many steps (smoke runs)")
        parser.add_argument("--checkpoint-every", type=float, default=60.0,
                            help="seconds between resumable checkpoints (also written after the last epoch)")
        parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--threads", type=int, default=1,
                            help="torch CPU threads (default 1: on busy shared cores extra threads spin-wait)")
        parser.add_argument("--cache-dir", type=Path,
                            help="decoded images, trunk grids and question tokens (default models/cache)")
        parser.add_argument("--replace", action="store_true",
                            help="when --out holds a different run, train anew over it instead of stopping")
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, **o):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here: never try to download
        from mmsearch.training.data import DataError
        from mmsearch.training.qa.trainer import QATrainConfig, QATrainer
        from mmsearch.training.trainer import TrainingError

        if o["threads"]:
            import torch

            torch.set_num_threads(o["threads"])
        preset = dict(PRESETS[o["preset"]])
        for key in ("trunk", "n_layer", "n_head", "n_embd", "dropout", "epochs", "batch_size", "lr", "holdout",
                    "holdout_products", "calibration", "target_accuracy", "keys", "questions_per_product"):
            if o.get(key) is not None:
                preset[key] = o[key]
        cache = o["cache_dir"] or Path(settings.BASE_DIR) / "models" / "cache"
        if o["threshold_confidence"] is not None:
            if not 0 <= o["threshold_confidence"] < 1:
                raise CommandError("--threshold-confidence must be in [0, 1)")
            preset["threshold_confidence"] = o["threshold_confidence"] or None
        if o["embedder"] is not None:
            if not o["embedder"].is_dir():
                raise CommandError(f"--embedder {o['embedder']}: no such folder (train one with `manage.py "
                                   "train_embedder`)")
            preset["embedder"] = str(o["embedder"].resolve())
        cfg = QATrainConfig(data=[str(p) for p in o["data"]], out=str(o["out"]), seed=o["seed"], device=o["device"],
                            questions=[str(p) for p in o["questions"]], max_steps=o["max_steps"],
                            checkpoint_every_s=o["checkpoint_every"], cache_dir=str(cache), **preset)
        if cfg.batch_size < 1 or cfg.n_layer < 1 or cfg.n_head < 1 or cfg.n_embd < 1 or cfg.epochs < 1:
            raise CommandError("--batch-size, --layers, --heads, --width and --epochs must be positive")
        for name in ("holdout", "holdout_products", "calibration", "dropout"):
            if not 0 <= getattr(cfg, name) < 1:
                raise CommandError(f"--{name.replace('_', '-')} must be in [0, 1)")
        if not 0 < cfg.target_accuracy < 1:
            raise CommandError("--target-accuracy must be between 0 and 1")
        try:
            card = QATrainer(cfg, log=lambda m: self.stdout.write(m), progress=not o["no_progress"],
                             replace=o["replace"]).run()
        except (DataError, TrainingError, FileNotFoundError) as exc:
            raise CommandError(str(exc)) from exc
        last = (card["metrics"]["per_epoch"] or [{}])[-1]
        cal = card["calibration"]
        self.stdout.write(self.style.SUCCESS(
            f"saved {o['out']} (weights sha256 {card['weights']['sha256'][:12]}); calibration-split accuracy "
            f"{last.get('cal_accuracy', '-')}, temperature {cal['temperature']}, threshold {cal['threshold']}; "
            f"load it with BACKEND 'mmsearch.plugins.answerer.TrunkAnswerer', "
            f"OPTIONS {{'path': '{Path(o['out']).resolve()}'}}"))
