"""Evaluate any Embedder plugin on any catalog in the interchange format, in memory (no database).

- text_to_image: every distinct title (case-insensitive) of the --data products is a query; relevant =
  every product of data + corpus with that title; the corpus is every image of data + corpus (each image
  file once). The protocol behind Marqo's published KAGL numbers.
- zero_shot: for each attribute with 2..200 distinct values and each category level, the --data products'
  first images are classified against one prompt per value (the mean of data.FACET_TEMPLATES, through the
  tagger's plugins.zeroshot.prompt_vectors); logits are ZERO_SHOT_SCALE x cosine, as in CLIP, for the
  calibration error (15 bins). With a tagger calibration file (plugins.zeroshot.TaggerCalibration), every task
  whose attribute the file calibrated is also scored as the tagger serves it — against the file's vocabulary
  of the group, with its adapter, neighbour cache and temperature, on flip-averaged vectors when the file says
  flip —: ece_calibrated, adapted_accuracy (when there is an adapter or a cache) and auto_accept (precision and
  coverage here of the threshold chosen on the calibration split).
- photo_to_product: each shopper photo is a query against the products' images (a product scores its
  best image); accuracy@1, accuracy@5, mrr. The photo is embedded as search by photo embeds it (the mean of
  its `views`, mmsearch.search.photo); `single_view` gives the same metrics for the whole photo alone.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from mmsearch.plugins import zeroshot as Z
from mmsearch.plugins.base import VocabGroup, VocabTag
from mmsearch.plugins.runtime import unit_rows
from mmsearch.search.photo import PhotoViews, embed_views, query_vectors
from mmsearch.training import data as D
from mmsearch.training import metrics as M

MAX_ZERO_SHOT_VALUES = 200
ZERO_SHOT_SCALE = Z.LOGIT_SCALE  # 100
RECALL_KS = (1, 2, 5, 10, 20, 50, 100)


def load_embedder(spec: str):
    """An Embedder from an MMSEARCH_MODELS alias or a trained model folder (through the OpenClipEmbedder plugin)."""
    from mmsearch.plugins import get_model, model_settings

    if spec in model_settings():
        return get_model(spec)
    path = Path(spec[len("local-dir:"):] if spec.startswith("local-dir:") else spec).expanduser()
    if path.is_dir():
        from mmsearch.plugins.openclip import OpenClipEmbedder

        return OpenClipEmbedder(pretrained=f"local-dir:{path.resolve()}")
    raise D.DataError(
        f"--model {spec!r} is neither an alias in MMSEARCH_MODELS ({', '.join(sorted(model_settings()))}) "
        "nor a trained model folder"
    )


def embed_image_files(embedder, paths: Sequence[Path], progress: Callable | None, batch: int = 256,
                      flip: bool = False) -> np.ndarray:
    """Embed image files (with flip: their mirror images) in batches (decoded here, preprocessed by the plugin)."""
    out = []
    for start in range(0, len(paths), batch):
        decoded = [D.open_rgb(p) for p in paths[start:start + batch]]
        out.append(np.asarray(embedder.embed_images(Z.mirrored(decoded) if flip else decoded), dtype=np.float32))
        if progress:
            progress(min(start + batch, len(paths)))
    return np.concatenate(out) if out else np.zeros((0, embedder.dim), np.float32)


def file_key(path: Path) -> str:
    """An image file's identity for the vector cache: its resolved path, size and modification time."""
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def image_vectors(embedder, paths: Sequence[Path], cache_dir: Path | None = None, progress: Callable | None = None,
                  batch: int = 256, chunk: int = 4096, flip: bool = False) -> np.ndarray:
    """Unit image vectors of image files (with flip: of their mirror images). With cache_dir, each (embedder
    model_key, file) is embedded once: the vectors live in an incremental cache (imagevec-<hash of model_key>,
    imagevecflip-… for mirrors), so `calibrate_tagger` and the `evaluate` runs of `make train` share one pass
    over the catalog's images. `progress(done)` counts files."""
    if cache_dir is None:
        return unit_rows(embed_image_files(embedder, paths, progress, batch, flip))
    keys = [file_key(Path(p)) for p in paths]
    name = ("imagevecflip-" if flip else "imagevec-") + hashlib.sha256(embedder.model_key.encode()).hexdigest()[:16]
    cache = D.KeyedCache(Path(cache_dir), name, (int(embedder.dim),), np.float32)
    missing = cache.missing(keys)
    path_of = dict(zip(keys, paths))
    done = len(keys) - len(missing)
    if progress:
        progress(done)
    for start in range(0, len(missing), chunk):
        part = missing[start:start + chunk]
        rows = embed_image_files(embedder, [path_of[k] for k in part],
                                 (lambda n, base=done: progress(base + n)) if progress else None, batch, flip)
        cache.add(part, unit_rows(rows))
        done += len(part)
    return cache.rows(keys) if keys else np.zeros((0, int(embedder.dim)), np.float32)


