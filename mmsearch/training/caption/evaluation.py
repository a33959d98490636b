"""Evaluate a captioner folder against two baselines on held-out products, in memory (no database).

Every product of --data is captioned from its first image three ways, and each set is scored against the
product's brand-free target (targets.py; the brand lexicon is fitted on data + corpus) with caption.metrics:

- captioner: the TrunkCaptioner plugin over the folder (its configured decoding, beam 3 by default);
- nearest_neighbour: the brand-free target of the corpus product whose first image is nearest (cosine) to the
  product's image by the embedder (--embedder, default models/embedder);
- tag_template: "{gender} {colour} {article type}" from the zero-shot tagger's top-1 tag of each group (the
  ZeroShotTagger over the embedder's alias, calibrated where a calibration file covers the group; with no alias
  for the embedder, the uncalibrated zero-shot top-1 of training.evaluation.prompt_embeddings).

One trunk pass per image: the trunk's grids of every image are read from (or added to) the trainers' grid
cache, the captioner decodes them, and when the embedder's image tower is the same trunk with a head (an
open_clip folder from train_embedder) its image vectors come from the same grids, after a check against the
plugin's own embed_images on a sample (cosine >= 0.995; otherwise the plugin embeds every image).
`ms_per_image` is measured separately on a sample of images through each method's serving path (decoded image
in, caption out, on this machine's torch threads): the captioner plugin's caption(), the embedder's
embed_images plus the neighbour search or the tagger's scoring.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from mmsearch.plugins.runtime import unit_rows
from mmsearch.training import data as D
from mmsearch.training.caption import metrics as CM
from mmsearch.training.caption.targets import MENTION_KEYS, CaptionTargets

PROBE_IMAGES = 32
MIN_PROBE_COSINE = 0.995


def embedder_alias_for(spec: str) -> str | None:
    """The MMSEARCH_MODELS alias that is `spec` (an alias) or loads the folder `spec`, for the tagger."""
    from mmsearch.plugins import alias_role, model_settings

    models = model_settings()
    if spec in models:
        return spec
    folder = Path(spec[len("local-dir:"):] if spec.startswith("local-dir:") else spec).expanduser().resolve()
    for alias, conf in models.items():
        try:
            role = alias_role(alias)
        except Exception:  # a broken alias is the system checks' business, not the evaluation's
            continue
        ref = str((conf.get("OPTIONS") or {}).get("pretrained") or "")
        ref = ref[len("local-dir:"):] if ref.startswith("local-dir:") else ref
        if role == "embedder" and ref and Path(ref).expanduser().resolve() == folder:
            return alias
    return None


def trained_folder(spec: str):
    """The model (training.model.Built) of a trained open_clip folder, or None for any other embedder spec."""
    from mmsearch.training.model import build_from_init

    folder = Path(spec[len("local-dir:"):] if spec.startswith("local-dir:") else spec).expanduser()
    return build_from_init(str(folder)) if (folder / "open_clip_config.json").is_file() else None


def grid_head(built, grids_shape: tuple[int, int]) -> Callable[[np.ndarray], np.ndarray] | None:
    """grids -> the embedder's unit image vectors, for a trained folder's model (`trained_folder`) whose image
    tower is a timm trunk and a head over the trunk's own pooling; None for any other (a stage-pooled one
    included, or None)."""
    if built is None:
        return None
    visual = built.net.visual.eval()
    if not (hasattr(visual, "trunk") and hasattr(visual, "head")) or hasattr(visual, "stage_pool"):
        return None  # a stage-pooled head reads more than the final grid
    tokens, channels = grids_shape
    side = int(round(tokens ** 0.5))

    @torch.no_grad()
    def head(grids: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(grids), 1024):
            g = torch.from_numpy(np.asarray(grids[start:start + 1024], dtype=np.float32))
            g = g.transpose(1, 2).reshape(len(g), channels, side, side)
            out.append(visual.head(visual.trunk.forward_head(g)).float().numpy())
        return unit_rows(np.concatenate(out)) if out else np.zeros((0, 0), np.float32)

    return head


def _timed(fn: Callable[[], object], n: int) -> float:
    t = time.perf_counter()
    fn()
    return round(1000 * (time.perf_counter() - t) / max(1, n), 2)


def evaluate_captioner(model: str | Path, data: str | Path, corpus: Sequence[str | Path], embedder: str,
                       cache_dir: Path | None, progress: bool = True, timing_images: int = 128,
                       log: Callable[[str], None] = print) -> dict:
    """The report of the module docstring (JSON-ready)."""
    from mmsearch.plugins.captioner import TrunkCaptioner
    from mmsearch.training.caption.trainer import cached_grids
    from mmsearch.training.evaluation import load_embedder, prompt_embeddings

    t_start = time.time()
    data_products = D.load_products(data)
    skus = {p.sku for p in data_products}
    corpus_products = [p for p in D.load_catalog(corpus).products if p.sku not in skus] if corpus else []
    if not corpus_products:
        raise D.DataError("the nearest-neighbour baseline needs --corpus products other than the --data ones")
    targets = CaptionTargets.fit([*data_products, *corpus_products])
    references = [[targets.target(p.title, p.attributes)] for p in data_products]
    captioner = TrunkCaptioner(str(model))
    captioner._ensure_loaded()
    trunk, spec = captioner._trunk, captioner.config["trunk"]
    timings: dict[str, float] = {}

    # One trunk pass per image: grids of the held-out and corpus images, from the shared cache.
    t = time.time()
    data_paths = [p.images[0] for p in data_products]
    corpus_paths = [p.images[0] for p in corpus_products]
    colour_dim = captioner.grid_shape[1] - captioner.trunk_channels
    grids = cached_grids(trunk, spec, data_paths + corpus_paths, cache_dir, "cpu", progress, colour_dim)
    data_grids, corpus_grids = grids[:len(data_paths)], grids[len(data_paths):]
    trunk_part = captioner.trunk_channels  # what the embedder's head reads: the trunk's own channels
    timings["grids"] = round(time.time() - t, 2)

    t = time.time()
    caps = [c.text for c in captioner.caption_grids(data_grids)]
    timings["captioner_decode"] = round(time.time() - t, 2)

    # The embedder's image vectors: from the grids when its tower is this trunk + a head, else from the images.
    t = time.time()
    emb = load_embedder(embedder)
    sample = [D.open_rgb(p) for p in data_paths[:timing_images]]
    built = trained_folder(embedder)
    head = grid_head(built, (data_grids.shape[1], trunk_part))
    probe = unit_rows(np.asarray(emb.embed_images(sample[:PROBE_IMAGES]), dtype=np.float32))
    via_grids = head is not None and float(
        (head(data_grids[:len(probe), :, :trunk_part]) * probe).sum(1).min()) >= MIN_PROBE_COSINE
    if via_grids:
        data_vec, corpus_vec = head(data_grids[..., :trunk_part]), head(corpus_grids[..., :trunk_part])
    elif built is not None:
        from mmsearch.training.trainer import model_vectors

        log("embedder image vectors: its head over the trunk features of the trainers' cache")
        vectors, _ = model_vectors(built, data_paths + corpus_paths, [], cache_dir, progress=progress)
        data_vec, corpus_vec = vectors[:len(data_paths)], vectors[len(data_paths):]
    else:
        log("embedder image vectors: its tower is not this trunk + head, embedding every image with the plugin")
        data_vec = _embed_files(emb, data_paths)
        corpus_vec = _embed_files(emb, corpus_paths)
    timings["embedder_vectors"] = round(time.time() - t, 2)

    # nearest neighbour: the brand-free target of the nearest corpus product.
    corpus_text = [targets.target(p.title, p.attributes) for p in corpus_products]
    corpus_t = torch.from_numpy(corpus_vec)

    def nearest(vectors: np.ndarray) -> list[int]:
        out = []
        for start in range(0, len(vectors), 1024):
            sims = torch.from_numpy(vectors[start:start + 1024]) @ corpus_t.T
            out += sims.argmax(1).tolist()
        return out

    nn_caps = [corpus_text[j] for j in nearest(data_vec)]

    # tag template: top-1 gender, colour and article type by the zero-shot tagger.
    keys = list(MENTION_KEYS)
    tag_source, score_groups = _tagger([*data_products, *corpus_products], keys, embedder, emb, prompt_embeddings)
    tag_caps = _templates(score_groups(data_vec), len(data_products))

    # Serving cost per image on a sample (decoded images in, captions out).
    n = len(sample)
    ms = {
        "captioner": _timed(lambda: captioner.caption(sample), n),
        "nearest_neighbour": _timed(lambda: nearest(unit_rows(np.asarray(emb.embed_images(sample), np.float32))), n),
        "tag_template": _timed(lambda: _templates(score_groups(unit_rows(np.asarray(emb.embed_images(sample),
                                                                                   np.float32))), n), n),
    }
    report: dict = {}
    for name, captions in (("captioner", caps), ("nearest_neighbour", nn_caps), ("tag_template", tag_caps)):
        scores = CM.caption_metrics(captions, references, data_products, targets)
        report[name] = {**scores, "ms_per_image": ms[name], "captions": len(captions)}
    report["captioner"]["model_key"] = captioner.model_key
    report["nearest_neighbour"]["embedder"] = emb.model_key
    report["tag_template"]["tagger"] = tag_source
    report["data"] = {"products": len(data_products), "corpus_products": len(corpus_products),
                      "brand_lexicon": len(targets.brands), "embedder_vectors_from_grids": via_grids,
                      "timing_images": n, "torch_threads": torch.get_num_threads()}
    report["examples"] = [{"title": p.title, "reference": r[0], "captioner": c, "nearest_neighbour": nn,
                           "tag_template": tt}
                          for p, r, c, nn, tt in list(zip(data_products, references, caps, nn_caps, tag_caps))[:25]]
    timings["total"] = round(time.time() - t_start, 2)
    report["timings"] = timings
    return report


def _embed_files(emb, paths: Sequence[Path], batch: int = 256) -> np.ndarray:
    out = [np.asarray(emb.embed_images([D.open_rgb(p) for p in paths[s:s + batch]]), np.float32)
           for s in range(0, len(paths), batch)]
    return unit_rows(np.concatenate(out))


def _tagger(products, keys, spec: str, emb, prompt_embeddings):
    """(what scored the tags, vectors -> {key: top-1 tag name per row})."""
    try:
        from mmsearch.plugins import zeroshot
    except ImportError:
        zeroshot = None
    alias = embedder_alias_for(spec)
    if zeroshot is not None and alias is not None:
        tagger = zeroshot.ZeroShotTagger(embedder=alias)
        groups = zeroshot.vocabulary_from_products(products, keys)
        by_key = {k: g for k in keys for g in groups if g.slug == zeroshot.group_slug(k)}

        def score(vectors: np.ndarray) -> dict[str, list[str]]:
            out = {}
            for key, group in by_key.items():
                probs, _ = tagger.score_vectors(vectors, group)
                out[key] = [group.tags[j].name for j in np.asarray(probs).argmax(1)]
            return out

        return tagger.model_key, score
    values = {k: sorted({str(p.attributes[k]) for p in products if p.attributes.get(k) not in (None, "")})
              for k in keys}
    prompts = {k: prompt_embeddings(emb, k, v) for k, v in values.items() if len(v) > 1}

    def score(vectors: np.ndarray) -> dict[str, list[str]]:
        return {k: [values[k][j] for j in (vectors @ prompts[k].T).argmax(1)] for k in prompts}

    return f"prompt_embeddings:{emb.model_key}", score


def _templates(top: dict[str, list[str]], n: int) -> list[str]:
    """'{gender} {colour} {article type}' per row from each group's top-1 tag (a missing group left out)."""
    return [" ".join(top[k][i].lower() for k in ("gender", "colour", "article_type") if k in top) for i in range(n)]
