"""Bootstrapped training (BLIP's CapFilt, for a catalog): caption, filter, retrain.

1. The data as it is: the training products of `TrainConfig.data` (the embedder's own split, so the held-out
   products are the same as without the bootstrap), each with its title, or, with `corrupt_titles`, a share of
   the titles swapped in pairs with products of another article type or colour (matching.corrupt, reproducible
   by seed): the noisy catalog of the ablation.
2. Captions (`captions`): the captioner (a TrunkCaptioner folder) writes one caption for each product's first
   image by nucleus sampling (top_p; BLIP found it beats beam search here, being more diverse), from the cached
   trunk grids (itm.product_grids: no trunk pass for an image the grid cache holds).
3. The filter (`filter`): a first model trained on the data as it is scores every original text and every
   caption against its product's image (matching.scores: cosine or CSLS). With `folds` = 2 two first models are
   trained, each on one half of the products (by sku), and each scores the other half, so no pair is scored by
   a model that trained on it (a model trained on a wrong title learns to match it). A text is kept when its
   score is above the threshold, by default the one under which `filter_recall` of title swaps injected into the
   scored products fall (matching.swap_threshold: fitted on the catalog itself, no noise rate assumed). With
   `filter_rounds` > 1 the filter is run again: first models trained only on the texts the previous round kept
   (cleaner pairs, so they tell a wrong text from a right one better) rescore every text.
4. The final model trains on what survives (TrainConfig.texts): each product's kept original text and kept
   caption (with `captions_for="dropped"`, a caption only where the original text was dropped); a product with
   neither is left out. Its model card records the settings and counts (`bootstrap`).

The first models' folders are under `first_dir` (default OUT/bootstrap), resumed like any run, so two
bootstraps that share them (the same data, corruption and first-model settings) train them once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from mmsearch.training import data as D
from mmsearch.training import matching
from mmsearch.training.trainer import TrainConfig, Trainer, TrainingError, training_split, write_texts

TEXTS_NAME = "training-texts.jsonl"
PRODUCTS_NAME = "training-products.jsonl"
CAPTIONS_NAME = "captions.jsonl"


@dataclass
class BootstrapConfig:
    """How the training texts are made (beside the TrainConfig of every model trained)."""

    corrupt_titles: float = 0.0  # share of the training titles swapped in pairs (the ablation's noise); 0 = none
    bootstrap: bool = False  # caption and/or filter, then retrain
    captions: bool = True  # add the captioner's captions (bootstrap)
    captions_for: str = "all"  # "all": beside every kept text (BLIP); "dropped": only where the filter dropped it
    filter: bool = True  # drop texts the first model scores as mismatched (bootstrap)
    captioner: str | None = None  # a TrunkCaptioner folder
    top_p: float = 0.9
    temperature: float = 1.0
    folds: int = 2  # 1: one first model scores its own training pairs; 2: two halves score each other
    first_epochs: int | None = None  # epochs of the first models (default: the final model's)
    first_dir: str | None = None  # where the first models are trained (default OUT/bootstrap)
    filter_score: str = matching.DEFAULT_SCORE
    filter_recall: float = 0.9  # the threshold catches this share of injected title swaps
    filter_threshold: float | None = None  # a fixed threshold instead (of filter_score)
    filter_rounds: int = 1  # rounds > 1: first models trained again on the texts the previous round kept rescore

    def check(self) -> None:
        if not 0 <= self.corrupt_titles <= 1:
            raise TrainingError(f"--corrupt-titles {self.corrupt_titles} must be in [0, 1]")
        if self.bootstrap and not (self.captions or self.filter):
            raise TrainingError("--bootstrap with --no-captions and --no-filter would change nothing")
        if self.bootstrap and self.captions and not self.captioner:
            raise TrainingError("--bootstrap with captions needs --captioner FOLDER (manage.py train_captioner)")
        if not 0 < self.top_p <= 1 or not self.temperature > 0:
            raise TrainingError("--top-p must be in (0, 1] and --temperature positive")
        if self.captions_for not in ("all", "dropped"):
            raise TrainingError(f"--captions-for {self.captions_for!r}: use all or dropped")
        if self.folds not in (1, 2):
            raise TrainingError(f"--folds {self.folds}: use 1 or 2")
        if self.first_epochs is not None and self.first_epochs < 1:
            raise TrainingError("--first-epochs must be at least 1")
        if self.filter_score not in matching.SCORES:
            raise TrainingError(f"--filter-score {self.filter_score!r}: use one of {', '.join(matching.SCORES)}")
        if self.filter_rounds < 1:
            raise TrainingError("--filter-rounds must be at least 1")
        if not 0 < self.filter_recall <= 1:
            raise TrainingError(f"--filter-recall {self.filter_recall} must be in (0, 1]")


def fold_of(sku: str, folds: int) -> int:
    """The fold of a product (a stable split by sku)."""
    return 0 if folds == 1 else D.key_hash("bootstrap-fold:" + sku) % folds


def caption_products(captioner_folder: str | Path, products: list[D.Product], cache_dir: Path | None, *,
                     top_p: float, temperature: float, seed: int, progress: bool = True) -> tuple[list[str], str]:
    """(the caption of each product's first image by nucleus sampling, the captioner's model_key)."""
    from mmsearch.plugins.captioner import TrunkCaptioner
    from mmsearch.training import itm

    try:
        captioner = TrunkCaptioner(str(captioner_folder), device="cpu", top_p=top_p, temperature=temperature,
                                   seed=seed, batch_size=256)
    except (FileNotFoundError, ValueError) as exc:
        raise TrainingError(f"--captioner: {str(exc).splitlines()[0]}") from exc
    spec = captioner.config["trunk"]
    tokens, channels = captioner.grid_shape
    grids, trunk = itm.product_grids(products, cache_dir, colour_dim=channels - captioner.trunk_channels,
                                     trunk_arch=spec["arch"], progress=progress)
    if trunk["identity"] != spec["identity"]:
        raise TrainingError(f"--captioner {captioner_folder}: its trunk {spec['identity']} is not the "
                            f"{spec['arch']} weights of this installation ({trunk['identity']})")
    return [c.text for c in captioner.caption_grids(grids)], captioner.model_key


def surviving_texts(originals: list[str], captions: list[str] | None, keep_original: np.ndarray,
                    keep_caption: np.ndarray, captions_for: str = "all") -> list[list[str]]:
    """Each product's training texts after the filter: its original text when kept, and its caption when kept
    (beside the original, or with captions_for="dropped" only in place of a dropped one); [] leaves it out."""
    out = []
    for i, original in enumerate(originals):
        kept = [original] if keep_original[i] else []
        if captions and keep_caption[i] and captions[i] not in kept and (captions_for == "all" or not kept):
            kept.append(captions[i])
        out.append(kept)
    return out


def _product_rows(image_rows: np.ndarray, products: list[D.Product], index: dict[Path, int]) -> np.ndarray:
    """The unit mean of each product's image vectors."""
    from mmsearch.plugins.runtime import unit_rows

    return unit_rows(np.stack([image_rows[[index[i.resolve()] for i in p.images]].mean(0) for p in products]))