def value_prompts(wordings, values: int):
    """One unit vector per value from its wordings' embeddings (a torch tensor, values x templates rows,
    value-major): the mean of the unit-length wordings. Zero-shot evaluation and training's facet loss share it."""
    import torch.nn.functional as F

    unit = F.normalize(wordings.float(), dim=-1)
    return F.normalize(unit.view(values, -1, unit.shape[-1]).mean(1), dim=-1)


def facet_group(key: str, values: Sequence[str]) -> VocabGroup:
    """The values of one facet as a tag group whose prompts are exactly data.facet_texts(key, value): the
    templates are FACET_TEMPLATES with "{facet}" as the product text writes the attribute ("{group}: {tag}",
    group name = the key with spaces), or empty for a key product_text leaves out (SKIPPED_ATTRIBUTES: year)."""
    facet = "{group}: {tag}" if D.facet_text(key, "x") else ""
    templates = tuple(t.replace("{facet}", facet).replace("{value}", "{tag}") for t in D.FACET_TEMPLATES)
    return VocabGroup(key, key.replace("_", " "), tuple(VocabTag(v, v) for v in values), templates)


def prompt_embeddings(embedder, key: str, values: Sequence[str]) -> np.ndarray:
    """One unit vector per value: the mean of its FACET_TEMPLATES embeddings (the tagger's prompt_vectors)."""
    return Z.prompt_vectors(embedder, facet_group(key, values))


def tagger_metrics(embedder, calibration: Z.TaggerCalibration, task: str, vectors: np.ndarray,
                   values: Sequence[str | None], target_precision: float | None = None) -> dict | None:
    """The task scored as the calibrated tagger serves it (None when the file did not calibrate this attribute):
    against the file's vocabulary of the group (a value no tag names counts as wrong), with its adapter and
    temperature. auto_accept measures here the threshold the file chose on its calibration split."""
    from mmsearch.training import calibration as C

    cal = calibration.groups.get(Z.group_slug(task)) if not task.startswith("category_level_") else None
    if cal is None:
        return None
    entry = calibration.meta["groups"][cal.slug]
    y = Z.labels_for(cal.group, list(values))
    keep = y != -1
    x, y = vectors[keep], y[keep]
    prompts = Z.prompt_vectors(embedder, cal.group)
    z0 = Z.zero_shot_logits(x, prompts)
    zs_t = float((entry.get("zero_shot") or {}).get("temperature") or cal.temperature)
    served_logits = cal.logits(x, prompts)
    served = Z.softmax(served_logits / cal.temperature)
    ece_cal, table = C.ece(served, y)
    target = cal.target_precision if target_precision is None else float(target_precision)
    accept = C.measure_threshold(served, y, cal.threshold_for(target))
    out = {
        "ece_calibrated": ece_cal,
        "auto_accept": {"target": target, **accept},
        "tagger": {
            "group_version": cal.version, "tags": len(cal.group.tags), "images": int(len(y)),
            "unknown_labels": int((y == -2).sum()), "adapted": cal.adapted, "temperature": cal.temperature,
            "accuracy": C.accuracy(served, y), "ece": C.ece(Z.softmax(served_logits), y)[0],
            "zero_shot_accuracy": C.accuracy(z0, y), "zero_shot_ece": C.ece(Z.softmax(z0), y)[0],
            "zero_shot_temperature": zs_t, "zero_shot_ece_calibrated": C.ece(Z.softmax(z0 / zs_t), y)[0],
        },
        "reliability_calibrated": table,
    }
    if cal.adapted:
        out["adapted_accuracy"] = out["tagger"]["accuracy"]
    return out


def zero_shot_tasks(products: Sequence[D.Product]) -> dict[str, tuple[str, list[str | None]]]:
    """task name -> (prompt key, label per product or None): attributes with 2..200 values, category levels."""
    tasks: dict[str, tuple[str, list[str | None]]] = {}
    keys = sorted({k for p in products for k in p.attributes})
    for key in keys:
        labels = [str(p.attributes[key]) if p.attributes.get(key) not in (None, "") else None for p in products]
        n = len({v for v in labels if v is not None})
        if 2 <= n <= MAX_ZERO_SHOT_VALUES:
            tasks[key] = (key, labels)
    depth = max((len([x for x in p.category.split("/") if x]) for p in products), default=0)
    for level in range(depth):
        labels = []
        for p in products:
            parts = [x for x in p.category.split("/") if x]
            labels.append(parts[level] if level < len(parts) else None)
        n = len({v for v in labels if v is not None})
        if 2 <= n <= MAX_ZERO_SHOT_VALUES:
            tasks[f"category_level_{level + 1}"] = ("category", labels)
    return tasks


