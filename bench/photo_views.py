"""Photo->product accuracy of several query-view sets (mmsearch.search.photo), for one or more trained models.

    .venv/bin/python bench/photo_views.py models/embedder [models/other ...] \
        [--data ../shared/datasets/grocery/products.jsonl --photos ../shared/datasets/grocery/photos-val.jsonl] \
        [--sets "1" "1m" "0.7m" "1,0.7,0.5m"]

A set is comma-separated centre-crop scales, with a trailing "m" for their mirrored copies too. Every set runs
through `evaluate` (the same code as `manage.py evaluate`'s photo_to_product); the whole photo alone is the
set "1". Prints a Markdown table of accuracy@1 / accuracy@5 and writes bench/results/photo_views.json, with
each set's median milliseconds to embed one photo's views (`ms_per_photo`, over the first 30 photos, 2 threads).
This is how the default PHOTO_QUERY_SCALES / PHOTO_QUERY_MIRROR were chosen (README, "Query views").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mmsearch.settings")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
GROCERY = ROOT.parent / "shared" / "datasets" / "grocery"


def parse_set(text: str):
    from mmsearch.search.photo import PhotoViews

    mirror = text.endswith("m")
    try:
        scales = tuple(float(s) for s in text.rstrip("m").split(","))
        return PhotoViews(scales, mirror)
    except ValueError as exc:
        raise SystemExit(f"--sets {text!r}: {exc}") from None


def ms_per_photo(embedder, photos, views) -> float:
    """Median milliseconds to embed one photo as search does (all its views), after one warm-up."""
    from mmsearch.search.photo import embed_views

    embed_views(embedder, photos[:1], views)
    times = []
    for photo in photos:
        t = time.perf_counter()
        embed_views(embedder, [photo], views)
        times.append(1000 * (time.perf_counter() - t))
    return round(statistics.median(times), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="trained model folders (or MMSEARCH_MODELS aliases)")
    parser.add_argument("--data", type=Path, default=GROCERY / "products.jsonl")
    parser.add_argument("--photos", type=Path, default=GROCERY / "photos-val.jsonl")
    parser.add_argument("--sets", nargs="+", default=["1m", "0.7m", "1,0.7,0.5m"])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "photo_views.json")
    args = parser.parse_args()

    import django

    django.setup()
    import torch

    torch.set_num_threads(2)
    from mmsearch.training import data as D
    from mmsearch.training.evaluation import evaluate, load_embedder

    view_sets = {name: parse_set(name) for name in args.sets}
    photos = [D.open_rgb(ph.image) for ph in D.load_photos(args.photos, (p.sku for p in D.load_products(args.data)))[:30]]
    rows = []
    for model in args.models:
        embedder = load_embedder(model)
        row = {"model": model, "model_key": embedder.model_key, "sets": {}}
        for name, views in view_sets.items():
            t = time.time()
            p2p = evaluate(embedder, args.data, photos=args.photos, progress=False, photo_views=views)["photo_to_product"]
            row["sets"].setdefault("1", {k: p2p["single_view"][k] for k in ("accuracy@1", "accuracy@5", "mrr")})
            row["sets"][name] = {k: p2p[k] for k in ("accuracy@1", "accuracy@5", "mrr")} | {"seconds": round(time.time() - t, 1)}
            row["sets"][name]["ms_per_photo"] = ms_per_photo(embedder, photos, views)
        rows.append(row)
        print(json.dumps({"model": model, **{n: round(v["accuracy@1"], 3) for n, v in row["sets"].items()}}), flush=True)

    names = ["1", *[n for n in view_sets if n != "1"]]
    print("\n| model | " + " | ".join(f"views {n}" for n in names) + " |")
    print("| --- |" + " --- |" * len(names))
    for row in rows:
        cells = [f"{row['sets'][n]['accuracy@1']:.3f} / {row['sets'][n]['accuracy@5']:.3f}" for n in names]
        print(f"| {row['model']} | " + " | ".join(cells) + " |")
    mean = {n: sum(r["sets"][n]["accuracy@1"] for r in rows) / len(rows) for n in names}
    print("| mean accuracy@1 | " + " | ".join(f"{mean[n]:.3f}" for n in names) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"data": str(args.data), "photos": str(args.photos), "rows": rows,
                                    "mean_accuracy@1": mean}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
