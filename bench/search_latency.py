"""Search latency through the API on the fashion catalog, next to its SQL alone and the query encoding alone.

    MMSEARCH_DB_NAME=h_speed .venv/bin/python bench/search_latency.py [--queries 200]

Cases (each query once, after one warm-up request):
  api_lexical      GET /api/v1/search?mode=lexical
  api_semantic     GET /api/v1/search?mode=semantic          (query-vector cache cleared before each request)
  api_hybrid       GET /api/v1/search                         (cache cleared: encoding included)
  api_hybrid_cached  the same requests again, query vectors from the cache
  api_filtered(_cached)  hybrid with FILTER (men's footwear, about a tenth of the catalog)
  understanding    --understanding-queries queries twice (each of --understanding-rounds times), cache cleared
                   before each, alternating which goes first: hybrid with understand=0 and with query
                   understanding (the default)
  api_photo        POST /api/v1/search/image with grocery shopper photos (needs an active embedder)
  encode_query     every active model's query encoding, as a request runs them (beside each other)
  encode_text / encode_image: one model alone (a photo: all its query views; ms per view)
  sql_lexical(_filtered): the lexical and trigram signals' SQL alone
  sql_bare_*       the bare kNN: `ORDER BY distance LIMIT n` on the HNSW index, the request's ef_search and
                   limit, no filter and no active-products test
  sql_*_vector(_filtered): the engine's vector signal alone (its plan for the scope)
  api_*_<signal>_ms: the engine's own ms for that signal inside the API requests (debug)
`ratios` holds the targets: a vector signal inside a request against the bare kNN, and each API case against
its encoding plus the bare SQL of its signals. Requests go through Django's test client (URL routing, DRF
view, engine, JSON), without a network hop. Writes bench/results/search_latency.json.
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
os.environ.setdefault("MMSEARCH_THROTTLE", "0")  # the bench sends more photos a minute than a shopper may


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summary(times: list[float]) -> dict:
    return {"n": len(times), "p50_ms": round(statistics.median(times), 1), "p95_ms": round(pct(times, 0.95), 1),
            "mean_ms": round(statistics.mean(times), 1)}


# The filtered cases: about a tenth of the fashion catalog (men's footwear); the bench reports the share.
FILTER = {"attr.gender": "Men", "category": "Footwear"}


def ratios(results: dict) -> dict:
    """The issue's targets as measured ratios (p95 over p95)."""
    def p95(name):
        return (results.get(name) or {}).get("p95_ms")

    def ratio(a, b):
        return round(a / b, 2) if a is not None and b else None

    out = {}
    for name in ("text_vector", "image_vector"):
        out[f"{name}_in_request / bare (<= 2)"] = ratio(p95(f"api_hybrid_{name}_ms"), p95(f"sql_bare_{name}"))
        out[f"{name}_filtered_in_request / bare (<= 4)"] = ratio(p95(f"api_filtered_{name}_ms"), p95(f"sql_bare_{name}"))
    vec = [p95(f"sql_bare_{n}") for n in ("text_vector", "image_vector") if p95(f"sql_bare_{n}") is not None]
    bare_hybrid = (p95("sql_lexical") or 0) + sum(vec)
    bare_filtered = (p95("sql_lexical_filtered") or 0) + sum(vec)
    if p95("encode_query") is not None:
        out["api_hybrid / (encode + bare SQL) (<= 1.3)"] = ratio(p95("api_hybrid"), p95("encode_query") + bare_hybrid)
        out["api_filtered / (encode + bare SQL) (<= 1.3)"] = ratio(p95("api_filtered"), p95("encode_query") + bare_filtered)
    if p95("encode_image") is not None:
        out["api_photo / (encode + bare SQL) (<= 1.3)"] = ratio(p95("api_photo"), p95("encode_image") + (p95("sql_bare_image_vector") or 0))
    out["api_hybrid_cached / bare SQL (<= 1.3)"] = ratio(p95("api_hybrid_cached"), bare_hybrid)
    out["api_filtered_cached / bare SQL (<= 1.3)"] = ratio(p95("api_filtered_cached"), bare_filtered)
    return out


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--understanding-queries", type=int, default=30, help="queries of the understanding on/off pairs")
    parser.add_argument("--understanding-rounds", type=int, default=1,
                        help="times each of those queries is paired (more pairs: a steadier p95)")
    parser.add_argument("--photos", type=Path, default=ROOT.parent / "shared/datasets/grocery/photos-val.jsonl")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/search_latency.json")
    args = parser.parse_args(argv)
    import django

    django.setup()
    import numpy as np
    from django.conf import settings
    from django.core.cache import cache
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.db import connection, transaction
    from django.test import Client
    from PIL import Image

    from bench.search_quality import build_queries, load_products
    from mmsearch.search import photo, signals, vectors
    from mmsearch.search.config import config

    products = load_products()
    if not products:
        parser.error("no active fashion products in this database; import ../shared/datasets/fashion first")
    texts = [q["q"] for q in build_queries(products, max(args.queries, 10))][: args.queries]
    # Staff-level debug in the answers (per-signal ms): the bench reads the engine's own timings.
    settings.MMSEARCH_SEARCH_DEBUG = True
    client = Client()
    results: dict[str, dict] = {}

    debugs: dict[str, list[dict]] = {}

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
            debugs.setdefault(name, []).append(response.json().get("debug") or {})
        results[name] = summary(times)
        print(f"{name:>18}: p50 {results[name]['p50_ms']:7.1f} ms  p95 {results[name]['p95_ms']:7.1f} ms", flush=True)

    api_case("api_lexical", {"mode": "lexical"}, False)
    api_case("api_semantic", {"mode": "semantic"}, True)
    api_case("api_hybrid", {}, True)
    api_case("api_hybrid_cached", {}, False)
    api_case("api_filtered", FILTER, True)
    api_case("api_filtered_cached", FILTER, False)

    # Query understanding's cost: the same request with and without it, interleaved so load drift cancels.
    pairs: dict[str, list[float]] = {"off": [], "on": [], "parts": []}
    for i, text in enumerate(texts[: args.understanding_queries] * max(args.understanding_rounds, 1)):
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
    if pairs["off"]:
        results["api_hybrid_understand_off"] = summary(pairs["off"])
        results["api_hybrid_understand_on"] = summary(pairs["on"])
        if pairs["parts"]:
            results["understanding_own_ms"] = summary(pairs["parts"])
        off, on = results["api_hybrid_understand_off"], results["api_hybrid_understand_on"]
        results["understanding_added"] = {
            "p50_ms": round(on["p50_ms"] - off["p50_ms"], 1), "p95_ms": round(on["p95_ms"] - off["p95_ms"], 1),
            "p95_share": round((on["p95_ms"] - off["p95_ms"]) / off["p95_ms"], 3) if off["p95_ms"] else None,
        }

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
                debugs.setdefault("api_photo", []).append(response.json().get("debug") or {})
            if response.status_code != 200:
                results["api_photo"] = {"error": response.json().get("detail")}
                break
        else:
            results["api_photo"] = summary(times)
        print(f"{'api_photo':>18}: {results['api_photo']}", flush=True)

    # The parts alone: encoding, then each signal's SQL with the vectors already computed.
    text_enc = signals.active_encoder("text_embedder")
    image_enc = signals.active_encoder("embedder")
    conf = config()
    k = conf["CANDIDATES"]
    ef = min(1000, max(conf["EF_SEARCH"], k))
    encoders = [enc for enc in (text_enc, image_enc) if enc]
    if encoders:
        def both(t):  # as a request encodes: every active model, beside each other
            cache.clear()
            waits = [signals.start_encoding(enc, [t]) for enc in encoders]
            for wait in waits:
                wait()
        results["encode_query"] = summary([timed(lambda t=t: both(t)) for t in texts])
    if text_enc:
        results["encode_text"] = summary([timed(lambda t=t: text_enc.model.embed_texts([t])) for t in texts])
    if image_enc and photos:
        images = [Image.open(io.BytesIO(d)).convert("RGB") for d in photos]
        views = photo.PhotoViews.from_config(conf)  # as search by photo encodes a photo
        results["encode_image"] = summary([
            timed(lambda im=im: photo.query_vectors(photo.embed_views(image_enc.model, [im], views))) for im in images
        ])
        results["encode_image_views"] = views.count
        results["encode_image_ms_per_view"] = round(results["encode_image"]["p50_ms"] / views.count, 2)

    filters = {name: [value] for name, value in FILTER.items()}
    results["sql_lexical"] = summary([
        timed(lambda t=t: (signals.lexical_candidates(t, {}, k, need=24),
                           signals.trigram_candidates(t, {}, k, float(conf["TRIGRAM_THRESHOLD"])))) for t in texts
    ])
    results["sql_lexical_filtered"] = summary([
        timed(lambda t=t: (signals.lexical_candidates(t, filters, k, need=24),
                           signals.trigram_candidates(t, filters, k, float(conf["TRIGRAM_THRESHOLD"])))) for t in texts
    ])
    scope = signals.scope_for(filters, conf)
    results["filter_share"] = round(scope.share, 4)
    for name, enc, kind in (("text_vector", text_enc, "product"), ("image_vector", image_enc, "image")):
        if enc is None:
            continue
        qvecs = [np.asarray(enc.model.embed_texts([t])[0], dtype=np.float32) for t in texts]
        limit = k * (conf["IMAGE_OVERFETCH"] if kind == "image" else 1)
        # The bare kNN: the HNSW index alone, same ef_search and limit, no filter, no active test.
        bare_sql = (f"SELECT product_id FROM {vectors.TABLES[kind]} WHERE model_key = %s "
                    f"ORDER BY {vectors.distance_sql(enc.dim, enc.storage == 'halfvec')} LIMIT {limit}")

        def bare(qvec, enc=enc, sql=bare_sql):
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SELECT set_config('hnsw.ef_search', %s, true)", [str(ef)])
                cursor.execute(sql, [enc.model_key, vectors.vector_literal(qvec)])
                cursor.fetchall()

        def signal(qvec, enc=enc, kind=kind, scope_filters=None):
            with transaction.atomic():
                signals.vector_candidates(kind, enc, qvec, signals.scope_for(scope_filters or {}, conf), [], k, {})
        bare(qvecs[0])
        results[f"sql_bare_{name}"] = summary([timed(lambda v=v: bare(v)) for v in qvecs])
        results[f"sql_{name}"] = summary([timed(lambda v=v: signal(v)) for v in qvecs])
        results[f"sql_{name}_filtered"] = summary([timed(lambda v=v: signal(v, scope_filters=filters)) for v in qvecs])
        # Inside requests: the engine's own ms for the signal (debug), unfiltered and filtered.
        for case in ("api_hybrid", "api_filtered"):
            inside = [d["signals"][name]["ms"] for d in debugs.get(case, []) if name in d.get("signals", {})]
            if inside:
                results[f"{case}_{name}_ms"] = summary(inside)
    for name in sorted(results):
        if name.startswith(("encode", "sql")) and isinstance(results[name], dict):
            print(f"{name:>26}: p50 {results[name]['p50_ms']:7.1f} ms  p95 {results[name]['p95_ms']:7.1f} ms", flush=True)
    results["ratios"] = ratios(results)
    for name, value in results["ratios"].items():
        print(f"{name:>40}: {value}", flush=True)

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