def evaluate(embedder, data: str | Path, corpus: Sequence[str | Path] = (), photos: str | Path | None = None,
             progress: bool = True, model_seconds: float = 0.0, photo_views: PhotoViews | None = None,
             calibration: Z.TaggerCalibration | None = None, cache_dir: Path | None = None,
             target_precision: float | None = None,
             catalog_vectors: Callable[[list[Path]], np.ndarray] | None = None) -> dict:
    """All metrics of one model on one catalog; returns the JSON-ready report. Photos are embedded with
    `photo_views` (default: PhotoViews(), the search engine's default views); catalog image vectors are cached
    under `cache_dir` when given (image_vectors), or computed by `catalog_vectors(paths)` (unit rows) when given;
    `calibration` adds the calibrated tagger's numbers."""
    from tqdm import tqdm

    t_start = time.time()
    timings: dict[str, float] = {}
    data_products = D.load_products(data)
    corpus_products = D.load_catalog(corpus).products if corpus else []
    data_skus = {p.sku for p in data_products}
    everyone = data_products + [p for p in corpus_products if p.sku not in data_skus]

    # Corpus images: each file once, with its product's title.
    image_index: dict[Path, int] = {}
    image_paths: list[Path] = []
    image_title: list[str] = []
    image_product: list[int] = []
    for pi, p in enumerate(everyone):
        for img in p.images:
            key = img.resolve()
            if key not in image_index:
                image_index[key] = len(image_paths)
                image_paths.append(img)
                image_title.append(D.title_key(p.title))
                image_product.append(pi)
    photo_rows = D.load_photos(photos, (p.sku for p in everyone)) if photos else []

    t = time.time()
    bar = tqdm(total=len(image_paths) + len(photo_rows), desc="embed images", disable=not progress, mininterval=1.0)
    done = [0]

    def tick(n: int, offset: int = 0) -> None:
        bar.update(offset + n - done[0])
        done[0] = offset + n

    images = catalog_vectors(image_paths) if catalog_vectors else image_vectors(embedder, image_paths, cache_dir, tick)
    photo_views = photo_views or PhotoViews()
    # Each photo as search embeds it (the mean of its views) and, for comparison, the whole photo alone.
    whole = PhotoViews((1.0,), mirror=False)
    photo_emb, whole_emb = [], []
    for start in range(0, len(photo_rows), 64):
        chunk = [D.open_rgb(ph.image) for ph in photo_rows[start:start + 64]]
        per_view = embed_views(embedder, chunk, photo_views)
        photo_emb.append(query_vectors(per_view))
        at = photo_views.whole_index
        whole_emb.append(per_view[at] if at is not None else embed_views(embedder, chunk, whole)[0])
        tick(start + len(chunk), len(image_paths))
    bar.close()
    timings["embed_images"] = round(time.time() - t, 2)

    # text -> image
    t = time.time()
    queries: dict[str, str] = {}
    for p in data_products:
        queries.setdefault(D.title_key(p.title), p.title)
    by_title: dict[str, list[int]] = {}
    for i, tk in enumerate(image_title):
        by_title.setdefault(tk, []).append(i)
    q_keys = list(queries)
    q_emb = unit_rows(embedder.embed_texts([queries[k] for k in q_keys]))
    relevant = [np.array(by_title[k]) for k in q_keys]
    ranks: list[np.ndarray] = []
    for start in range(0, len(q_keys), 256):
        ranks += M.ranks_of_relevant(q_emb[start:start + 256] @ images.T, relevant[start:start + 256])
    t2i = M.summarise_ranks(ranks, len(image_paths), ks=(1, 10))
    t2i["curve"] = {str(k): float(np.mean([(r <= k).sum() / len(r) for r in ranks])) for k in RECALL_KS}

    # zero-shot
    first_image = np.array([image_index[p.images[0].resolve()] for p in data_products])
    tagger_images = images[first_image]  # what the calibrated tagger scores: flip-averaged when it was fitted so
    if calibration is not None and calibration.flip:
        tagger_images = Z.flip_average(tagger_images, image_vectors(
            embedder, [image_paths[i] for i in first_image], cache_dir, flip=True))
    zs: dict[str, dict] = {}
    for task, (key, labels) in zero_shot_tasks(data_products).items():
        values = sorted({v for v in labels if v is not None})
        sel = np.array([i for i, v in enumerate(labels) if v is not None])
        idx = {v: j for j, v in enumerate(values)}
        y = np.array([idx[labels[i]] for i in sel])
        logits = ZERO_SHOT_SCALE * images[first_image[sel]] @ prompt_embeddings(embedder, key, values).T
        zs[task] = {"values": len(values), **M.zero_shot(logits, y), "ece_calibrated": None, "auto_accept": None}
        if calibration is not None:
            zs[task].update(tagger_metrics(embedder, calibration, task, tagger_images[sel],
                                           [labels[i] for i in sel], target_precision) or {})
    timings["text_and_scoring"] = round(time.time() - t, 2)

    # photo -> product
    p2p = None
    if photo_rows:
        sku_index = {p.sku: i for i, p in enumerate(everyone)}
        prod_of_image = np.array(image_product)
        scores = np.full((len(photo_rows), len(everyone)), -np.inf, dtype=np.float32)
        targets = np.array([sku_index[ph.sku] for ph in photo_rows])

        def product_scores(queries: np.ndarray) -> np.ndarray:
            scores = np.full((len(photo_rows), len(everyone)), -np.inf, dtype=np.float32)
            sims = queries @ images.T
            for j in range(len(everyone)):
                cols = np.flatnonzero(prod_of_image == j)
                if len(cols):
                    scores[:, j] = sims[:, cols].max(axis=1)
            return scores

        scores = product_scores(np.concatenate(photo_emb))
        p2p = {"queries": len(photo_rows), "products": len(everyone), **M.accuracy_at(scores, targets, (1, 5))}
        p_ranks = M.ranks_of_relevant(scores, [np.array([t]) for t in targets])
        p2p["curve"] = {str(k): float(np.mean([r[0] <= k for r in p_ranks])) for k in (1, 2, 3, 5, 10, 20)}
        p2p["views"] = photo_views.as_dict()
        p2p["single_view"] = M.accuracy_at(product_scores(np.concatenate(whole_emb)), targets, (1, 5))
    timings["load_model"] = round(model_seconds, 2)
    timings["total"] = round(time.time() - t_start + model_seconds, 2)
    return {
        "model_key": embedder.model_key,
        "catalog_vectors": "given" if catalog_vectors else "embedder",
        "calibration": ({"path": str(calibration.path), "version": calibration.version,
                         "groups": sorted(calibration.groups)} if calibration is not None else None),
        "text_to_image": t2i,
        "zero_shot": zs,
        "photo_to_product": p2p,
        "timings": timings,
    }