def score_texts(folder: Path, products: list[D.Product], texts: list[list[str]], cache_dir: Path | None,
                score: str, progress: bool = True) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Scores of the first model in `folder` for each list of texts (one text per product) against the products'
    images (matching.scores, within the products given); and the product image vectors and the first list's
    text vectors."""
    from mmsearch.training.model import build_from_init
    from mmsearch.training.trainer import model_vectors

    built = build_from_init(str(folder))
    index: dict[Path, int] = {}
    paths: list[Path] = []
    for p in products:
        for img in p.images:
            if img.resolve() not in index:
                index[img.resolve()] = len(paths)
                paths.append(img)
    flat = [t for column in texts for t in column]
    rows, vecs = model_vectors(built, paths, flat, cache_dir, progress=progress)
    images = _product_rows(rows, products, index)
    out, n = [], len(products)
    for c in range(len(texts)):
        out.append(matching.scores(images, vecs[c * n:(c + 1) * n])[score])
    return out, images, vecs[:n]


def run(cfg: TrainConfig, boot: BootstrapConfig, *, log: Callable[[str], None] = print, progress: bool = True,
        replace_run: bool = False) -> dict:
    """Train the model of `cfg` on the texts `boot` makes (see the module docstring); returns its model card."""
    boot.check()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    catalog = D.load_catalog(cfg.data)
    with_photos = {ph.sku for path in cfg.photos for ph in D.load_photos(path, (p.sku for p in catalog.products))}
    train, _, _ = training_split(catalog.products, cfg.holdout, cfg.holdout_products, with_photos)
    if not train:
        raise TrainingError("no training products left after the held-out split; lower --holdout")
    extra: dict = {}
    originals = [p.title for p in train]
    corrupted = np.zeros(len(train), bool)
    if boot.corrupt_titles > 0:
        c = matching.corrupt(train, boot.corrupt_titles, cfg.seed, "title")
        originals = [p.title for p in c.products]
        corrupted = c.corrupted
        # The training products as they are trained on (e.g. for `train_captioner --data` on the same noise).
        D.write_products(c.products, out / PRODUCTS_NAME)
        extra["corruption"] = {"kind": "title", "fraction": boot.corrupt_titles, "seed": cfg.seed,
                               "training_products": len(train), "corrupted": int(corrupted.sum()),
                               "products_file": PRODUCTS_NAME}
        log(f"corruption: {int(corrupted.sum())} of {len(train)} training titles swapped (seed {cfg.seed})")
    as_is = {p.sku: [t] for p, t in zip(train, originals)}
    if not boot.bootstrap:
        return _train(replace(cfg, texts=str(write_texts(as_is, out / TEXTS_NAME))) if extra else cfg, extra, log,
                      progress, replace_run)

    captions: list[str] | None = None
    settings = {k: v for k, v in asdict(boot).items() if k not in ("corrupt_titles", "bootstrap")}
    summary: dict = {"settings": settings, "training_products": len(train)}
    if boot.captions:
        captions, key = caption_products(boot.captioner, train, Path(cfg.cache_dir) if cfg.cache_dir else None,
                                         top_p=boot.top_p, temperature=boot.temperature, seed=cfg.seed,
                                         progress=progress)
        summary["captioner"] = {"folder": str(boot.captioner), "model_key": key,
                                "distinct_captions": len(set(captions))}
        log(f"captions: {len(captions)} ({len(set(captions))} distinct) by {key}")
    keep_original = np.ones(len(train), bool)
    keep_caption = np.ones(len(train), bool)
    original_score = np.full(len(train), np.nan, np.float32)
    caption_score = np.full(len(train), np.nan, np.float32)
    if boot.filter:
        first_dir = Path(boot.first_dir) if boot.first_dir else out / "bootstrap"
        folds = np.array([fold_of(p.sku, boot.folds) for p in train])
        rounds = []
        for r in range(boot.filter_rounds):
            # Round r's first models train on what round r - 1 kept (round 0: on the texts as they are).
            trusted = keep_original.copy()
            thresholds = []
            for k in range(boot.folds):
                scored = np.flatnonzero(folds == k)
                texts = {p.sku: ([] if (boot.folds > 1 and folds[i] == k) or not trusted[i] else as_is[p.sku])
                         for i, p in enumerate(train)}
                name = f"first-{k}" if r == 0 else f"round{r + 1}-first-{k}"
                folder = first_dir / name
                first = replace(cfg, out=str(folder), epochs=boot.first_epochs or cfg.epochs,
                                texts=str(write_texts(texts, first_dir / f"{name}-texts.jsonl")))
                log(f"first model {k + 1}/{boot.folds}" + (f" of round {r + 1}" if boot.filter_rounds > 1 else "")
                    + f": {folder} ({first.epochs} epochs"
                    + (f", scores the {len(scored)} products it does not train on)" if boot.folds > 1 else ")"))
                _train(first, {}, log, progress, replace_run)
                part = [train[i] for i in scored]
                columns = [[originals[i] for i in scored]] + ([[captions[i] for i in scored]] if captions else [])
                got, images, title_vecs = score_texts(folder, part, columns,
                                                      Path(cfg.cache_dir) if cfg.cache_dir else None,
                                                      boot.filter_score, progress)
                if boot.filter_threshold is not None:
                    threshold = boot.filter_threshold
                else:
                    corrupted_part = [replace(p, title=originals[i]) for p, i in zip(part, scored)]
                    threshold = matching.swap_threshold(images, title_vecs, corrupted_part, boot.filter_recall,
                                                        boot.filter_score, cfg.seed)
                thresholds.append(round(threshold, 6))
                original_score[scored] = got[0]
                keep_original[scored] = got[0] > threshold
                if captions:
                    caption_score[scored] = got[1]
                    keep_caption[scored] = got[1] > threshold
            rounds.append({"thresholds": thresholds, "originals_kept": int(keep_original.sum()),
                           **_on_corruption(keep_original, corrupted)})
            if boot.filter_rounds > 1:
                log(f"filter round {r + 1}: kept {int(keep_original.sum())} of {len(train)} original texts")
        summary["filter"] = {"score": boot.filter_score, "thresholds": thresholds,
                             "originals_kept": int(keep_original.sum()),
                             "captions_kept": int(keep_caption.sum()) if captions else None}
        if boot.filter_rounds > 1:
            summary["filter"]["rounds"] = rounds
        if corrupted.any():  # how well the filter found the injected noise (known here, not to the filter)
            summary["filter"]["on_corruption"] = {
                **_on_corruption(keep_original, corrupted)["on_corruption"],
                "captions_kept_on_corrupted": int(keep_caption[corrupted].sum()) if captions else None}
        log("filter: kept {} of {} original texts".format(int(keep_original.sum()), len(train))
            + (f" and {int(keep_caption.sum())} of {len(train)} captions" if captions else "")
            + f" (threshold {', '.join(map(str, thresholds))})")
    final = dict(zip((p.sku for p in train), surviving_texts(originals, captions, keep_original, keep_caption,
                                                              boot.captions_for)))
    summary["products_trained"] = sum(1 for v in final.values() if v)
    summary["texts_trained"] = sum(len(v) for v in final.values())
    if captions:
        with (out / CAPTIONS_NAME).open("w", encoding="utf-8") as fh:
            for i, p in enumerate(train):
                fh.write(json.dumps({"sku": p.sku, "text": originals[i], "caption": captions[i],
                                     "text_score": _num(original_score[i]), "caption_score": _num(caption_score[i]),
                                     "text_kept": bool(keep_original[i]), "caption_kept": bool(keep_caption[i]),
                                     "corrupted": bool(corrupted[i])}, ensure_ascii=False) + "\n")
    extra["bootstrap"] = summary
    return _train(replace(cfg, texts=str(write_texts(final, out / TEXTS_NAME))), extra, log, progress, replace_run)


def _on_corruption(keep: np.ndarray, corrupted: np.ndarray) -> dict:
    """How the dropped texts meet the injected noise ({} without any)."""
    if not corrupted.any():
        return {}
    dropped = ~keep
    hit = int((dropped & corrupted).sum())
    return {"on_corruption": {"dropped": int(dropped.sum()), "dropped_corrupted": hit,
                              "precision": round(hit / max(1, int(dropped.sum())), 4),
                              "recall": round(hit / max(1, int(corrupted.sum())), 4)}}


def _num(x: float) -> float | None:
    return None if np.isnan(x) else round(float(x), 5)


def _train(cfg: TrainConfig, extra: dict, log, progress: bool, replace_run: bool) -> dict:
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg, log=log, progress=progress, replace=replace_run)
    trainer.card_extra = extra
    return trainer.run()
