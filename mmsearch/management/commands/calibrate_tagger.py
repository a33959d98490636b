"""manage.py calibrate_tagger: fit the zero-shot tagger's calibration file on a catalog's known attribute values.

Per tag group (an attribute key; its tags are the distinct values, as the vocabulary command makes them): an
optional few-shot adapter on one part of the products and, with --neighbours, a cache of labelled catalog images
that vote for their tags (chosen on the same part), then on the other part (which the adapter never saw) a
temperature, the ECE before and after (15 bins), and the auto-accept threshold at a target precision with its
coverage. Writes tagger.json (+ tagger.npz) beside the model, where the tagger plugin and `evaluate` find it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

DEFAULT_GROUPS = ("colour", "article_type", "gender", "usage")
CALIBRATION_SHARE = 0.3


def _skus(path: Path) -> set[str]:
    """The skus of a products.jsonl (images are not needed to leave a product out)."""
    out: set[str] = set()
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CommandError(f"--exclude {path}:{line_no}: bad JSON ({exc.msg} at column {exc.colno})") from exc
            sku = row.get("sku") if isinstance(row, dict) else None
            if not isinstance(sku, str) or not sku.strip():
                raise CommandError(f"--exclude {path}:{line_no}: a row without a 'sku'")
            out.add(sku.strip())
    return out


def seen_by_embedder(folder: Path | None, data: list[Path], skus: set[str]) -> set[str]:
    """The skus among `skus` that the embedder in `folder` was trained on, by its model_card.json: products of its
    training files other than its held-out files. Empty when there is no card."""
    card_path = folder / "model_card.json" if folder else None
    if card_path is None or not card_path.is_file():
        return set()
    try:
        card = json.loads(card_path.read_text())
        info = card.get("data") or {}
        trained_files = {str(Path(f).resolve()) for f in info.get("files", [])}
        held: set[str] = set()
        for key in ("held_out_file", "held_out_by_product_file"):
            if info.get(key) and (folder / info[key]).is_file():
                held |= _skus(folder / info[key])
    except (OSError, ValueError, AttributeError, TypeError):
        return set()
    seen: set[str] = set()
    for path in data:
        if str(path.resolve()) in trained_files:
            seen |= _skus(path) & skus
    return seen - held


class Command(BaseCommand):
    help = ("Fit the zero-shot tagger's calibration (per tag group: temperature, few-shot adapter, auto-accept "
            "threshold at a target precision) on products with known attribute values; writes DIR/tagger.json.")

    def add_arguments(self, parser):
        from mmsearch.training import calibration as C

        parser.add_argument("--model", default="embedder", help="MMSEARCH_MODELS embedder alias or model folder")
        parser.add_argument("--data", action="append", required=True, type=Path,
                            help="products.jsonl with attribute values (repeatable)")
        parser.add_argument("--exclude", action="append", default=[], type=Path,
                            help="products.jsonl whose skus are left out, e.g. the trainer's held-out files "
                                 "(repeatable)")
        parser.add_argument("--neighbours", action="append", default=[], type=Path,
                            help="products.jsonl whose images, with their attribute values, form a neighbour cache "
                                 "that votes for tags (repeatable; products of --data and --exclude are left out), "
                                 "e.g. the catalog the embedder trained on")
        parser.add_argument("--flip", action="store_true",
                            help="score each image with its mirror image too (test-time augmentation: twice the "
                                 "image embedding work when tagging); the tagger follows the file")
        parser.add_argument("--groups", help="comma-separated attribute keys (default: those of "
                                             f"{','.join(DEFAULT_GROUPS)} present in the data)")
        parser.add_argument("--target-precision", type=float, default=0.95,
                            help="the auto-accept threshold reaches this precision (default 0.95)")
        parser.add_argument("--calibration-share", type=float, default=CALIBRATION_SHARE,
                            help="share of the products (by a hash of the sku) kept for calibration (default "
                                 f"{CALIBRATION_SHARE}); the rest fits the adapters")
        parser.add_argument("--min-examples", type=int, default=C.MIN_ADAPTER_EXAMPLES,
                            help="labelled adapter-fit products a group needs for an adapter (default "
                                 f"{C.MIN_ADAPTER_EXAMPLES})")
        parser.add_argument("--no-adapters", action="store_true", help="calibrate the zero-shot scores only")
        parser.add_argument("--out", type=Path, help="calibration file (default: tagger.json in --model's folder)")
        parser.add_argument("--plots", type=Path, help="folder for the reliability diagram (reliability.png)")
        parser.add_argument("--json", type=Path, dest="json_out", help="write the full report here")
        parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (see train_embedder --threads)")
        parser.add_argument("--cache-dir", type=Path, help="cache image vectors per (model_key, file) here")
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, model: str, data: list[Path], exclude: list[Path], neighbours: list[Path],
               flip: bool, groups: str | None,
               target_precision: float, calibration_share: float, min_examples: int, no_adapters: bool,
               out: Path | None, plots: Path | None, json_out: Path | None, threads: int, cache_dir: Path | None,
               no_progress: bool, **options):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        if not 0 < target_precision < 1:
            raise CommandError(f"--target-precision {target_precision}: must be between 0 and 1")
        if not 0 < calibration_share < 1:
            raise CommandError(f"--calibration-share {calibration_share}: must be between 0 and 1")
        if min_examples < 1:
            raise CommandError(f"--min-examples {min_examples}: must be at least 1")
        for path in [*data, *exclude, *neighbours]:
            if not path.is_file():
                raise CommandError(f"{path}: no such file")
        import numpy as np
        import torch
        from tqdm import tqdm

        torch.set_num_threads(max(1, threads))
        from mmsearch.plugins import PluginError
        from mmsearch.plugins import zeroshot as Z
        from mmsearch.training import calibration as C
        from mmsearch.training import data as D
        from mmsearch.training.evaluation import image_vectors, load_embedder

        t0 = time.time()
        timings: dict[str, float] = {}
        try:
            embedder = load_embedder(model)
            embedder.embed_texts(["warm-up"])  # loads the weights now, so a broken model fails before the work
        except (D.DataError, PluginError, ValueError, OSError, RuntimeError) as exc:
            raise CommandError(f"--model {model}: {str(exc).splitlines()[0]}") from exc
        if out is None:
            source = getattr(embedder, "source", None)
            if getattr(source, "kind", None) != "folder":
                raise CommandError(f"--out is needed: --model {model} is not a local model folder")
            out = Path(source.ref) / Z.CALIBRATION_NAME
        try:
            catalog = D.load_catalog(data)
        except D.DataError as exc:
            raise CommandError(str(exc)) from exc
        excluded: set[str] = set()
        for path in exclude:
            excluded |= _skus(path)
        products = [p for p in catalog.products if p.sku not in excluded]
        if not products:
            raise CommandError("no products left after --exclude")
        pool = []
        if neighbours:
            try:
                left_out = excluded | {p.sku for p in catalog.products}
                pool = [p for p in D.load_catalog(neighbours).products if p.sku not in left_out]
            except D.DataError as exc:
                raise CommandError(str(exc)) from exc
        present = {k for p in products for k in p.attributes}
        if groups:
            keys = [k.strip() for k in groups.split(",") if k.strip()]
            for key in keys:
                if key not in present:
                    raise CommandError(f"--groups {key}: no product of --data (after --exclude) has that attribute")
        else:
            keys = [k for k in DEFAULT_GROUPS if k in present]
            if not keys:
                raise CommandError(
                    f"the data has none of the attributes {', '.join(DEFAULT_GROUPS)}: name them with --groups")
        # The vocabulary: every value of these products and of the neighbour catalog (the merchant's tags), so a
        # value the calibration products happen to lack is still a tag.
        vocab = Z.vocabulary_from_products(products + pool, keys)
        key_of = {Z.group_slug(k): k for k in keys}
        skipped = [f"{k}: {len({Z.attribute_value(p, k) for p in products + pool} - {None})} distinct values (needs 2.."
                   f"{Z.MAX_GROUP_VALUES})" for k in keys if Z.group_slug(k) not in {g.slug for g in vocab}]
        if not vocab:
            raise CommandError("no group to calibrate: " + "; ".join(skipped))
        labelled = [p for p in products if any(Z.attribute_value(p, key_of[g.slug]) is not None for g in vocab)]
        cal_mask = np.array([D.in_share(f"tagger-calibration|{p.sku}", calibration_share) for p in labelled])
        inner = np.array([D.in_share(f"tagger-inner|{p.sku}", C.INNER_SHARE) for p in labelled])
        self.stdout.write(f"{len(labelled)} labelled products ({len(excluded & {p.sku for p in catalog.products})} "
                          f"excluded): {int((~cal_mask).sum())} fit the adapters, {int(cal_mask.sum())} calibrate; "
                          f"groups {', '.join(g.slug for g in vocab)}")
        source = getattr(embedder, "source", None)
        seen = seen_by_embedder(Path(source.ref) if getattr(source, "kind", None) == "folder" else None, data,
                                {p.sku for p in labelled})
        if seen:
            self.stdout.write(self.style.WARNING(
                f"warning: the embedder was trained on {len(seen)} of these {len(labelled)} products (its "
                "model_card.json): scores on them are better than on new products, so the temperatures come out too "
                "sharp and the thresholds too low for new products (docs/tagging.md, Limits)"))

        def embed(products, desc: str, timing: str, mirror: bool = False):
            """Unit image vectors of the products' first images (with mirror: of their mirror images; cached in
            cache_dir), with a progress bar."""
            started = time.time()
            bar = tqdm(total=len(products), desc=desc, disable=no_progress, mininterval=1.0, file=sys.stderr)
            try:
                return image_vectors(embedder, [p.images[0] for p in products], cache_dir,
                                     lambda done: bar.update(done - bar.n), flip=mirror)
            except D.DataError as exc:
                raise CommandError(str(exc)) from exc
            finally:
                bar.close()
                timings[timing] = round(time.time() - started, 2)

        x = embed(labelled, "embed images", "embed_images")
        if flip:
            x = Z.flip_average(x, embed(labelled, "embed mirror images", "embed_mirror_images", mirror=True))
        key_products, keys = [], None
        if neighbours:
            key_products = [p for p in pool if any(Z.attribute_value(p, key_of[g.slug]) is not None for g in vocab)]
            if not key_products:
                raise CommandError("--neighbours: no labelled product left after leaving out --data and --exclude")
            # Rounded as the calibration file stores them, so the choice sees what the tagger serves.
            keys = embed(key_products, "embed neighbour images", "embed_neighbours")
            if flip:  # keys in the space of the images they vote on
                keys = Z.flip_average(keys, embed(key_products, "embed neighbour mirror images",
                                                  "embed_neighbour_mirrors", mirror=True))
            keys = keys.astype(np.float16).astype(np.float32)
            self.stdout.write(f"neighbour cache: {len(key_products)} labelled products")

        t = time.time()
        fits: list[C.GroupFit] = []
        for group in tqdm(vocab, desc="fit groups", disable=no_progress, file=sys.stderr):
            key = key_of[group.slug]
            y = Z.labels_for(group, [Z.attribute_value(p, key) for p in labelled])
            prompts = Z.prompt_vectors(embedder, group)
            started = time.time()
            cache = None
            if keys is not None:
                cache = (keys, Z.labels_for(group, [Z.attribute_value(p, key) for p in key_products]))
            fit = C.fit_group(group, prompts, x[~cal_mask], y[~cal_mask], inner[~cal_mask], x[cal_mask], y[cal_mask],
                              target_precision=target_precision, adapters=not no_adapters,
                              min_adapter_examples=min_examples, neighbours=cache)
            if isinstance(fit, str):
                skipped.append(fit)
                self.stdout.write(f"  {fit}")
                continue
            timings[f"fit_{group.slug}"] = round(time.time() - started, 2)
            fits.append(fit)
            e = fit.entry
            zs, ad = e["zero_shot"], e["adapted"]
            accept = (f"auto-accept >= {e['threshold']:.3f}: precision {e['precision']:.3f}, "
                      f"coverage {e['coverage']:.3f}" if e["threshold"] is not None
                      else f"no threshold reaches precision {target_precision}")
            self.stdout.write(
                f"  {group.slug} ({len(group.tags)} tags; {e['examples']['fit']} fit / {e['examples']['calibration']} "
                f"calibration): zero-shot acc {zs['accuracy']:.3f}"
                + (f", adapted {ad['accuracy']:.3f}" if ad else f" ({e['adapter_note']})")
                + (f" ({e['neighbour_note']})" if keys is not None else "")
                + f"; ECE {e['ece_before']:.3f} -> {e['ece_after']:.3f} (T {e['temperature']:.3f}); {accept}")
        timings["fit"] = round(time.time() - t, 2)
        if not fits:
            raise CommandError("no group could be calibrated: " + "; ".join(skipped))
        meta = {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "data": [{"path": str(p), "sha256": D.fingerprint([p])} for p in data],
            "exclude": [str(p) for p in exclude],
            "neighbours": {"files": [str(p) for p in neighbours], "products": len(key_products)},
            "split": {"calibration_share": calibration_share, "key": "tagger-calibration|<sku>",
                      "inner_share": C.INNER_SHARE},
            "target_precision": target_precision,
            "adapters": not no_adapters,
            "min_adapter_examples": min_examples,
            "min_calibration_examples": C.MIN_CALIBRATION_EXAMPLES,
            "min_accepted": C.MIN_ACCEPTED,
            "skipped": skipped,
            "seen_by_embedder": {"products": len(seen), "of": len(labelled)},
        }
        raw = C.write_calibration(out, embedder.model_key, fits, meta, flip=flip)
        written = [str(out)]
        if plots:
            written.append(str(C.write_reliability(fits, plots / "reliability.png",
                                                   f"{embedder.model_key} calibration {raw['version']}")))
        timings["total"] = round(time.time() - t0, 2)
        if json_out:
            report = {**raw, "timings": timings,
                      "groups": {f.group.slug: {**f.entry, "reliability": f.reliability} for f in fits}}
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(report, indent=2))
            written.append(str(json_out))
        self.stdout.write(f"calibration {raw['version']} for {embedder.model_key} in {timings['total']:.0f}s; "
                          f"wrote {', '.join(written)}")
