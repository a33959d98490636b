"""Do accepted captions make poorly titled products findable? Search P@10 with and without them.

    MMSEARCH_DB_NAME=h_capbench MMSEARCH_AUTO_INDEX=0 MMSEARCH_EMBEDDER_PATH=models/embedder \
        MMSEARCH_CAPTIONER_PATH=models/captioner .venv/bin/python bench/caption_search.py [--reduced 1000]

A copy of the fashion catalog (a subset: --reduced products the captioner never trained on, from its folder's
heldout.jsonl, plus four times as many other fashion products, so the reduced ones are 20 %) is imported into the
database named by MMSEARCH_DB_NAME (never the main `mmsearch` database: the bench deletes every product there
first). The reduced products' titles are cut to their brand alone (the brand rule of the caption targets; the first
word when a title has none). A second pass then also removes their attributes (the category path stays), and
measures with and without the captions again.

Shopper queries target the reduced products: every (gender, colour, article type) that at least --min-targets
reduced products share, phrased as shoppers type (bench/search_quality.py's forms and templates). A hit is relevant
when it is a reduced product with those three values. Each query is searched before and after the captioner's
caption of every reduced product's main image is accepted (the caption job's task body, then the bulk accept and
the re-embedding of the changed product texts: the same path as a review in the admin). --targets-from picks the
reduced products from another held-out file (e.g. the embedder's, whose title split is the captioner's, so the
import and embedding can run while the captioner trains, with --wait-for-captioner); they are checked against the
captioner's heldout.jsonl before it captions anything. Reported per search mode:
mean P@10 (relevant hits in the top 10 / 10) and mean P@10 over what can be found (/ min(10, targets)).
Writes bench/results/caption_search.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mmsearch.settings")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
FASHION = ROOT.parent / "shared" / "datasets" / "fashion"
# name: (mode, weight overrides, query understanding), as in bench/search_quality.py
CONFIGS = {"lexical": ("lexical", {}, False), "text_vector": ("semantic", {"image_vector": 0.0}, False),
           "hybrid": ("hybrid", {}, True)}


def held_skus(path: Path) -> set[str]:
    return {json.loads(line)["sku"] for line in path.read_text().splitlines() if line.strip()}


def choose(held_file: Path, reduced: int, seed: int) -> tuple[list[dict], set[str]]:
    """The subset's rows (fashion products.jsonl rows) and the skus of the ones to reduce."""
    rng = random.Random(seed)
    rows = {r["sku"]: r for r in map(json.loads, (FASHION / "products.jsonl").read_text().splitlines()) if r.get("images")}
    held = sorted(s for s in held_skus(held_file) if s in rows)
    if len(held) < reduced:
        raise SystemExit(f"{held_file} has {len(held)} fashion products; ask for --reduced {len(held)}")
    targets = set(rng.sample(held, reduced))
    others = sorted(s for s in rows if s not in set(held))
    chosen = sorted(targets) + rng.sample(others, 4 * reduced)
    return [rows[s] for s in chosen], targets


def reduce_row(row: dict) -> dict:
    """The row with its title cut to the brand."""
    from mmsearch.training.caption.targets import brand_of

    brand = brand_of(row["title"], row.get("attributes") or {})
    return {**row, "title": " ".join(row["title"].split()[: max(1, len(brand))])}


def write_catalog(rows: list[dict], targets: set[str], folder: Path) -> Path:
    (folder / "images").symlink_to(FASHION / "images")
    path = folder / "products.jsonl"
    path.write_text("".join(json.dumps(reduce_row(r) if r["sku"] in targets else r) + "\n" for r in rows))
    return path


def wait_for_captioner(folder: Path, seconds: float) -> None:
    """Block until the captioner's training in `folder` has finished (its model card says so)."""
    deadline = time.monotonic() + seconds
    card = folder / "model_card.json"
    while not (card.is_file() and json.loads(card.read_text()).get("training", {}).get("finished")):
        if time.monotonic() > deadline:
            raise SystemExit(f"no finished captioner in {folder} after {seconds:.0f} s")
        time.sleep(20)


