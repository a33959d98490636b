"""manage.py train_captioner: train the project's captioner (a decoder over the locked image trunk's grid)."""

from __future__ import annotations

import os
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

# Presets fill in what the flags leave unset; "default" is what `make train` trains (docs/captioning.md).
PRESETS: dict[str, dict] = {
    "default": {"n_layer": 3, "n_head": 4, "n_embd": 256, "epochs": 6, "batch_size": 128, "lr": 1e-3},
    # A few minutes on the bundled 81-product grocery catalog (make demo when `make train` has not run).
    "demo": {"n_layer": 2, "n_head": 4, "n_embd": 128, "epochs": 40, "batch_size": 16, "lr": 2e-3, "min_count": 1,
             "holdout": 0.0, "val_images": 16},
    "tiny": {"n_layer": 1, "n_head": 2, "n_embd": 32, "epochs": 1, "batch_size": 8, "lr": 1e-3, "min_count": 1,
             "val_images": 16},
}


class Command(BaseCommand):
    help = ("Train a caption decoder over the locked ImageNet trunk's spatial grid on catalog products (teacher "
            "forcing on brand-free targets); writes a folder the TrunkCaptioner plugin loads.")

    def add_arguments(self, parser):
        parser.add_argument("--data", action="append", required=True, help="products.jsonl (repeatable)")
        parser.add_argument("--out", required=True, type=Path, help="output folder (resumed when it holds this run)")
        parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
        parser.add_argument("--trunk", help="architecture whose pretrained trunk is the encoder (default effl0-128)")
        parser.add_argument("--layers", dest="n_layer", type=int, help="decoder blocks")
        parser.add_argument("--heads", dest="n_head", type=int, help="attention heads")
        parser.add_argument("--width", dest="n_embd", type=int, help="decoder width")
        parser.add_argument("--dropout", type=float)
        parser.add_argument("--epochs", type=int)
        parser.add_argument("--batch-size", type=int)
        parser.add_argument("--lr", type=float)
        parser.add_argument("--label-smoothing", type=float)
        parser.add_argument("--min-count", type=int, help="occurrences a word needs to enter the vocabulary (3)")
        parser.add_argument("--max-words", type=int, help="longest caption in words (16)")
        parser.add_argument("--holdout", type=float, help="share of titles held out for validation (default 0.1)")
        parser.add_argument("--val-images", type=int, help="held-out images captioned after each epoch (500)")
        parser.add_argument("--max-steps", type=int, help="stop after this many steps (smoke runs)")
        parser.add_argument("--checkpoint-every", type=float, default=60.0,
                            help="seconds between resumable checkpoints (also written after the last epoch)")
        parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--threads", type=int, default=1,
                            help="torch CPU threads (default 1: on busy shared cores extra threads spin-wait)")
        parser.add_argument("--cache-dir", type=Path, help="decoded images and trunk grids (default models/cache)")
        parser.add_argument("--replace", action="store_true",
                            help="when --out holds a different run, train anew over it instead of stopping")
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, **o):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here: never try to download
        from mmsearch.training.caption.trainer import CaptionTrainConfig, CaptionTrainer
        from mmsearch.training.data import DataError
        from mmsearch.training.trainer import TrainingError

        if o["threads"]:
            import torch

            torch.set_num_threads(o["threads"])
        preset = dict(PRESETS[o["preset"]])
        for key in ("trunk", "n_layer", "n_head", "n_embd", "dropout", "epochs", "batch_size", "lr", "label_smoothing",
                    "min_count", "max_words", "holdout", "val_images"):
            if o.get(key) is not None:
                preset[key] = o[key]
        cache = o["cache_dir"] or Path(settings.BASE_DIR) / "models" / "cache"
        cfg = CaptionTrainConfig(data=[str(p) for p in o["data"]], out=str(o["out"]), seed=o["seed"],
                                 device=o["device"], max_steps=o["max_steps"], checkpoint_every_s=o["checkpoint_every"],
                                 cache_dir=str(cache), **preset)
        if cfg.batch_size < 1 or cfg.n_layer < 1 or cfg.n_head < 1 or cfg.n_embd < 1:
            raise CommandError("--batch-size, --layers, --heads and --width must be positive")
        if not 0 <= cfg.holdout < 1:
            raise CommandError("--holdout must be in [0, 1)")
        if not 0 <= cfg.dropout < 1 or not 0 <= cfg.label_smoothing < 1:
            raise CommandError("--dropout and --label-smoothing must be in [0, 1)")
        if cfg.min_count < 1 or not 1 <= cfg.max_words <= 64:
            raise CommandError("--min-count must be >= 1 and --max-words in 1..64")
        try:
            card = CaptionTrainer(cfg, log=lambda m: self.stdout.write(m), progress=not o["no_progress"],
                                  replace=o["replace"]).run()
        except (DataError, TrainingError) as exc:
            raise CommandError(str(exc)) from exc
        last = (card["metrics"]["per_epoch"] or [{}])[-1]
        scores = ", ".join(f"{k} {last[k]:.3f}" for k in ("cider", "bleu4", "mentions_article_type", "mentions_colour",
                                                           "mentions_gender") if isinstance(last.get(k), float))
        self.stdout.write(self.style.SUCCESS(
            f"saved {o['out']} (weights sha256 {card['weights']['sha256'][:12]}){'; ' + scores if scores else ''}; "
            f"load it with BACKEND 'mmsearch.plugins.captioner.TrunkCaptioner', "
            f"OPTIONS {{'path': '{Path(o['out']).resolve()}'}}"))
