"""Vector search side by side: pgvector HNSW (vector and halfvec), pgvector exact, FAISS HNSW and flat.

    MMSEARCH_DB_NAME=h_speed .venv/bin/python bench/vector_search.py [--real] [--synthetic 1000000] [--dim 384]
        [--queries 200] [--ef 20,40,100,200,400] [--m 16] [--ef-construction 64] [--threads 1] [--build-memory 4GB]

Sets (each searched by every engine, the same vectors, M, ef_construction and build threads):
  real-text    the active text_embedder's product-text vectors of the catalog, queried with the shopper-style
               queries of bench/search_quality.py encoded by the same model
  real-image   the active embedder's image vectors, queried with the same queries through its text tower
  synthetic    --synthetic N unit vectors of --dim around N/1000 random centres (spread so that neighbours
               are not trivially separated), queried with fresh points of the same distribution
Per set and engine: build seconds, index bytes, and at each ef_search: recall@10 against the exact answer
(numpy; a row as similar as the exact 10th neighbour counts, as in ann-benchmarks: catalogs repeat vectors;
`recall_at_10_ids` counts the exact answer's own rows only), single-client p50 / p95 ms and QPS (1000 / mean
ms). pgvector is queried as a fast client does it (a prepared statement, the vector as a binary parameter),
FAISS in-process. pgvector / FAISS HNSW QPS ratios at matched recall (FAISS's fastest point with at least
pgvector's recall). Filtered pgvector search at 10 % and 1 % selectivity (a column uncorrelated with the
vectors, iterative scans): the share of queries with a full page, recall against the exact filtered answer, p95
against unfiltered. pgvector runs in scratch tables
bench_vec_* of the database (dropped at the end). Writes bench/results/vector_search.json and, with
matplotlib, vector_search.png (latency against recall per ef_search).
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

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mmsearch.settings")
K = 10
TIE_EPS = 1e-5  # similarities within this of the 10th neighbour's are ties (float32 rounding)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def latency(times: list[float]) -> dict:
    mean = statistics.mean(times)
    return {"p50_ms": round(statistics.median(times), 3), "p95_ms": round(pct(times, 0.95), 3),
            "qps": round(1000.0 / mean, 1) if mean else None}


def recall(got: list[list[int]], truth: np.ndarray, data: np.ndarray, queries: np.ndarray) -> float:
    """recall@10 with ties (ann-benchmarks' definition): a returned row counts when it is at least as similar as
    the exact 10th neighbour. Catalogs hold many identical vectors (products sharing a title), and any 10 of a
    tied group are an exact answer."""
    hits = 0
    for g, t, q in zip(got, truth, queries):
        floor = float(data[t[K - 1]] @ q) - TIE_EPS
        ids = list(dict.fromkeys(g[:K]))
        hits += int((data[ids] @ q >= floor).sum()) if ids else 0
    return round(hits / (K * len(got)), 4)


def recall_ids(got: list[list[int]], truth: np.ndarray) -> float:
    """recall@10 by ids: the share of the exact answer's own rows returned (ties count as misses)."""
    hits = sum(len(set(g[:K]) & set(t[:K].tolist())) for g, t in zip(got, truth))
    return round(hits / (K * len(got)), 4)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def synthetic(n: int, dim: int, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Clustered unit vectors: N/1000 centres, each point a centre plus noise of about the centres' spread."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((max(1, n // 1000), dim)))
    def points(m: int) -> np.ndarray:
        out = np.empty((m, dim), np.float32)
        for start in range(0, m, 100_000):
            stop = min(m, start + 100_000)
            which = rng.integers(0, len(centres), stop - start)
            out[start:stop] = unit(centres[which] + 0.9 * rng.standard_normal((stop - start, dim)) / np.sqrt(dim) * 1.0)
        return out
    return points(n), points(queries)


def exact_top(data: np.ndarray, queries: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """The exact top-K ids (row numbers) by inner product (= cosine on unit rows), optionally among `mask`."""
    out = np.empty((len(queries), K), np.int64)
    for start in range(0, len(queries), 64):
        sims = queries[start:start + 64] @ data.T
        if mask is not None:
            sims[:, ~mask] = -np.inf
        top = np.argpartition(-sims, K, axis=1)[:, :K]
        order = np.take_along_axis(sims, top, 1).argsort(axis=1)[:, ::-1]
        out[start:start + 64] = np.take_along_axis(top, order, 1)
    return out


def real_sets(n_queries: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, vectors, query vectors) for the active text and image models' stored vectors."""
    from django.db import connection

    from bench.search_quality import build_queries, load_products
    from mmsearch.search import signals, vectors

    texts = [q["q"] for q in build_queries(load_products(), n_queries)][:n_queries]
    out = []
    for name, role, kind in (("real-text", "text_embedder", "product"), ("real-image", "embedder", "image")):
        enc = signals.active_encoder(role)
        if enc is None:
            continue
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT vector::real[] FROM {vectors.TABLES[kind]} WHERE model_key = %s ORDER BY id", [enc.model_key])
            data = unit(np.asarray([row[0] for row in cursor.fetchall()], np.float32))
        queries = unit(np.asarray(enc.model.embed_texts(texts), np.float32))
        out.append((f"{name} ({enc.model_key})", data, queries))
    return out


class Pgvector:
    """One scratch table per set: id, bucket (id % 100, for filters), v vector(dim); HNSW indexes on it."""

    def __init__(self, name: str, data: np.ndarray, threads: int, build_memory: str) -> None:
        from django.db import connection

        self.conn = connection
        self.table = "bench_vec_" + "".join(c if c.isalnum() else "_" for c in name.split(" ")[0])
        self.dim = data.shape[1]
        self.threads = threads
        self.build_memory = build_memory
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {self.table}")
            cursor.execute(f"CREATE TABLE {self.table} (id bigint PRIMARY KEY, bucket int NOT NULL, v vector({self.dim}))")
            raw = connection.connection
            from pgvector.psycopg import register_vector

            register_vector(raw)
            with raw.cursor().copy(f"COPY {self.table} (id, bucket, v) FROM STDIN WITH (FORMAT BINARY)") as copy:
                copy.set_types(["int8", "int4", "vector"])
                for i, vec in enumerate(data):
                    copy.write_row((i, i % 100, vec))
            cursor.execute(f"ANALYZE {self.table}")

    def build(self, storage: str, m: int, ef_construction: int) -> tuple[float, int]:
        expr, ops = ("v", "vector_cosine_ops") if storage == "vector" else (f"(v::halfvec({self.dim}))", "halfvec_cosine_ops")
        name = f"{self.table}_{storage}"
        with self.conn.cursor() as cursor:
            cursor.execute(f"SET maintenance_work_mem = '{self.build_memory}'")
            cursor.execute(f"SET max_parallel_maintenance_workers = {max(0, self.threads - 1)}")
            t0 = time.perf_counter()
            cursor.execute(f"CREATE INDEX {name} ON {self.table} USING hnsw ({expr} {ops}) "
                           f"WITH (m = {m}, ef_construction = {ef_construction})")
            seconds = time.perf_counter() - t0
            cursor.execute("SELECT pg_relation_size(%s::regclass)", [name])
            size = cursor.fetchone()[0]
        return seconds, size

    def drop_index(self, storage: str) -> None:
        with self.conn.cursor() as cursor:
            cursor.execute(f"DROP INDEX IF EXISTS {self.table}_{storage}")

    def search(self, queries: np.ndarray, *, storage: str = "vector", ef: int = 40, exact: bool = False,
               where: str = "") -> tuple[list[list[int]], list[float]]:
        """Each query as a client would send it at speed: a prepared statement with the vector as a binary
        parameter (the ann-benchmarks pgvector client does the same), one round trip per query."""
        import psycopg
        from django.db import transaction
        from pgvector.psycopg import register_vector

        cast = f"vector({self.dim})" if storage == "vector" else f"halfvec({self.dim})"
        col = "v" if storage == "vector" else f"v::halfvec({self.dim})"
        dist = f"({col} <=> %s::{cast})" + (" + 0" if exact else "")
        sql = f"SELECT id FROM {self.table} {('WHERE ' + where) if where else ''} ORDER BY {dist} LIMIT {K}"
        got, times = [], []
        with transaction.atomic():
            raw = self.conn.connection
            register_vector(raw)
            # Django's connections bind parameters client-side; a plain psycopg cursor binds them on the server.
            with psycopg.Cursor(raw) as cursor:
                cursor.execute("SELECT set_config('hnsw.ef_search', %s, true)", [str(ef)])
                cursor.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
                cursor.execute("SET LOCAL max_parallel_workers_per_gather = 0")
                cursor.execute(sql, [queries[0]], binary=True, prepare=True)  # warm-up, and prepares it
                cursor.fetchall()
                for q in queries:
                    t0 = time.perf_counter()
                    cursor.execute(sql, [q], binary=True, prepare=True)
                    rows = cursor.fetchall()
                    times.append((time.perf_counter() - t0) * 1000)
                    got.append([r[0] for r in rows])
        return got, times

    def close(self) -> None:
        with self.conn.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {self.table}")


def faiss_search(index, queries: np.ndarray) -> tuple[list[list[int]], list[float]]:
    got, times = [], []
    index.search(queries[:1], K)
    for q in queries:
        t0 = time.perf_counter()
        _, ids = index.search(q[None, :], K)
        times.append((time.perf_counter() - t0) * 1000)
        got.append([int(i) for i in ids[0]])
    return got, times


def run_set(name: str, data: np.ndarray, queries: np.ndarray, args) -> dict:
    import faiss

    faiss.omp_set_num_threads(args.threads)
    print(f"== {name}: {len(data)} x {data.shape[1]}, {len(queries)} queries", flush=True)
    truth = exact_top(data, queries)
    out: dict = {"vectors": int(len(data)), "dim": int(data.shape[1]), "queries": int(len(queries)), "engines": {}}

    def report(engine: str, ef, got, times, extra=None) -> dict:
        row = {"ef_search": ef, "recall_at_10": recall(got, truth, data, queries),
               "recall_at_10_ids": recall_ids(got, truth), **latency(times), **(extra or {})}
        print(f"  {engine:>18} ef={ef!s:>5}: recall {row['recall_at_10']:.4f} (ids {row['recall_at_10_ids']:.4f})  "
              f"p50 {row['p50_ms']:7.3f} ms  p95 {row['p95_ms']:7.3f} ms  qps {row['qps']}", flush=True)
        return row

    t0 = time.perf_counter()
    pg = Pgvector(name, data, args.threads, args.build_memory)
    out["pgvector_load_s"] = round(time.perf_counter() - t0, 1)
    try:
        got, times = pg.search(queries, exact=True)
        out["engines"]["pgvector_exact"] = {"points": [report("pgvector exact", None, got, times)]}
        for storage in ("vector", "halfvec"):
            seconds, size = pg.build(storage, args.m, args.ef_construction)
            points = []
            for ef in args.ef:
                got, times = pg.search(queries, storage=storage, ef=ef)
                points.append(report(f"pgvector hnsw {storage}", ef, got, times))
            entry = {"build_s": round(seconds, 1), "index_bytes": size, "points": points}
            if storage == "vector":
                # Filtered: a bucket column uncorrelated with the vectors, iterative scans (relaxed order).
                buckets = np.arange(len(data)) % 100
                entry["filtered"] = {}
                unfiltered_p95 = next(p["p95_ms"] for p in points if p["ef_search"] == args.default_ef) if args.default_ef in args.ef else points[0]["p95_ms"]
                for label, where, mask in (("10%", "bucket < 10", buckets < 10), ("1%", "bucket = 0", buckets == 0)):
                    got, times = pg.search(queries, ef=args.default_ef, where=where)
                    ftruth = exact_top(data, queries, mask)
                    full = sum(1 for g in got if len(g) == K) / len(got)
                    lat = latency(times)
                    entry["filtered"][label] = {
                        "ef_search": args.default_ef, "full_page_share": round(full, 4),
                        "recall_at_10": recall(got, ftruth, data, queries),
                        "recall_at_10_ids": recall_ids(got, ftruth), **lat,
                        "p95_vs_unfiltered": round(lat["p95_ms"] / unfiltered_p95, 2) if unfiltered_p95 else None,
                    }
                    print(f"  filtered {label}: {entry['filtered'][label]}", flush=True)
                pg.drop_index("vector")
            else:
                pg.drop_index("halfvec")
            out["engines"][f"pgvector_hnsw_{storage}"] = entry
        t_exact = out["engines"]["pgvector_exact"]["points"][0]["p95_ms"]
        for storage in ("vector", "halfvec"):
            for p in out["engines"][f"pgvector_hnsw_{storage}"]["points"]:
                p["p95_vs_exact"] = round(p["p95_ms"] / t_exact, 4) if t_exact else None
    finally:
        pg.close()

    flat = faiss.IndexFlatIP(data.shape[1])
    t0 = time.perf_counter()
    flat.add(data)
    got, times = faiss_search(flat, queries)
    out["engines"]["faiss_flat"] = {"build_s": round(time.perf_counter() - t0, 1), "index_bytes": int(data.nbytes),
                                    "points": [report("faiss flat", None, got, times)]}
    hnsw = faiss.IndexHNSWFlat(data.shape[1], args.m, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = args.ef_construction
    t0 = time.perf_counter()
    hnsw.add(data)
    build = time.perf_counter() - t0
    points = []
    for ef in args.ef:
        hnsw.hnsw.efSearch = ef
        got, times = faiss_search(hnsw, queries)
        points.append(report("faiss hnsw", ef, got, times))
    out["engines"]["faiss_hnsw"] = {"build_s": round(build, 1), "index_bytes": int(len(faiss.serialize_index(hnsw))),
                                    "points": points}

    # pgvector / FAISS at matched recall: FAISS's fastest point with at least pgvector's recall.
    ratios = []
    for p in out["engines"]["pgvector_hnsw_vector"]["points"]:
        better = [f for f in points if f["recall_at_10"] >= p["recall_at_10"] - 1e-9]
        if better:
            f = max(better, key=lambda f: f["qps"])
            ratios.append({"pg_ef": p["ef_search"], "recall": p["recall_at_10"], "faiss_ef": f["ef_search"],
                           "faiss_recall": f["recall_at_10"], "qps_ratio": round(p["qps"] / f["qps"], 3)})
    out["pgvector_vs_faiss_hnsw"] = ratios
    for r in ratios:
        print(f"  pgvector/faiss QPS at recall {r['recall']:.4f} (pg ef {r['pg_ef']}, faiss ef {r['faiss_ef']}): {r['qps_ratio']}")
    vec, half = out["engines"]["pgvector_hnsw_vector"], out["engines"]["pgvector_hnsw_halfvec"]
    out["halfvec"] = {
        "index_ratio": round(half["index_bytes"] / vec["index_bytes"], 3),
        "recall_loss_at_ef": {str(a["ef_search"]): round(a["recall_at_10"] - b["recall_at_10"], 4)
                              for a, b in zip(vec["points"], half["points"])},
    }
    print(f"  halfvec: {out['halfvec']}", flush=True)
    return out


def plot(report: dict, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    sets = report["sets"]
    fig, axes = plt.subplots(1, len(sets), figsize=(6 * len(sets), 4.5), squeeze=False)
    for ax, (name, s) in zip(axes[0], sets.items()):
        for engine, entry in s["engines"].items():
            pts = entry["points"]
            ax.plot([p["recall_at_10"] for p in pts], [p["p95_ms"] for p in pts], marker="o", label=engine)
            for p in pts:
                if p["ef_search"]:
                    ax.annotate(str(p["ef_search"]), (p["recall_at_10"], p["p95_ms"]), fontsize=7)
        ax.set_yscale("log")
        ax.set_xlabel("recall@10 (labels: ef_search)")
        ax.set_ylabel("single-client p95 ms")
        ax.set_title(f"{name}\n{s['vectors']} x {s['dim']}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", action="store_true", help="the catalog's stored text and image vectors")
    parser.add_argument("--synthetic", type=int, default=0, help="N synthetic clustered vectors (e.g. 1000000)")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--ef", type=lambda s: [int(x) for x in s.split(",")], default=[20, 40, 100, 200, 400])
    parser.add_argument("--default-ef", type=int, default=100, help="the engine's EF_SEARCH, for the filtered runs")
    parser.add_argument("--m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="build threads for both (FAISS OpenMP, pgvector workers)")
    parser.add_argument("--build-memory", default="4GB",
                        help="pgvector's maintenance_work_mem for the builds: the graph must fit (1M x 384-d: ~2 GB)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/vector_search.json")
    args = parser.parse_args(argv)
    if not args.real and not args.synthetic:
        parser.error("give --real, --synthetic N, or both")
    import django

    django.setup()
    sets = real_sets(args.queries) if args.real else []
    if args.synthetic:
        data, queries = synthetic(args.synthetic, args.dim, args.queries)
        sets.append((f"synthetic-{args.synthetic}", data, queries))
    report = {
        "command": "bench/vector_search.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg(), "python": platform.python_version()},
        "m": args.m, "ef_construction": args.ef_construction, "threads": args.threads, "sets": {},
    }
    for name, data, queries in sets:
        report["sets"][name] = run_set(name, data, queries, args)
    report["machine"]["load_avg_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    plot(report, args.out.with_suffix(".png"))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