def write_plots(report: dict, folder: Path) -> list[Path]:
    """PNG plots: recall@k (text->image, photo->product) and one reliability diagram per zero-shot task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    fig, ax = plt.subplots(figsize=(5, 4))
    curve = report["text_to_image"]["curve"]
    ax.plot([int(k) for k in curve], list(curve.values()), marker="o", label="text -> image recall@k")
    if report.get("photo_to_product"):
        pc = report["photo_to_product"]["curve"]
        ax.plot([int(k) for k in pc], list(pc.values()), marker="s", label="photo -> product accuracy@k")
    ax.set_xscale("log")
    ax.set_xlabel("k")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(report["model_key"], fontsize=8)
    fig.tight_layout()
    path = folder / "recall_at_k.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
    tasks = report["zero_shot"]
    if tasks:
        cols = min(3, len(tasks))
        rows = (len(tasks) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.6 * rows), squeeze=False)
        for ax, (name, res) in zip(axes.flat, tasks.items()):
            bins = [b for b in res["reliability"]]
            centres = [(b["lo"] + b["hi"]) / 2 for b in bins]
            ax.bar(centres, [b["accuracy"] for b in bins], width=0.9 / len(bins), alpha=0.7, label="zero-shot")
            title = f"{name}: acc {res['accuracy']:.2f}, ECE {res['ece']:.3f}"
            if res.get("reliability_calibrated"):
                cal = [b for b in res["reliability_calibrated"] if b["count"]]
                ax.plot([b["confidence"] for b in cal], [b["accuracy"] for b in cal], "o-", color="tab:orange",
                        ms=3, label="calibrated tagger")
                title += f" -> {res['ece_calibrated']:.3f}"
                ax.legend(fontsize=7, loc="upper left")
            ax.plot([0, 1], [0, 1], "k--", lw=1)
            ax.set_title(title, fontsize=9)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_xlabel("confidence")
        for ax in list(axes.flat)[len(tasks):]:
            ax.axis("off")
        fig.tight_layout()
        path = folder / "reliability.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