def queries_for(rows: list[dict], targets: set[str], min_targets: int, seed: int) -> list[dict]:
    from bench.search_quality import GENDER_FORMS, TEMPLATES, article_forms, colour_forms

    rng = random.Random(seed)
    key = lambda a: (a.get("gender"), a.get("colour"), a.get("article_type"))  # noqa: E731
    counts = Counter(key(r.get("attributes") or {}) for r in rows if r["sku"] in targets)
    out = []
    for (gender, colour, article), n in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0]))):
        if n < min_targets or gender not in GENDER_FORMS or not colour or not article:
            continue
        text = rng.choice(TEMPLATES).format(g=rng.choice(GENDER_FORMS[gender]), c=rng.choice(colour_forms(colour)),
                                            a=rng.choice(article_forms(article)))
        out.append({"q": text, "gender": gender, "colour": colour, "article_type": article, "targets": n})
    return out


def embed(product_ids: list[int], image_ids: list[int]) -> dict:
    """Vectors for these products and images with the embedder and text_embedder (the task bodies, in process)."""
    from django.conf import settings

    from mmsearch.plugins import get_model
    from mmsearch.search import vectors
    from workers.pipeline import run_images, run_products

    keys = {}
    for alias in ("embedder", "text_embedder"):
        if alias not in settings.MMSEARCH_MODELS:
            continue
        plugin = get_model(alias)
        keys[alias] = plugin.model_key
        if alias == "embedder" and image_ids:
            vectors.ensure_index("image", plugin.model_key, plugin.dim)
            run_images(alias, plugin.model_key, image_ids)
        vectors.ensure_index("product", plugin.model_key, plugin.dim)
        for start in range(0, len(product_ids), 512):
            run_products(alias, plugin.model_key, product_ids[start:start + 512])
        vectors.activate(alias, plugin.model_key, plugin.dim)
    return keys


