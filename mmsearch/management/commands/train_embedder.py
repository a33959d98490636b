"""manage.py train_embedder: train the product image-text embedder (CLIP objective) on catalog files."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

# Presets fill in what the flags leave unset. "default" is the recipe `make train` uses (see README,
# "Training and evaluation"); "demo" trains in a few minutes on the bundled 81-product grocery catalog.
# What the default and scratch presets share (README, "How the recipe was chosen").
_RECIPE = {"batch_size": 128, "text_mix": (0.5, 0.5, 0.0), "init_temperature": 0.1, "photo_repeat": 3,
           "balance_photo_products": True, "batch_by_source": False, "photo_pair_weight": 0.25, "facet_weight": 1.0,
           "facet_photos": False, "photo_min_crop": 0.25, "holdout_products": 0.1}
PRESETS: dict[str, dict] = {
    # The ImageNet-pretrained EfficientNet-Lite0 trunk, locked, trained on its cached features of fixed views;
    # the image head (over every stage's mean and a colour histogram), the text projection and token bag train.
    "default": {**_RECIPE, "arch": "effl0-128-ms", "epochs": 20, "batch_size": 512, "lr": 1e-3, "cached_views": 2,
                "cached_photo_views": 8},
    # For a CUDA GPU: the same recipe with the pretrained trunk fine-tuned too, 8 epochs (README, "On a GPU");
    # on 2 CPU cores it would take about 6 hours.
    "gpu": {**_RECIPE, "arch": "effl0-128-ft", "epochs": 8, "lr": 1e-3},
    # The from-scratch LCNet recipe that was the default until run 6 (README, "Measured").
    "scratch": {**_RECIPE, "arch": "lcnet050-64", "epochs": 18, "lr": 5e-3},
    "demo": {"arch": "lcnet050-64", "epochs": 150, "batch_size": 64, "lr": 2e-3, "holdout": 0.0,
             "text_mix": (0.4, 0.3, 0.3)},
    "tiny": {"arch": "rn-tiny-32", "epochs": 1, "batch_size": 8, "lr": 1e-3},
}


class Command(BaseCommand):
    help = ("Train an open_clip image-text model on products (and shopper photos) with the CLIP objective; "
            "writes an open_clip local-dir folder + model_card.json that the OpenClipEmbedder plugin loads.")

    def add_arguments(self, parser):
        parser.add_argument("--data", action="append", required=True, help="products.jsonl (repeatable)")
        parser.add_argument("--photos", action="append", default=[], help="photos-<split>.jsonl of those products")
        parser.add_argument("--init", help="start from a trained folder, ARCH:TAG (hub) or ARCH:/path/checkpoint")
        parser.add_argument("--out", required=True, type=Path, help="output folder (resumed when it holds this run)")
        parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
        parser.add_argument("--arch", help="architecture for a fresh model (see mmsearch.training.model.ARCHS)")
        parser.add_argument("--epochs", type=int)
        parser.add_argument("--batch-size", type=int)
        parser.add_argument("--lr", type=float)
        parser.add_argument("--holdout", type=float, help="share of titles held out for validation (default 0.1)")
        parser.add_argument("--holdout-products", type=float,
                            help="share of the other products also held out, by sku (written to "
                                 "heldout-products.jsonl; default preset 0.1)")
        parser.add_argument("--cached-views", type=int,
                            help="locked pretrained trunk: train on its cached features of this many views of "
                                 "each catalog image (0 = run the trunk every step; default preset 2)")
        parser.add_argument("--cached-photo-views", type=int,
                            help="the same for shopper photos and their products' catalog images (default 8)")
        parser.add_argument("--batch-by-source", action=argparse.BooleanOptionalAction, default=None,
                            help="draw each batch from one data file (default of the preset) or mix the files")
        parser.add_argument("--photo-repeat", type=int, help="times each shopper photo is seen per epoch")
        parser.add_argument("--balance-photo-products", action=argparse.BooleanOptionalAction, default=None,
                            help="show a product's catalog image as often as its shopper photos")
        parser.add_argument("--hard-batches", type=float,
                            help="share of items batched by category family (hard negatives), 0..1")
        parser.add_argument("--photo-pair-weight", type=float,
                            help="weight of an extra photo <-> catalog-image contrastive loss (0 = off)")
        parser.add_argument("--facet-weight", type=float,
                            help="weight of an extra loss of each image against the prompts for every value of "
                                 "each attribute and category level (0 = off)")
        parser.add_argument("--facet-photos", action=argparse.BooleanOptionalAction, default=None,
                            help="apply the facet loss to shopper photos too, or to catalog images only (the "
                                 "default preset)")
        parser.add_argument("--min-crop", type=float,
                            help="smallest area a random crop keeps of a catalog image (default 1: no zoom)")
        parser.add_argument("--photo-min-crop", type=float,
                            help="the same for shopper photos and their products' catalog images (default preset 0.25)")
        parser.add_argument("--init-temperature", type=float, help="starting softmax temperature (then learned)")
        parser.add_argument("--max-steps", type=int, help="stop after this many steps (smoke runs)")
        parser.add_argument("--checkpoint-every", type=float, default=60.0,
                            help="seconds between resumable checkpoints (also written after the last epoch)")
        parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--threads", type=int, default=1,
                            help="torch CPU threads (default 1: on busy shared cores extra threads spin-wait; "
                                 "measured 7x more CPU per step with 2 threads at load 10 on 2 cores)")
        parser.add_argument("--cache-dir", type=Path, help="decoded images / text features (default models/cache)")
        parser.add_argument("--replace", action="store_true",
                            help="when --out holds a different run (e.g. the demo model), train anew over it "
                                 "instead of stopping; the same run is still resumed")
        parser.add_argument("--text-mix", type=float, nargs=3, metavar=("FULL", "TITLE", "FACET"),
                            help="shares of the texts paired with an image: full product text, title, one facet "
                                 "(default preset 0.5 0.5 0)")
        parser.add_argument("--texts", type=Path,
                            help="JSONL of {\"sku\", \"texts\": [...]}: listed training products train on these "
                                 "texts instead of their title and product text (none: left out); e.g. a bootstrap's "
                                 "training-texts.jsonl")
        parser.add_argument("--no-progress", action="store_true")
        boot = parser.add_argument_group("bootstrapping (caption, filter, retrain; docs/quality.md)")
        boot.add_argument("--corrupt-titles", type=float, default=0.0,
                          help="swap this share of the training titles in pairs of products of another article type "
                               "or colour, reproducibly for --seed (the noisy catalog of the ablation)")
        boot.add_argument("--bootstrap", action="store_true",
                          help="caption the training images and filter the texts with a first model, then train on "
                               "what survives")
        boot.add_argument("--captions", action=argparse.BooleanOptionalAction, default=True,
                          help="add the captioner's captions (--no-captions: filter only)")
        boot.add_argument("--captions-for", choices=("all", "dropped"), default="all",
                          help="add a kept caption beside every kept text (all), or only to the products whose own "
                               "text the filter dropped (dropped)")
        boot.add_argument("--filter", action=argparse.BooleanOptionalAction, default=True,
                          help="filter original texts and captions by the first model's match score (--no-filter: "
                               "captions only)")
        boot.add_argument("--captioner", type=Path, help="TrunkCaptioner folder that writes the captions")
        boot.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling of the captions")
        boot.add_argument("--caption-temperature", type=float, default=1.0)
        boot.add_argument("--folds", type=int, default=2,
                          help="2: two first models on halves of the products score each other's half; 1: one "
                               "first model scores its own training pairs")
        boot.add_argument("--first-epochs", type=int, help="epochs of the first models (default: --epochs)")
        boot.add_argument("--first-dir", type=Path,
                          help="folder of the first models (default OUT/bootstrap; share it between runs on the "
                               "same data to train them once)")
        boot.add_argument("--filter-score", choices=("cosine", "csls"), default="csls")
        boot.add_argument("--filter-recall", type=float, default=0.9,
                          help="threshold: the score under which this share of injected title swaps fall")
        boot.add_argument("--filter-threshold", type=float, help="a fixed threshold of --filter-score instead")
        boot.add_argument("--filter-rounds", type=int, default=1,
                          help="N > 1: train the first models again on the texts the previous round kept, and "
                               "filter with those (each round trains --folds more models)")

    def handle(self, *args, **o):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here: never try to download
        from mmsearch.training.data import DataError
        from mmsearch.training.trainer import TrainConfig, Trainer, TrainingError

        if o["threads"]:
            import torch

            torch.set_num_threads(o["threads"])
        preset = dict(PRESETS[o["preset"]])
        for key in ("arch", "epochs", "batch_size", "lr", "holdout", "holdout_products", "cached_views",
                    "cached_photo_views", "photo_repeat", "batch_by_source",
                    "balance_photo_products", "hard_batches", "photo_pair_weight", "facet_weight", "facet_photos",
                    "min_crop", "photo_min_crop", "init_temperature", "text_mix"):
            if o.get(key) is not None:
                preset[key] = o[key]
        cache = o["cache_dir"] or Path(settings.BASE_DIR) / "models" / "cache"
        cfg = TrainConfig(data=[str(p) for p in o["data"]], photos=[str(p) for p in o["photos"]], init=o["init"],
                          out=str(o["out"]), seed=o["seed"], device=o["device"], max_steps=o["max_steps"],
                          checkpoint_every_s=o["checkpoint_every"], texts=str(o["texts"]) if o["texts"] else None,
                          cache_dir=str(cache), **preset)
        if cfg.texts and not Path(cfg.texts).is_file():
            raise CommandError(f"--texts {cfg.texts}: no such file")
        if cfg.texts and (o["bootstrap"] or o["corrupt_titles"]):
            raise CommandError("--texts cannot be combined with --bootstrap or --corrupt-titles (they write the texts)")
        if cfg.batch_size < 2:
            raise CommandError("--batch-size must be at least 2 (a contrastive batch needs negatives)")
        if not (0 <= cfg.holdout < 1 and 0 <= cfg.holdout_products < 1):
            raise CommandError("--holdout and --holdout-products must be in [0, 1)")
        if cfg.cached_views < 0 or cfg.cached_photo_views < 1:
            raise CommandError("--cached-views must be >= 0 and --cached-photo-views >= 1")
        if not 0 <= cfg.hard_batches <= 1:
            raise CommandError("--hard-batches must be in [0, 1]")
        if not (0 < cfg.min_crop <= 1 and 0 < cfg.photo_min_crop <= 1):
            raise CommandError("--min-crop and --photo-min-crop must be in (0, 1]")
        if cfg.photo_pair_weight < 0:
            raise CommandError("--photo-pair-weight must be >= 0")
        if cfg.facet_weight < 0:
            raise CommandError("--facet-weight must be >= 0")
        if not cfg.init_temperature > 0:
            raise CommandError("--init-temperature must be positive")
        from mmsearch.training import bootstrap
        from mmsearch.training.matching import MatchingError

        boot = bootstrap.BootstrapConfig(
            corrupt_titles=o["corrupt_titles"], bootstrap=o["bootstrap"], captions=o["captions"],
            captions_for=o["captions_for"], filter=o["filter"],
            captioner=str(o["captioner"]) if o["captioner"] else None, top_p=o["top_p"],
            temperature=o["caption_temperature"], folds=o["folds"], first_epochs=o["first_epochs"],
            first_dir=str(o["first_dir"]) if o["first_dir"] else None, filter_score=o["filter_score"],
            filter_recall=o["filter_recall"], filter_threshold=o["filter_threshold"],
            filter_rounds=o["filter_rounds"])
        log = lambda m: self.stdout.write(m)  # noqa: E731
        try:
            if boot.bootstrap or boot.corrupt_titles:
                card = bootstrap.run(cfg, boot, log=log, progress=not o["no_progress"], replace_run=o["replace"])
            else:
                card = Trainer(cfg, log=log, progress=not o["no_progress"], replace=o["replace"]).run()
        except (DataError, TrainingError, MatchingError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(self.style.SUCCESS(
            f"saved {o['out']} (weights sha256 {card['weights']['sha256'][:12]}); "
            f"load it with OPTIONS {{'pretrained': 'local-dir:{Path(o['out']).resolve()}'}}"))
