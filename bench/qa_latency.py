"""Question latency of the answerer on this CPU: the first question about a product and a repeated one.

    .venv/bin/python bench/qa_latency.py [--model models/answerer] [--questions 40] [--threads 1]

For held-out fashion products (the model folder's heldout.jsonl), one generated question each (the evaluation's
questions), asked the way qa.service.ask asks them:
  first      answer(question, product, [decoded image]): the trunk's grid of the image, routing, the answer
  repeated   answer_features(question, product, cached features): what a second question about the product costs
             (qa.ImageFeatures holds the features per (image sha256, model_key))
  parts      image_features alone, the router's text embedding alone, the question's MiniLM tokens + fusion alone
The product's data is withheld (the image answers), as in evaluate_qa. Writes bench/results/qa_latency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mmsearch.settings")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summary(ms: list[float]) -> dict:
    return {"n": len(ms), "mean_ms": round(statistics.fmean(ms), 2), "p50_ms": round(pct(ms, 0.5), 2),
            "p95_ms": round(pct(ms, 0.95), 2)}


def main() -> None:
    import django

    django.setup()
    import torch
    from django.conf import settings

    from mmsearch.plugins.answerer import TrunkAnswerer
    from mmsearch.training import data as D
    from mmsearch.training.qa import questions as Q
    from mmsearch.training.qa.evaluation import EVAL_SEED, facts_of, product_rows

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=Path(settings.MMSEARCH_ANSWERER_PATH))
    parser.add_argument("--questions", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "qa_latency.json")
    args = parser.parse_args()
    if not (args.model / "heldout.jsonl").is_file():
        sys.exit(f"{args.model}: no trained answerer with a heldout.jsonl (run `make train` or pass --model)")
    torch.set_num_threads(args.threads)
    answerer = TrunkAnswerer(str(args.model), device="cpu")
    answerer._ensure_loaded()
    vocab = answerer.vocabulary
    heldout = args.model / "heldout.jsonl"
    rows = product_rows(heldout)
    products = [p for p in D.load_products(heldout) if any(Q.value_of(p, k) for k in vocab.values)]
    rng = random.Random(EVAL_SEED)
    picks = rng.sample(products, min(args.questions, len(products)))
    keys = sorted(vocab.values)
    cases = []
    for p in picks:
        qa = rng.choice(Q.generate(p, vocab, random.Random(D.key_hash(f"{EVAL_SEED}|{p.sku}"))))
        cases.append((qa.question, facts_of(rows[p.sku], keys), D.open_rgb(p.images[0])))
    answerer.answer(*cases[0][:2], [cases[0][2]])  # warm-up: weights, router prototypes
    first, repeated, grid, route, fuse = [], [], [], [], []
    for question, facts, image in cases:
        t = time.perf_counter()
        answerer.answer(question, facts, [image])
        first.append(1000 * (time.perf_counter() - t))
        t = time.perf_counter()
        features = answerer.image_features([image])
        grid.append(1000 * (time.perf_counter() - t))
        t = time.perf_counter()
        answerer.answer_features(question, facts, features)
        repeated.append(1000 * (time.perf_counter() - t))
        t = time.perf_counter()
        answerer.router.route(question)
        route.append(1000 * (time.perf_counter() - t))
        t = time.perf_counter()
        answerer.logits([question], features)
        answerer.zeroshot(features)  # the zero-shot scores the calibrated combination reads (None without them)
        fuse.append(1000 * (time.perf_counter() - t))
    report = {"model_key": answerer.model_key, "model": str(args.model), "first": summary(first),
              "repeated": summary(repeated), "parts": {"image_features": summary(grid), "routing": summary(route),
                                                       "tokens_and_fusion": summary(fuse)},
              "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "load_average_1m": round(os.getloadavg()[0], 2), "python": platform.python_version(),
                          "torch": torch.__version__},
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report[k] for k in ("first", "repeated", "parts")}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
