"""manage.py train_matcher: train the image-text matching head (mmsearch.training.itm) on a catalog's pairs."""

from __future__ import annotations

import os
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = ("Train the ITM head (a binary matched / not-matched classifier over the image trunk's grid and the "
            "title's sentence vector, with hard in-batch negatives) on the products of --data, less the skus of "
            "every --exclude file (the embedder's held-out files), into --out.")

    def add_arguments(self, parser):
        parser.add_argument("--data", required=True, type=Path, help="products.jsonl (interchange format)")
        parser.add_argument("--exclude", action="append", default=[], type=Path,
                            help="products.jsonl whose skus are left out (repeatable: keep evaluation products out)")
        parser.add_argument("--out", required=True, type=Path, help="the head's folder")
        parser.add_argument("--text-model", default="text_embedder", help="MMSEARCH_MODELS alias of the text encoder")
        parser.add_argument("--epochs", type=int, default=4)
        parser.add_argument("--batch-size", type=int, default=128)
        parser.add_argument("--lr", type=float, default=5e-4)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--cache-dir", type=Path, help="trunk grid and decoded image caches (make train: models/cache)")
        parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, data: Path, exclude: list[Path], out: Path, text_model: str, epochs: int, batch_size: int,
               lr: float, seed: int, cache_dir: Path | None, threads: int, no_progress: bool, **options):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch

        from mmsearch.plugins import PluginError, get_model
        from mmsearch.training import data as D
        from mmsearch.training import itm

        if epochs < 1 or batch_size < 2 or threads < 1 or not lr > 0:
            raise CommandError("--epochs and --threads must be at least 1, --batch-size at least 2, --lr positive")
        if out.exists() and not out.is_dir():
            raise CommandError(f"--out {out} is a file; give a folder")
        torch.set_num_threads(threads)
        try:
            products = D.load_products(data)
            left_out = {p.sku for path in exclude for p in D.load_products(path)}
        except D.DataError as exc:
            raise CommandError(str(exc)) from exc
        products = [p for p in products if p.sku not in left_out]
        if len(products) < batch_size:
            raise CommandError(f"{len(products)} products left to train on, fewer than --batch-size {batch_size}")
        try:
            encoder = get_model(text_model)
            encoder.embed_texts(["warm-up"])
        except (PluginError, ValueError, OSError, RuntimeError) as exc:
            raise CommandError(f"--text-model {text_model}: {str(exc).splitlines()[0]}") from exc
        t = time.time()
        grids, trunk = itm.product_grids(products, cache_dir, progress=not no_progress)
        texts = itm.text_vectors(encoder, [p.title for p in products])
        prep = time.time() - t
        self.stdout.write(f"{len(products)} products ({len(left_out)} skus excluded); grids and texts in {prep:.0f} s")
        model, history = itm.train_head(grids, texts, [p.title for p in products], epochs=epochs,
                                        batch_size=batch_size, lr=lr, seed=seed, log=self.stdout.write,
                                        progress=not no_progress)
        key = itm.save_head(out, model, trunk, encoder.model_key, {
            "data": str(data), "excluded": [str(p) for p in exclude], "products": len(products),
            "fingerprint": D.fingerprint([data])[:16],
            "hyperparameters": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed},
            "history": history, "seconds": round(time.time() - t, 1)})
        self.stdout.write(f"wrote {out} ({key})")