def measure(queries: list[dict], target_attrs: dict[int, tuple]) -> dict:
    from django.conf import settings
    from django.test import override_settings

    from mmsearch.search.config import config
    from mmsearch.search.engine import search
    from mmsearch.search.params import SearchQuery

    out = {}
    for name, (mode, weights, understand) in CONFIGS.items():
        effective = config()
        conf = {**(settings.MMSEARCH_SEARCH or {}), "WEIGHTS_FILE": None, "WEIGHTS": {**effective["WEIGHTS"], **weights},
                "BOOSTS": effective["BOOSTS"], "UNDERSTAND": effective["UNDERSTAND"]}
        p10, reachable = [], []
        with override_settings(MMSEARCH_SEARCH=conf):
            for q in queries:
                hits = [h.product_id for h in search(SearchQuery(text=q["q"], mode=mode, limit=10, understand=understand)).hits]
                good = sum(target_attrs.get(pid) == (q["gender"], q["colour"], q["article_type"]) for pid in hits)
                p10.append(good / 10)
                reachable.append(good / min(10, q["targets"]))
        out[name] = {"mean_p@10": round(statistics.mean(p10), 4), "mean_p@10_reachable": round(statistics.mean(reachable), 4)}
        print(f"  {name:>12}: P@10 {out[name]['mean_p@10']:.3f}  (of what can be found: "
              f"{out[name]['mean_p@10_reachable']:.3f})", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reduced", type=int, default=1000, help="held-out products whose titles are reduced")
    parser.add_argument("--targets-from", type=Path, help="held-out file to pick the reduced products from "
                        "(default: the captioner's heldout.jsonl)")
    parser.add_argument("--wait-for-captioner", type=float, default=0.0,
                        help="seconds to wait for the captioner's training to finish before captioning")
    parser.add_argument("--min-targets", type=int, default=5, help="reduced products a query's values must have")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/caption_search.json")
    args = parser.parse_args(argv)
    import django

    django.setup()
    from django.conf import settings

    if settings.DATABASES["default"]["NAME"] == "mmsearch" or settings.MMSEARCH_AUTO_INDEX:
        raise SystemExit("run on a copy database with MMSEARCH_DB_NAME=... MMSEARCH_AUTO_INDEX=0: the bench deletes "
                         "every product of its database first and embeds in process")
    captioner_dir = Path(settings.MMSEARCH_CAPTIONER_PATH)
    if not args.wait_for_captioner and "captioner" not in settings.MMSEARCH_MODELS:
        raise SystemExit(f"no captioner at {captioner_dir} (set MMSEARCH_CAPTIONER_PATH)")
    import torch
    from django.core.management import call_command

    torch.set_num_threads(args.threads)
    call_command("services", "start", stdout=open(os.devnull, "w"))  # idempotent; creates the database
    call_command("migrate", verbosity=0)
    from catalog.importer import CatalogImporter
    from catalog.models import Caption, Product, ProductImage
    from catalog.review import set_status
    from mmsearch.plugins import get_model
    from workers.captioning import run_captions

    t0 = time.perf_counter()
    rows, targets = choose(args.targets_from or captioner_dir / "heldout.jsonl", args.reduced, args.seed)
    Product.objects.all().delete()
    with tempfile.TemporaryDirectory() as folder:
        report = CatalogImporter(write_catalog(rows, targets, Path(folder))).run()
    print(f"imported {report.created} products ({len(targets)} with the title cut to the brand) in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    ids = dict(Product.objects.values_list("sku", "pk"))
    target_ids = sorted(ids[s] for s in targets)
    by_sku = {r["sku"]: r for r in rows}
    target_attrs = {ids[s]: (a.get("gender"), a.get("colour"), a.get("article_type"))
                    for s in targets for a in [by_sku[s].get("attributes") or {}]}
    t1 = time.perf_counter()
    keys = embed(sorted(ids.values()), list(ProductImage.objects.values_list("pk", flat=True)))
    print(f"embedded in {time.perf_counter() - t1:.0f} s: {keys}", flush=True)
    queries = queries_for(rows, targets, args.min_targets, args.seed)
    print(f"{len(queries)} queries target the reduced products; titles cut, without captions:", flush=True)
    before = measure(queries, target_attrs)

    if args.wait_for_captioner:
        from mmsearch import plugins

        wait_for_captioner(captioner_dir, args.wait_for_captioner)
        settings.MMSEARCH_MODELS.setdefault("captioner", {
            "BACKEND": "mmsearch.plugins.captioner.TrunkCaptioner",
            "OPTIONS": {"path": str(captioner_dir), "beam_size": 3, "device": "auto"}})
        plugins.reset()
    unseen = targets - held_skus(captioner_dir / "heldout.jsonl")
    if unseen:
        raise SystemExit(f"{len(unseen)} reduced products (e.g. {sorted(unseen)[0]}) are not in {captioner_dir}/"
                         "heldout.jsonl: the captioner trained on them")
    captioner = get_model("captioner")
    t2 = time.perf_counter()
    for start in range(0, len(target_ids), 256):
        run_captions("captioner", captioner.model_key, target_ids[start:start + 256])
    caption_s = time.perf_counter() - t2
    accepted = set_status(Caption.objects.filter(product_id__in=target_ids, model_key=captioner.model_key), "accepted")
    embed(target_ids, [])  # the changed product texts, as the change path re-embeds them
    print(f"captioned and accepted {accepted} in {caption_s:.0f} s ({1000 * caption_s / max(1, accepted):.0f} ms a "
          "product, scoring included); titles cut, with captions:", flush=True)
    after = measure(queries, target_attrs)

    # The second pass: the reduced products lose their attributes too (one UPDATE, then their texts refreshed).
    from catalog.search_text import refresh_search_vectors

    Product.objects.filter(pk__in=target_ids).update(attributes={})
    refresh_search_vectors(target_ids)
    embed(target_ids, [])
    print("titles cut and attributes removed, with captions:", flush=True)
    bare_after = measure(queries, target_attrs)
    set_status(Caption.objects.filter(product_id__in=target_ids), "rejected")
    embed(target_ids, [])
    print("titles cut and attributes removed, without captions:", flush=True)
    bare_before = measure(queries, target_attrs)
    examples = list(Caption.objects.filter(product_id__in=target_ids[:8]).values_list("product__sku", "text", "score"))
    out = {
        "date": time.strftime("%Y-%m-%d"), "database": settings.DATABASES["default"]["NAME"],
        "catalog": {"products": len(rows), "reduced": len(targets),
                    "reduced_from": "captioner heldout.jsonl (never trained on)", "seed": args.seed},
        "models": {**keys, "captioner": captioner.model_key}, "queries": len(queries), "min_targets": args.min_targets,
        "title_cut": {"without_captions": before, "with_captions": after},
        "title_cut_no_attributes": {"without_captions": bare_before, "with_captions": bare_after},
        "captions_accepted": accepted,
        "caption_seconds": round(caption_s, 1),
        "examples": [{"sku": s, "original_title": by_sku[s]["title"], "caption": t, "score": sc} for s, t, sc in examples],
        "query_list": queries,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
