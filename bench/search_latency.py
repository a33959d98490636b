"""Search latency through the API on the fashion catalog, next to its SQL alone and the query encoding alone.

    MMSEARCH_DB_NAME=h5bench .venv/bin/python bench/search_latency.py [--queries 30]

Cases (each query once, after one warm-up request):
  api_lexical      GET /api/v1/search?mode=lexical
  api_semantic     GET /api/v1/search?mode=semantic          (query-vector cache cleared before each request)
  api_hybrid       GET /api/v1/search                         (cache cleared: encoding included)
  api_hybrid_cached  the same requests again, query vectors from the cache
  understanding    each query twice, cache cleared before each, alternating which goes first: hybrid with
                   understand=0 and with query understanding (the default); p50/p95 of both and of the
                   understanding's own parts (vocabulary check and matching, the understood list, the boosts)
  api_filtered     GET /api/v1/search?attr.gender=...&category=Apparel  (hybrid, cache cleared)
  api_photo        POST /api/v1/search/image with grocery shopper photos (needs an active embedder)
  sql_lexical / sql_text_vector / sql_image_vector: the candidate SQL alone (vectors precomputed)
  encode_text / encode_image: the active models' query encoding alone (a photo: all its query views)
Requests go through Django's test client (URL routing, DRF view, engine, JSON), without a network hop.
Writes bench/results/search_latency.json.
"""

from __future__ import annotations

