"""Do accepted captions make poorly titled products findable? Search P@10 with and without them.

    MMSEARCH_DB_NAME=h_capbench MMSEARCH_AUTO_INDEX=0 MMSEARCH_EMBEDDER_PATH=models/embedder \
        MMSEARCH_CAPTIONER_PATH=models/captioner .venv/bin/python bench/caption_search.py [--reduced 1000]

A copy of the fashion catalog (a subset: --reduced products the captioner never trained on, from its folder's
heldout.jsonl, plus four times as many other fashion products, so the reduced ones are 20 %) is imported into the
database named by MMSEARCH_DB_NAME (never the main `mmsearch` database: the bench deletes every product there
first). The reduced products' titles are cut to their brand alone (the brand rule of the caption targets; the first
word when a title has none); with --reduce title+attributes their attributes go too (the category path stays).

Shopper queries target the reduced products: every (gender, colour, article type) that at least --min-targets
reduced products share, phrased as shoppers type (bench/search_quality.py's forms and templates). A hit is relevant
when it is a reduced product with those three values. Each query is searched before and after the captioner's
caption of every reduced product's main image is accepted (the caption job's task body, then the bulk accept and
the re-embedding of the changed product texts: the same path as a review in the admin). Reported per search mode:
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


def choose(captioner_dir: Path, reduced: int, seed: int) -> tuple[list[dict], set[str]]:
    """The subset's rows (fashion products.jsonl rows) and the skus of the ones to reduce."""
    rng = random.Random(seed)
    rows = {r["sku"]: r for r in map(json.loads, (FASHION / "products.jsonl").read_text().splitlines()) if r.get("images")}
    held = [json.loads(line)["sku"] for line in (captioner_dir / "heldout.jsonl").read_text().splitlines() if line.strip()]
    held = sorted(s for s in set(held) if s in rows)
    if len(held) < reduced:
        raise SystemExit(f"{captioner_dir}/heldout.jsonl has {len(held)} fashion products; ask for --reduced {len(held)}")
    targets = set(rng.sample(held, reduced))
    others = sorted(s for s in rows if s not in set(held))
    chosen = sorted(targets) + rng.sample(others, 4 * reduced)
    return [rows[s] for s in chosen], targets


def reduce_row(row: dict, what: str) -> dict:
    """The row with its title cut to the brand (and, for title+attributes, no attributes)."""
    from mmsearch.training.caption.targets import brand_of

    brand = brand_of(row["title"], row.get("attributes") or {})
    title = " ".join(row["title"].split()[: max(1, len(brand))])
    out = {**row, "title": title}
    if what == "title+attributes":
        out["attributes"] = {}
    return out


def write_catalog(rows: list[dict], targets: set[str], what: str, folder: Path) -> Path:
    (folder / "images").symlink_to(FASHION / "images")
    path = folder / "products.jsonl"
    path.write_text("".join(json.dumps(reduce_row(r, what) if r["sku"] in targets else r) + "\n" for r in rows))
    return path


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
    parser.add_argument("--reduce", choices=["title", "title+attributes"], default="title")
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
    if "captioner" not in settings.MMSEARCH_MODELS:
        raise SystemExit(f"no captioner at {settings.MMSEARCH_CAPTIONER_PATH} (set MMSEARCH_CAPTIONER_PATH)")
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
    rows, targets = choose(Path(settings.MMSEARCH_CAPTIONER_PATH), args.reduced, args.seed)
    Product.objects.all().delete()
    with tempfile.TemporaryDirectory() as folder:
        report = CatalogImporter(write_catalog(rows, targets, args.reduce, Path(folder))).run()
    print(f"imported {report.created} products ({len(targets)} reduced: {args.reduce}) in "
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
    print(f"{len(queries)} queries target the reduced products; without captions:", flush=True)
    before = measure(queries, target_attrs)

    captioner = get_model("captioner")
    t2 = time.perf_counter()
    for start in range(0, len(target_ids), 256):
        run_captions("captioner", captioner.model_key, target_ids[start:start + 256])
    caption_s = time.perf_counter() - t2
    accepted = set_status(Caption.objects.filter(product_id__in=target_ids, model_key=captioner.model_key), "accepted")
    embed(target_ids, [])  # the changed product texts, as the change path re-embeds them
    print(f"captioned and accepted {accepted} in {caption_s:.0f} s ({1000 * caption_s / max(1, accepted):.0f} ms a "
          "product, scoring included); with captions:", flush=True)
    after = measure(queries, target_attrs)
    examples = list(Caption.objects.filter(product_id__in=target_ids[:8]).values_list("product__sku", "text", "score"))
    out = {
        "date": time.strftime("%Y-%m-%d"), "database": settings.DATABASES["default"]["NAME"],
        "catalog": {"products": len(rows), "reduced": len(targets), "reduce": args.reduce,
                    "reduced_from": "captioner heldout.jsonl (never trained on)", "seed": args.seed},
        "models": {**keys, "captioner": captioner.model_key}, "queries": len(queries), "min_targets": args.min_targets,
        "without_captions": before, "with_captions": after, "captions_accepted": accepted,
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
