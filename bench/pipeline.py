"""Embedding pipeline throughput vs the raw model forward pass, at the same batch size, on this machine.

    .venv/bin/python bench/pipeline.py [--images 384] [--batch-size 32] [--arch ViT-B-32] [--backend openclip]

1. Builds (once) a random-init open_clip model of --arch in open_clip's local-dir format under var/bench/
   (no download; the weights do not change the speed) and imports a catalog of --images real 348x348 JPEG
   shopper photos (../shared/datasets/grocery; the demo images when that is absent) into its own database.
2. Raw: decodes and preprocesses every image up front, then times only `embed_pixels` over the batches.
3. Pipeline: starts a real Celery worker (solo pool, queue `embed`), warms it up, then times an IndexJob
   that re-embeds every image end to end: DB read, file read and decode, preprocess, forward, upsert,
   job bookkeeping, broker round trips. Wall time from the job's first task start to its last batch.
Writes bench/results/pipeline.json and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VAR = ROOT / "var" / "bench"
SHARED_PHOTOS = ROOT.parent / "shared" / "datasets" / "grocery"
RESULTS = ROOT / "bench" / "results" / "pipeline.json"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=384, help="catalog images to embed (default 384)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--batches-per-task", type=int, default=4)
    p.add_argument("--decode-threads", type=int, default=2)
    p.add_argument("--arch", default="ViT-B-32", help="open_clip architecture, random init (default ViT-B-32)")
    p.add_argument("--backend", choices=["auto", "openclip", "hashing"], default="auto",
                   help="auto: openclip when open_clip is installed, else the model-independent hashing embedder")
    p.add_argument("--output", type=Path, default=RESULTS)
    return p.parse_args()


def setup_env(args: argparse.Namespace) -> dict[str, str]:
    """Environment shared by this process and the worker (set before Django starts)."""
    backend = args.backend
    if backend == "auto":
        try:
            import open_clip  # noqa: F401

            backend = "openclip"
        except ImportError:
            backend = "hashing"
    args.backend = backend
    env = {
        "DJANGO_SETTINGS_MODULE": "bench.settings",
        "MMSEARCH_DB_NAME": os.environ.get("BENCH_DB_NAME", "mmsearch_bench"),
        # A Redis database of its own on the embedded server, so the bench never touches real queues.
        "MMSEARCH_REDIS_DB": os.environ.get("BENCH_REDIS_DB", "15"),
        "MEDIA_ROOT": str(VAR / "media"),
        "BENCH_BACKEND": backend,
        "BENCH_MODEL_DIR": str(VAR / "models" / f"{args.arch}-random"),
        "MMSEARCH_EMBED_BATCH_SIZE": str(args.batch_size),
        "MMSEARCH_EMBED_BATCHES_PER_TASK": str(args.batches_per_task),
        "MMSEARCH_DECODE_THREADS": str(args.decode_threads),
    }
    os.environ.update(env)
    return env


def build_model(arch: str, folder: Path) -> None:
    """A random-init open_clip model of `arch` saved as an open_clip local-dir folder (once)."""
    if (folder / "open_clip_model.safetensors").exists():
        return
    import open_clip
    import safetensors.torch
    import torch
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    torch.manual_seed(0)
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        sys.exit(f"open_clip has no architecture {arch!r}")
    model = open_clip.create_model(arch, pretrained=None)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": cfg, "preprocess_cfg": {"mean": list(OPENAI_DATASET_MEAN), "std": list(OPENAI_DATASET_STD)}}
    ))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    tmp = folder / "open_clip_model.safetensors.tmp"
    safetensors.torch.save_file(state, str(tmp))
    tmp.rename(folder / "open_clip_model.safetensors")


def write_catalog(n: int) -> Path:
    """products.jsonl with n products, one real photo each."""
    folder = VAR / f"catalog-{n}"
    path = folder / "products.jsonl"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    if (SHARED_PHOTOS / "photos-train.jsonl").exists():
        images = folder / "photos"
        if not images.exists():
            images.symlink_to(SHARED_PHOTOS / "photos")
        for i, line in enumerate((SHARED_PHOTOS / "photos-train.jsonl").read_text().splitlines()[:n]):
            photo = json.loads(line)
            rows.append({"sku": f"bench-{i:05d}", "title": f"{photo['sku']} photo {i}", "category": "Bench/Photos",
                         "images": [photo["image"]]})
    else:  # the demo images, made distinct by a marker pixel
        from PIL import Image

        demo = sorted((ROOT / "demo" / "grocery" / "images").glob("*.jpg"))
        (folder / "images").mkdir(exist_ok=True)
        for i in range(n):
            img = Image.open(demo[i % len(demo)]).convert("RGB").resize((348, 348))
            img.putpixel((i % 348, i // 348 % 348), (i % 256, 0, 255))
            img.save(folder / "images" / f"{i:05d}.jpg", quality=90)
            rows.append({"sku": f"bench-{i:05d}", "title": f"bench {i}", "category": "Bench/Images",
                         "images": [f"images/{i:05d}.jpg"]})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def prepare_database(catalog: Path, n: int) -> list[int]:
    from django.core.management import call_command

    from catalog.importer import CatalogImporter
    from catalog.models import ProductImage
    from mmsearch import services

    services.ensure_started()
    call_command("migrate", verbosity=0)
    ids = list(ProductImage.objects.filter(product__sku__startswith="bench-").order_by("pk").values_list("pk", flat=True))
    if len(ids) < n:
        CatalogImporter(catalog).run()
        ids = list(ProductImage.objects.filter(product__sku__startswith="bench-").order_by("pk").values_list("pk", flat=True))
    return ids[:n]


def raw_forward(ids: list[int], batch_size: int) -> float:
    """Images/s of the model's forward pass alone: every batch decoded and preprocessed beforehand."""
    from catalog.models import ProductImage
    from mmsearch.plugins import get_model
    from mmsearch.plugins.runtime import batches as chunks
    from workers.pipeline import decode_image

    plugin = get_model("embedder")
    names = dict(ProductImage.objects.filter(pk__in=ids).values_list("pk", "file"))
    images = [decode_image(names[i]) for i in ids]
    pre, fwd = getattr(plugin, "preprocess", None), getattr(plugin, "embed_pixels", None)
    if pre and fwd:
        batches = [pre(list(b)) for b in chunks(images, batch_size)]
    else:  # a plugin without the split: its embed_images is its forward pass
        batches, fwd = [list(b) for b in chunks(images, batch_size)], plugin.embed_images
    fwd(batches[0])  # warm-up (first-call allocations)
    start = time.perf_counter()
    for batch in batches:
        fwd(batch)
    return len(images) / (time.perf_counter() - start)