import argparse
import io
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


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summary(times: list[float]) -> dict:
    return {"n": len(times), "p50_ms": round(statistics.median(times), 1), "p95_ms": round(pct(times, 0.95), 1),
            "mean_ms": round(statistics.mean(times), 1)}


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--photos", type=Path, default=ROOT.parent / "shared/datasets/grocery/photos-val.jsonl")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/search_latency.json")
    args = parser.parse_args(argv)
    import django

    django.setup()
    import numpy as np
    from django.conf import settings
    from django.core.cache import cache
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.db import transaction
    from django.test import Client
    from PIL import Image

    from bench.search_quality import build_queries, load_products
    from mmsearch.search import photo, signals
    from mmsearch.search.config import config

    products = load_products()
    if not products:
        parser.error("no active fashion products in this database; import ../shared/datasets/fashion first")
    texts = [q["q"] for q in build_queries(products, max(args.queries, 10))][: args.queries]
    client = Client()
    results: dict[str, dict] = {}

    def api_case(name: str, params: dict, clear_cache: bool) -> None:
        times = []
        client.get("/api/v1/search", {"q": texts[0], **params})  # warm-up: models loaded, plans cached
        for text in texts:
            if clear_cache:
                cache.clear()
            t0 = time.perf_counter()
            response = client.get("/api/v1/search", {"q": text, **params})
            times.append((time.perf_counter() - t0) * 1000)
            if response.status_code != 200:
                results[name] = {"error": response.json().get("detail")}
                print(f"{name:>18}: {results[name]['error']}", flush=True)
                return
        results[name] = summary(times)
        print(f"{name:>18}: p50 {results[name]['p50_ms']:7.1f} ms  p95 {results[name]['p95_ms']:7.1f} ms", flush=True)

    api_case("api_lexical", {"mode": "lexical"}, False)
    api_case("api_semantic", {"mode": "semantic"}, True)
    api_case("api_hybrid", {}, True)
    api_case("api_hybrid_cached", {}, False)
    api_case("api_filtered", {"attr.gender": "Women", "category": "Apparel"}, True)

    # Query understanding's cost: the same request with and without it, interleaved so load drift cancels.
    pairs: dict[str, list[float]] = {"off": [], "on": [], "parts": []}
    for i, text in enumerate(texts):
        order = ("0", "1") if i % 2 == 0 else ("1", "0")
        for flag in order:
            cache.clear()
            t0 = time.perf_counter()
            response = client.get("/api/v1/search", {"q": text, "understand": flag})
            pairs["on" if flag == "1" else "off"].append((time.perf_counter() - t0) * 1000)
            if flag == "1" and response.status_code == 200:
                debug = response.json().get("debug") or {}
                own = sum((debug.get("understand_ms") or {}).values())
                own += (debug.get("signals", {}).get("understood") or {}).get("ms", 0.0)
                pairs["parts"].append(own)
    results["api_hybrid_understand_off"] = summary(pairs["off"])
    results["api_hybrid_understand_on"] = summary(pairs["on"])
    if pairs["parts"]:
        results["understanding_own_ms"] = summary(pairs["parts"])
    off, on = results["api_hybrid_understand_off"], results["api_hybrid_understand_on"]
    results["understanding_added"] = {
        "p50_ms": round(on["p50_ms"] - off["p50_ms"], 1), "p95_ms": round(on["p95_ms"] - off["p95_ms"], 1),
        "p95_share": round((on["p95_ms"] - off["p95_ms"]) / off["p95_ms"], 3) if off["p95_ms"] else None,
    }
    for name in ("api_hybrid_understand_off", "api_hybrid_understand_on", "understanding_own_ms"):
        if name in results:
            print(f"{name:>26}: p50 {results[name]['p50_ms']:7.1f} ms  p95 {results[name]['p95_ms']:7.1f} ms", flush=True)
    print(f"{'understanding added':>26}: {results['understanding_added']}", flush=True)

    photos = []
    if args.photos.exists():
        rows = [json.loads(line) for line in args.photos.read_text().splitlines() if line.strip()][: args.queries]
        photos = [(args.photos.parent / r["image"]).read_bytes() for r in rows]
    if photos:
        times = []
        for i, data in enumerate([photos[0], *photos]):
            t0 = time.perf_counter()
            response = client.post("/api/v1/search/image", {"image": SimpleUploadedFile("photo.jpg", data, "image/jpeg")})
            if i:
                times.append((time.perf_counter() - t0) * 1000)
            if response.status_code != 200:
                results["api_photo"] = {"error": response.json().get("detail")}
                break
        else:
            results["api_photo"] = summary(times)
        print(f"{'api_photo':>18}: {results['api_photo']}", flush=True)

    # The parts alone: encoding, then the candidate SQL with the vectors already computed.
    text_enc = signals.active_encoder("text_embedder")
    image_enc = signals.active_encoder("embedder")
    fsql, fparams = signals.filter_sql({})
    k = config()["CANDIDATES"]
    if text_enc:
        results["encode_text"] = summary([timed(lambda t=t: text_enc.model.embed_texts([t])) for t in texts])
    if image_enc and photos:
        images = [Image.open(io.BytesIO(d)).convert("RGB") for d in photos]
        views = photo.PhotoViews.from_config(config())  # as search by photo encodes a photo
        results["encode_image"] = summary([
            timed(lambda im=im: photo.query_vectors(photo.embed_views(image_enc.model, [im], views))) for im in images
        ])
        results["encode_image_views"] = views.count
    results["sql_lexical"] = summary([
        timed(lambda t=t: signals.lexical_candidates(t, {}, k, need=24)) for t in texts
    ])
    for name, enc, kind in (("sql_text_vector", text_enc, "product"), ("sql_image_vector", image_enc, "image")):
        if enc is None:
            continue
        qvecs = [np.asarray(enc.model.embed_texts([t])[0], dtype=np.float32) for t in texts]

        def knn(qvec, enc=enc, kind=kind):
            with transaction.atomic():
                signals.vector_candidates(kind, enc, qvec, fsql, fparams, k, {})
        results[name] = summary([timed(lambda v=v: knn(v)) for v in qvecs])
    for name in ("encode_text", "encode_image", "sql_lexical", "sql_text_vector", "sql_image_vector"):
        if name in results:
            print(f"{name:>18}: p50 {results[name]['p50_ms']:7.1f} ms  p95 {results[name]['p95_ms']:7.1f} ms", flush=True)

    report = {
        "database": settings.DATABASES["default"]["NAME"], "products": len(products), "queries": len(texts),
        "machine": {"cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg(), "python": platform.python_version()},
        "active_models": {"text_embedder": text_enc.model_key if text_enc else None,
                          "embedder": image_enc.model_key if image_enc else None},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
