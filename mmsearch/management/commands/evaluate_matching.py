"""manage.py evaluate_matching: how well each match score flags products whose title or images were swapped."""

from __future__ import annotations

import json
import os
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = ("Evaluate the image-text match scores (mmsearch.training.matching) on a copy of a catalog in which "
            "titles, then images, of a share of the products are swapped in pairs (reproducible for --seed): ROC AUC, "
            "and precision and recall at the default threshold, per score, as JSON; plus the worst matches of the "
            "uncorrupted catalog.")

    def add_arguments(self, parser):
        from mmsearch.training.matching import FRACTIONS, TARGET_PRECISION, TEXTS

        parser.add_argument("--data", required=True, type=Path, help="products.jsonl (interchange format)")
        parser.add_argument("--model", default="embedder", help="MMSEARCH_MODELS alias or model folder")
        parser.add_argument("--json", required=True, type=Path, dest="json_out", help="write the report here")
        parser.add_argument("--seed", type=int, default=0, help="corruption seed (default 0)")
        parser.add_argument("--fraction", type=float, action="append", dest="fractions",
                            help=f"share of products corrupted (repeatable; default {' and '.join(map(str, FRACTIONS))})")
        parser.add_argument("--text", choices=TEXTS, action="append", dest="texts",
                            help="text matched against the images (repeatable; default: both)")
        parser.add_argument("--target-precision", type=float, default=TARGET_PRECISION,
                            help=f"precision the default threshold is chosen for (default {TARGET_PRECISION})")
        parser.add_argument("--itm", type=Path, help="also score with this ITM head folder (manage.py train_matcher)")
        parser.add_argument("--top", type=int, default=20, help="worst matches of the clean catalog to list")
        parser.add_argument("--cache-dir", type=Path, help="cache image vectors per (model_key, file) here")
        parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, data: Path, model: str, json_out: Path, seed: int, fractions: list[float] | None,
               texts: list[str] | None, target_precision: float, top: int, cache_dir: Path | None, threads: int,
               no_progress: bool, itm: Path | None = None, **options):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from tqdm import tqdm

        from mmsearch.management.commands.match_report import Command as Report
        from mmsearch.management.commands.match_report import matching_embedder
        from mmsearch.training import data as D
        from mmsearch.training import matching

        fractions = fractions or list(matching.FRACTIONS)
        for f in fractions:
            if not 0 < f <= 1:
                raise CommandError(f"--fraction {f}: must be in (0, 1]")
        if not 0 < target_precision < 1:
            raise CommandError(f"--target-precision {target_precision}: must be between 0 and 1")
        if threads < 1 or top < 0:
            raise CommandError("--threads must be at least 1 and --top at least 0")
        if not data.is_file():
            raise CommandError(f"{data}: no such file")
        if json_out.is_dir():
            raise CommandError(f"--json {json_out} is a folder; give a file path")
        try:
            products = D.load_products(data)
        except D.DataError as exc:
            raise CommandError(str(exc)) from exc
        if len(products) < 4:
            raise CommandError(f"{data}: {len(products)} products with images; the evaluation needs at least 4")
        import torch

        torch.set_num_threads(threads)
        embedder = Report._model(lambda: matching_embedder(model), f"--model {model}")
        head = self._itm(itm, products, cache_dir, no_progress) if itm is not None else None
        out = {"data": str(data), "by_text": {}, "itm": head and head["model_key"]}
        for text in texts or list(matching.TEXTS):
            bars: dict[str, tqdm] = {}

            def progress(stage: str, done: int, total: int) -> None:
                bar = bars.get(stage)
                if bar is None:
                    bar = bars[stage] = tqdm(total=total, desc=f"{text}: embed {stage}", disable=no_progress,
                                             mininterval=1.0, file=self.stderr._out)
                bar.update(done - bar.n)
                if done >= total:
                    bar.close()

            try:
                vectors = matching.product_vectors(embedder, products, text=text, cache_dir=cache_dir,
                                                   progress=progress)
            except D.DataError as exc:
                raise CommandError(str(exc)) from exc
            extra = None
            if head is not None:
                from mmsearch.training.itm import head_scores, text_vectors

                tv = text_vectors(head["encoder"], [matching.match_text(p, text) for p in products])
                extra = (lambda img, txt, tv=tv: {"itm": head_scores(head["model"], head["grids"][img], tv[txt])})
            result = matching.evaluate_matching(vectors, products, seed=seed, fractions=fractions,
                                                target_precision=target_precision, top=top, extra=extra)
            out["by_text"][text] = result
            for run_name, run in result["runs"].items():
                parts = []
                for name, s in run["scores"].items():
                    auc, p, r = (("-" if s[k] is None else f"{s[k]:.3f}") for k in ("roc_auc", "precision", "recall"))
                    parts.append(f"{name} AUC {auc} P {p} R {r}")
                self.stdout.write(f"{text} {run_name} ({run['corrupted']} swapped): " + "; ".join(parts))
        out["model_key"] = embedder.model_key
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(out, indent=2))
        self.stdout.write(f"wrote {json_out}")

    @staticmethod
    def _itm(folder: Path, products, cache_dir: Path | None, no_progress: bool) -> dict:
        """The ITM head of a folder, its text encoder and the grid of every product's first image."""
        import json

        from mmsearch.plugins import get_model, model_settings
        from mmsearch.training import itm

        try:
            model, config = itm.load_head(folder)
        except (OSError, ValueError) as exc:
            raise CommandError(f"--itm {folder}: {exc}") from exc
        wanted = config["text_model_key"]
        encoder = get_model("text_embedder") if "text_embedder" in model_settings() else None
        if encoder is None or encoder.model_key != wanted:
            raise CommandError(f"--itm {folder} reads texts with {wanted}; configure that text_embedder")
        grids, spec = itm.product_grids(products, cache_dir, colour_dim=model.cfg.colour_dim,
                                        trunk_arch=config["trunk"]["arch"], progress=not no_progress)
        if spec["identity"] != config["trunk"]["identity"]:
            raise CommandError(f"--itm {folder} was trained on trunk {config['trunk']['identity']}, not {spec['identity']}")
        key = json.loads((folder / "model_card.json").read_text()).get("model_key") if (folder / "model_card.json").is_file() else None
        return {"model": model, "encoder": encoder, "grids": grids, "model_key": key}