def pipeline_run(ids: list[int], env: dict[str, str], log: Path) -> dict:
    from mmsearch.celery import app
    from mmsearch.models import IndexJob
    from mmsearch.plugins import get_model
    from mmsearch import indexing as jobs
    from workers import tasks

    if not os.environ.get("REDIS_URL"):  # the bench's own embedded Redis database: drop leftovers of an aborted run
        with app.connection_for_write() as conn:
            conn.default_channel.client.delete("embed")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as fh:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "mmsearch", "worker", "-Q", "embed", "--pool", "solo",
             "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "warning"],
            cwd=ROOT, env={**os.environ, **env}, stdout=fh, stderr=subprocess.STDOUT,
        )
        try:
            key = get_model("embedder").model_key
            # Warm-up: the worker loads the model on its first task; that is not throughput.
            tasks.embed_images.delay("embedder", key, ids[: int(env["MMSEARCH_EMBED_BATCH_SIZE"])], force=True).get(timeout=600)
            job = jobs.start_job("embedder", kind="images", force=True)
            deadline = time.monotonic() + 3600
            while not IndexJob.objects.get(pk=job.pk).finished:
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"worker stopped or timed out; see {log}")
                time.sleep(0.25)
            job.refresh_from_db()
        finally:
            worker.terminate()
            worker.wait(60)
    if job.status != "done" or job.failed:
        raise SystemExit(f"job {job.pk} {job.status}, {job.failed} failed: {job.error}")
    return {
        "job": job.pk, "images": job.total, "seconds": round(job.elapsed_seconds, 3),
        "images_per_s": round(job.total / job.elapsed_seconds, 2),
        # Summed over batches: the time the model waited for decoding, the forward passes, the writes.
        "decode_wait_s": round(job.decode_seconds, 3), "forward_s": round(job.forward_seconds, 3),
        "write_s": round(job.write_seconds, 3),
    }


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "gpu": None}
    try:
        import torch

        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                    gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    except ImportError:
        pass
    return info


def main() -> None:
    args = parse_args()
    env = setup_env(args)
    sys.path.insert(0, str(ROOT))
    if args.backend == "openclip":
        build_model(args.arch, Path(env["BENCH_MODEL_DIR"]))
    import django

    django.setup()
    from mmsearch.plugins import get_model

    ids = prepare_database(write_catalog(args.images), args.images)
    if len(ids) < args.images:
        raise SystemExit(f"only {len(ids)} images available")
    load = [os.getloadavg()[0]]  # other work on the machine slows both measurements; recorded beside them
    raw_before = raw_forward(ids, args.batch_size)
    load.append(os.getloadavg()[0])
    print(f"raw forward: {raw_before:.1f} images/s", flush=True)
    pipe = pipeline_run(ids, env, VAR / "worker.log")
    print(f"pipeline:    {pipe['images_per_s']:.1f} images/s ({pipe['images']} images in {pipe['seconds']}s)", flush=True)
    load.append(os.getloadavg()[0])
    raw_after = raw_forward(ids, args.batch_size)
    load.append(os.getloadavg()[0])
    print(f"raw forward: {raw_after:.1f} images/s (again, after the pipeline run)", flush=True)
    raw = (raw_before + raw_after) / 2
    result = {
        "benchmark": "embedding pipeline vs raw forward pass",
        "command": "make bench  (" + " ".join(["bench/pipeline.py", *sys.argv[1:]]) + ")",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {**machine(), "load_average_1m": [round(x, 1) for x in load]},
        "backend": args.backend,
        "model": f"open_clip {args.arch}, random init, 224px" if args.backend == "openclip" else "hashing embedder (no model)",
        "model_key": get_model("embedder").model_key,
        "images": len(ids),
        "image_source": "grocery shopper photos, 348x348 JPEG" if SHARED_PHOTOS.exists() else "demo images, 348x348 JPEG",
        "batch_size": args.batch_size,
        "batches_per_task": args.batches_per_task,
        "decode_threads": args.decode_threads,
        "raw_forward_images_per_s": round(raw, 2),
        "raw_forward_runs": [round(raw_before, 2), round(raw_after, 2)],
        "pipeline": pipe,
        "pipeline_images_per_s": pipe["images_per_s"],
        "ratio": round(pipe["images_per_s"] / raw, 3),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"ratio pipeline/raw: {result['ratio']:.2f}  -> {args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output}")


if __name__ == "__main__":
    main()
