"""Decode cost of a captioner folder: milliseconds per image, greedy and beam 3, on this machine's CPU.

    .venv/bin/python bench/captioner.py [--model models/captioner] \
        [--data ../shared/datasets/fashion/products.jsonl] [--images 256] [--batch 32] [--threads 2] \
        [--json bench/results/captioner.json]

Images are the first --images products' first images, decoded before timing. For each decoding (greedy, beam
3) it times, after one warm-up batch: the trunk's grid (`grids`), the decoder over those grids
(`caption_grids`), and the whole `caption()` a worker calls, in batches of --batch and one image at a time
(--single images, the latency of a lone request). Reports the median of --repeats runs and the parameter counts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mmsearch.settings")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
FASHION = ROOT.parent / "shared" / "datasets" / "fashion" / "products.jsonl"


def per_image(fn, n: int, repeats: int) -> float:
    """Median milliseconds per image of fn() over `repeats` runs (after one warm-up run)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t) / n)
    return round(statistics.median(times), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "captioner")
    parser.add_argument("--data", type=Path, default=FASHION)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--single", type=int, default=32, help="images captioned one at a time")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "captioner.json")
    args = parser.parse_args()

    import django

    django.setup()
    import torch

    from mmsearch.plugins.captioner import TrunkCaptioner
    from mmsearch.training import data as D

    torch.set_num_threads(args.threads)
    products = D.load_products(args.data)[:args.images]
    images = [D.open_rgb(p.images[0]) for p in products]
    report = {"model": str(args.model), "images": len(images), "batch": args.batch, "threads": args.threads,
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "torch": torch.__version__}, "decodings": {}}
    for name, options in (("greedy", {"beam_size": 1}), ("beam3", {"beam_size": 3})):
        cap = TrunkCaptioner(str(args.model), device="cpu", batch_size=args.batch, **options)
        cap._ensure_loaded()
        grids = cap.grids(images)
        single = images[:args.single]
        row = {
            "model_key": cap.model_key,
            "trunk_ms": per_image(lambda: cap.grids(images), len(images), args.repeats),
            "decode_ms": per_image(lambda: cap.caption_grids(grids), len(images), args.repeats),
            "caption_ms": per_image(lambda: cap.caption(images), len(images), args.repeats),
            "caption_one_at_a_time_ms": per_image(lambda: [cap.caption([im]) for im in single], len(single), 1),
            "mean_words": round(statistics.mean(len(c.text.split()) for c in cap.caption_grids(grids)), 2),
        }
        report["decodings"][name] = row
        report["parameters"] = {"decoder": cap._net.num_params(),
                                "trunk": sum(p.numel() for p in cap._trunk.parameters())}
        print(f"{name:7s} trunk {row['trunk_ms']:6.2f} + decode {row['decode_ms']:6.2f} ms/image; caption() "
              f"{row['caption_ms']:6.2f} ms/image in batches of {args.batch}, {row['caption_one_at_a_time_ms']:6.2f} "
              f"one at a time; {row['mean_words']} words")
    print(f"parameters: decoder {report['parameters']['decoder'] / 1e6:.2f} M, trunk "
          f"{report['parameters']['trunk'] / 1e6:.2f} M")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
