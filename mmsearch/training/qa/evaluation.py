"""Evaluate an answerer folder on held-out products, in memory (no database): `manage.py evaluate_qa`.

Visual questions: questions.generate over every product of --data that has a value of the model's attributes
(seeded per sku, a seed other than training's), asked of the image alone (the product's data withheld, or the
answer would be read from it). Each question goes through the serving path's parts: the router and parser of
plugins/answerer.ProductAnswerer choose its type and the answers it allows, the TrunkAnswerer's calibrated
probabilities rank them (the trunk's grid from the trainers' grid cache), and the folder's threshold decides
whether it is answered. A question the router sends elsewhere (a fact type) counts as wrong and unanswered.

Per question type (`colour`, `article_type`, `gender`, `usage`, `yes_no`, `choice`, then the fact types) and
`overall`: accuracy (every question answered by its top answer), majority_baseline (the training products'
most frequent answer of the type; for a choice the more frequent of the two values; for yes/no "yes"),
late_fusion_accuracy (LateFusionAnswerer: the zero-shot tagger over the embedder, same routing),
model_alone_accuracy (the VQA head's own top answer, without the zero-shot scores its calibration adds), coverage and
answered_accuracy at the threshold, ECE of the calibrated confidence, ms_per_question (one question about an
image whose features are cached: the serving path's repeated question), and overall ms_first_question (the
image's trunk pass included).

Fact questions (`origin`, `price`, `brand` when the rows have those fields, and `description` from a labelled
file, --facts: rows {sku, question, evidence} naming the sentence or attribute line that answers it) are
right when the answer's evidence is that text.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from mmsearch.training import data as D
from mmsearch.training import metrics as M
from mmsearch.training.qa import questions as Q

EVAL_SEED = 1_000_003  # questions of held-out products are drawn with another seed than training's
TIMED_PER_TYPE = 16


def product_rows(path: Path) -> dict[str, dict]:
    """The raw rows of a products.jsonl by sku (descriptions, prices and brands, which training.data drops)."""
    return {str(r.get("sku", "")).strip(): r for _, r in D._read_jsonl(Path(path))}


def facts_of(row: dict, visual_keys: Sequence[str] = ()):
    """ProductFacts of a row, without the attributes the image is asked about (`visual_keys`)."""
    from mmsearch.plugins.base import ProductFacts

    attrs = {k: v for k, v in (row.get("attributes") or {}).items() if k not in visual_keys}
    price = row.get("price")
    return ProductFacts(sku=str(row.get("sku", "")), title=str(row.get("title", "")),
                        category=str(row.get("category") or ""), attributes=attrs,
                        description=str(row.get("description") or ""), brand=str(row.get("brand") or ""),
                        price=None if price in (None, "") else str(price), currency=str(row.get("currency") or ""))


def _scores(pred: list[str], conf: np.ndarray, truth: list[str], threshold: float) -> dict:
    right = np.array([p == t for p, t in zip(pred, truth)], dtype=bool)
    answered = conf >= threshold
    ece, _ = M.calibration(conf, right.astype(np.float64)) if len(right) else (0.0, [])
    return {"questions": int(len(right)), "accuracy": round(float(right.mean()), 4) if len(right) else None,
            "coverage": round(float(answered.mean()), 4) if len(right) else None,
            "answered_accuracy": round(float(right[answered].mean()), 4) if answered.any() else None,
            "ece": round(float(ece), 4)}


def evaluate_qa(model: str | Path, data: str | Path, embedder: str | None = None, facts: str | Path | None = None,
                cache_dir: Path | None = None, progress: bool = True, log: Callable[[str], None] = print,
                tagger_alias: str | None = None) -> dict:
    """The report of the module docstring (JSON-ready)."""
    import torch

    from mmsearch.plugins.answerer import DONT_KNOW, TrunkAnswerer
    from mmsearch.training.qa.trainer import image_inputs

    t_start = time.time()
    answerer = TrunkAnswerer(str(model))
    answerer._ensure_loaded()
    vocab = answerer.vocabulary
    keys = sorted(vocab.values)
    rows = product_rows(Path(data))
    try:
        products = D.load_products(data)
    except D.DataError:
        products = []
    visual = [p for p in products if any(Q.value_of(p, k) in vocab.counts[k] for k in keys)]
    report: dict = {"model_key": answerer.model_key, "threshold": answerer.threshold,
                    "temperature": answerer.temperature}

    # --- visual questions --------------------------------------------------------------------------------
    pairs: list[tuple[int, Q.QA]] = []
    for i, p in enumerate(visual):
        pairs += [(i, qa) for qa in Q.generate(p, vocab, random.Random(D.key_hash(f"{EVAL_SEED}|{p.sku}")))]
    by_type: dict[str, dict] = {}
    timings: dict[str, float] = {}
    if pairs:
        t = time.time()
        spec = answerer.config["trunk"]
        colour_dim = int(answerer.config["model"]["colour_dim"])
        grids = image_inputs(answerer._trunk, spec, [p.images[0] for p in visual], cache_dir, "cpu", progress,
                             colour_dim, (answerer.config.get("embedder") or {}).get("stage_pool"))
        timings["grids"] = round(time.time() - t, 2)
        t = time.time()
        texts = sorted({qa.question for _, qa in pairs})
        # The questions' token states once each (from the trainer's cache when it has them), and the router's
        # sentence vectors from them where they are the text embedder's (checked on a sample).
        from mmsearch.training.qa.trainer import question_tokens

        tokens = question_tokens(answerer._encoder, texts, cache_dir, progress)
        routed = route_many(answerer, texts, tokens)
        parsed = {q: answerer.parser.parse(q, r if r in vocab.values else None) for q, r in routed.items()}
        timings["routing"] = round(time.time() - t, 2)
        t = time.time()
        img = np.array([i for i, _ in pairs])
        row = {q: j for j, q in enumerate(texts)}
        z = np.zeros((len(pairs), len(vocab)), np.float32)
        for s in range(0, len(pairs), 2048):
            chunk = pairs[s:s + 2048]
            z[s:s + len(chunk)] = answerer.logits_from_tokens(tokens[[row[qa.question] for _, qa in chunk]],
                                                              grids[img[s:s + len(chunk)]])
        cos = None
        if answerer.zeroshot(grids[:1]) is not None:
            cos = np.concatenate([answerer.zeroshot(grids[s:s + 2048]) for s in range(0, len(grids), 2048)])
        timings["answers"] = round(time.time() - t, 2)
        pred, alone, conf = [], [], np.zeros(len(pairs))
        for j, (_, qa) in enumerate(pairs):
            pq = parsed[qa.question]
            if pq.type is None or not pq.candidates:
                pred.append(DONT_KNOW)
                alone.append(DONT_KNOW)
                continue
            probs = answerer.candidate_probabilities(z[j], None if cos is None else cos[img[j]], pq)
            pred.append(pq.candidates[int(probs.argmax())])
            conf[j] = float(probs.max())
            alone.append(max(pq.candidates, key=lambda c: z[j, vocab.index[c]]))  # the VQA head's own top answer
        truth = [qa.answer for _, qa in pairs]
        types = [qa.type for _, qa in pairs]
        # Late fusion: the same questions, routed the same way, answered by the zero-shot tagger.
        lf_pred = late_fusion_predictions(model, embedder, visual, pairs, parsed, cache_dir, progress, log,
                                          tagger_alias) if embedder else None
        majority = [majority_answer(vocab, qa) for _, qa in pairs]
        for name in [*keys, Q.YES_NO, Q.CHOICE, "overall"]:
            sel = [j for j, ty in enumerate(types) if name == "overall" or ty == name]
            if not sel:
                continue
            s = _scores([pred[j] for j in sel], conf[sel], [truth[j] for j in sel], answerer.threshold)
            s["majority_baseline"] = round(float(np.mean([majority[j] == truth[j] for j in sel])), 4)
            s["model_alone_accuracy"] = round(float(np.mean([alone[j] == truth[j] for j in sel])), 4)
            s["late_fusion_accuracy"] = (round(float(np.mean([lf_pred[j] == truth[j] for j in sel])), 4)
                                         if lf_pred is not None else None)
            s["routed_correctly"] = round(float(np.mean([parsed[pairs[j][1].question].key == pairs[j][1].key
                                                         for j in sel])), 4)
            by_type[name] = s
        # Serving cost per type: repeated questions (features cached), then the first one (trunk pass).
        sample_rng = random.Random(EVAL_SEED)
        for name in [*keys, Q.YES_NO, Q.CHOICE]:
            sel = [j for j, ty in enumerate(types) if ty == name]
            if sel and name in by_type:
                picks = sample_rng.sample(sel, min(TIMED_PER_TYPE, len(sel)))
                by_type[name]["ms_per_question"] = _time_answers(answerer, pairs, picks, visual, rows, keys, grids)
        picks = sample_rng.sample(range(len(pairs)), min(TIMED_PER_TYPE, len(pairs)))
        by_type["overall"]["ms_per_question"] = _time_answers(answerer, pairs, picks, visual, rows, keys, grids)
        by_type["overall"]["ms_first_question"] = _time_first(answerer, pairs, picks, visual, rows, keys)
        if lf_pred is not None:
            report["late_fusion"] = {"embedder": str(embedder), **_late_fusion_cost(model, embedder, pairs, picks,
                                                                                    visual, rows, keys, tagger_alias)}
    # --- fact questions ----------------------------------------------------------------------------------
    fact_rows = fact_questions(rows, facts)
    fact_scores = defaultdict(list)
    for row in fact_rows:
        t = time.perf_counter()
        ans = answerer.answer_features(row["question"], facts_of(rows[row["sku"]], ()), None)
        ms = 1000 * (time.perf_counter() - t)
        got = [e.text for e in ans.evidence]
        right = bool(got) and _same_text(got[0], row["evidence"])
        fact_scores[row["type"]].append((right, not ans.abstained, ms, ans.kind == row["type"]))
    for name, items in sorted(fact_scores.items()):
        right = np.array([r for r, _, _, _ in items])
        answered = np.array([a for _, a, _, _ in items])
        by_type[name] = {"questions": len(items), "accuracy": round(float(right.mean()), 4),
                         "coverage": round(float(answered.mean()), 4),
                         "answered_accuracy": round(float(right[answered].mean()), 4) if answered.any() else None,
                         "majority_baseline": None, "late_fusion_accuracy": None,
                         "routed_correctly": round(float(np.mean([k for _, _, _, k in items])), 4),
                         "ms_per_question": round(float(np.mean([m for _, _, m, _ in items])), 2),
                         "evidence": "right when the answer's evidence is the labelled sentence or line"}
    if fact_scores and not pairs:
        allr = [x for items in fact_scores.values() for x in items]
        by_type["overall"] = {"questions": len(allr), "accuracy": round(float(np.mean([r for r, *_ in allr])), 4),
                              "coverage": round(float(np.mean([a for _, a, *_ in allr])), 4),
                              "answered_accuracy": round(float(np.mean([r for r, a, *_ in allr if a])), 4)
                              if any(a for _, a, *_ in allr) else None,
                              "majority_baseline": None, "late_fusion_accuracy": None,
                              "ms_per_question": round(float(np.mean([m for _, _, m, _ in allr])), 2)}
    report.update(by_type)
    report["data"] = {"file": str(data), "products": len(rows), "visual_products": len(visual),
                      "visual_questions": len(pairs), "fact_questions": len(fact_rows),
                      "facts_file": str(facts) if facts else None, "torch_threads": torch.get_num_threads(),
                      "question_seed": EVAL_SEED}
    report["examples"] = [{"sku": visual[i].sku, "question": qa.question, "truth": qa.answer, "answer": pred[j],
                           "confidence": round(float(conf[j]), 3), "answered": bool(conf[j] >= answerer.threshold)}
                          for j, (i, qa) in enumerate(pairs[:40])] if pairs else []
    timings["total"] = round(time.time() - t_start, 2)
    report["timings"] = timings
    return report


def route_many(answerer, texts: list[str], tokens: np.ndarray | None = None) -> dict[str, str]:
    """The router's type of every distinct question. With the questions' MiniLM token states, their mean is the
    sentence vector when the text embedder is that MiniLM (mean pooling): used when it matches the embedder on
    a sample (cosine >= 0.995), else one text-embedder pass."""
    router = answerer.router
    from mmsearch.plugins.runtime import unit_rows

    vecs = None
    if tokens is not None and len(texts):
        t = np.asarray(tokens, np.float32)
        pooled = unit_rows(t.sum(1) / np.maximum((np.abs(t).sum(-1) > 0).sum(1, keepdims=True), 1))
        probe = unit_rows(np.asarray(router.embedder.embed_texts(texts[:32]), np.float32))
        if pooled.shape[1] == probe.shape[1] and float((pooled[:32] * probe).sum(1).min()) >= 0.995:
            vecs = pooled
    if vecs is None:
        vecs = unit_rows(np.asarray(router.embedder.embed_texts(texts), np.float32)) if texts else np.zeros((0, 1))
    best = (vecs @ router.vectors.T).argmax(1) if len(texts) else []
    return {t: router.types[int(b)] for t, b in zip(texts, best)}


def majority_answer(vocab: Q.Vocabulary, qa: Q.QA) -> str:
    """The baseline's answer: the key's most frequent training value; yes; the more frequent of two options."""
    if qa.type == Q.YES_NO:
        return Q.YES
    if qa.type == Q.CHOICE:
        return max(qa.options, key=lambda v: (vocab.counts[qa.key][v], v))
    return vocab.majority(qa.key)


def _same_text(a: str, b: str) -> bool:
    norm = lambda s: " ".join(str(s).lower().split()).rstrip(".")  # noqa: E731
    return norm(a) == norm(b)


def fact_questions(rows: dict[str, dict], facts: str | Path | None) -> list[dict]:
    """{sku, question, type, evidence} of every fact question: the labelled file's, then one origin / price /
    brand question per row that has that field (phrasing drawn per sku)."""
    from mmsearch.plugins.answerer import ORIGIN_KEYS

    out = []
    if facts:
        for line_no, r in D._read_jsonl(Path(facts)):
            if not all(isinstance(r.get(k), str) and r[k] for k in ("sku", "question", "evidence")):
                raise D.DataError(f"{facts}:{line_no}: a row needs 'sku', 'question' and 'evidence' strings")
            if r["sku"] not in rows:
                raise D.DataError(f"{facts}:{line_no}: sku {r['sku']!r} is not in the --data file")
            out.append({"sku": r["sku"], "question": r["question"], "type": r.get("type") or "description",
                        "evidence": r["evidence"]})
    for sku, row in sorted(rows.items()):
        rng = random.Random(D.key_hash(f"{EVAL_SEED}|facts|{sku}"))
        attrs = row.get("attributes") or {}
        origin = next(((k, v) for k, v in attrs.items() if ORIGIN_KEYS.search(k) and v not in (None, "")), None)
        if origin:
            out.append({"sku": sku, "question": rng.choice(Q.FACT_PHRASINGS["origin"]), "type": "origin",
                        "evidence": f"{Q.name_of(origin[0])}: {origin[1]}"})
        if row.get("price") not in (None, ""):
            text = f"{row['price']} {row.get('currency') or ''}".strip()
            out.append({"sku": sku, "question": rng.choice(Q.FACT_PHRASINGS["price"]), "type": "price",
                        "evidence": text})
        if row.get("brand"):
            out.append({"sku": sku, "question": rng.choice(Q.FACT_PHRASINGS["brand"]), "type": "brand",
                        "evidence": row["brand"]})
    return out


def _time_answers(answerer, pairs, picks, visual, rows, keys, grids) -> float:
    """Mean ms of answer_features (the image's features cached) over the picked questions."""
    t = time.perf_counter()
    for j in picks:
        i, qa = pairs[j]
        answerer.answer_features(qa.question, facts_of(rows[visual[i].sku], keys), grids[i:i + 1])
    return round(1000 * (time.perf_counter() - t) / max(1, len(picks)), 2)


def _time_first(answerer, pairs, picks, visual, rows, keys) -> float:
    """Mean ms of answer() from a decoded image (the trunk pass included)."""
    total = 0.0
    for j in picks:
        i, qa = pairs[j]
        image = D.open_rgb(visual[i].images[0])
        t = time.perf_counter()
        answerer.answer(qa.question, facts_of(rows[visual[i].sku], keys), [image])
        total += time.perf_counter() - t
    return round(1000 * total / max(1, len(picks)), 2)


# --- late fusion ----------------------------------------------------------------------------------------------
def _late_fusion(model, embedder: str, tagger_alias: str | None):
    """A LateFusionAnswerer over the embedder (an alias, or a folder registered for this evaluation) and the
    zero-shot tagger: (a settings context that defines the aliases, the tagger alias)."""
    import contextlib

    from django.test import override_settings

    from mmsearch.plugins import model_settings

    models = dict(model_settings())
    if tagger_alias and tagger_alias in models:
        return contextlib.nullcontext(), tagger_alias
    alias = embedder if embedder in models else None
    if alias is None:
        folder = Path(embedder[len("local-dir:"):] if embedder.startswith("local-dir:") else embedder).expanduser()
        if not folder.is_dir():
            raise D.DataError(f"--embedder {embedder!r} is neither an alias of MMSEARCH_MODELS nor a model folder")
        alias = "qa_eval_embedder"
        models[alias] = {"ROLE": "embedder", "BACKEND": "mmsearch.plugins.openclip.OpenClipEmbedder",
                         "OPTIONS": {"pretrained": f"local-dir:{folder.resolve()}", "device": "cpu"}}
    models["qa_eval_tagger"] = {"ROLE": "tagger", "BACKEND": "mmsearch.plugins.zeroshot.ZeroShotTagger",
                                "OPTIONS": {"embedder": alias}}
    return override_settings(MMSEARCH_MODELS=models), "qa_eval_tagger"


def late_fusion_predictions(model, embedder, visual, pairs, parsed, cache_dir, progress, log, tagger_alias=None):
    """The late-fusion baseline's answer to every question (the image vector from the embedder, cached)."""
    from mmsearch.plugins.answerer import DONT_KNOW, LateFusionAnswerer
    from mmsearch.plugins import zeroshot as Z
    from mmsearch.training.evaluation import image_vectors

    ctx, tagger = _late_fusion(model, embedder, tagger_alias)
    with ctx:
        lf = LateFusionAnswerer(vocabulary=str(model), tagger=tagger)
        emb = lf.tagger_model.embedder_model
        vectors = image_vectors(emb, [p.images[0] for p in visual], cache_dir)
        if lf.tagger_model.flip:  # scored as the tagger serves them
            vectors = Z.flip_average(vectors, image_vectors(emb, [p.images[0] for p in visual], cache_dir, flip=True))
        probs = {k: lf.value_probabilities(k, vectors) for k in lf.vocabulary.values}
        out = []
        for i, qa in pairs:
            pq = parsed[qa.question]
            if pq.type is None or not pq.candidates:
                out.append(DONT_KNOW)
                continue
            p = lf.candidates_from_values(pq, probs[pq.key][i])
            out.append(pq.candidates[int(np.argmax(p))])
        log(f"late fusion: {lf.model_key}")
    return out


def _late_fusion_cost(model, embedder, pairs, picks, visual, rows, keys, tagger_alias=None) -> dict:
    from mmsearch.plugins.answerer import LateFusionAnswerer

    ctx, tagger = _late_fusion(model, embedder, tagger_alias)
    with ctx:
        lf = LateFusionAnswerer(vocabulary=str(model), tagger=tagger)
        key = lf.model_key
        first = _time_first(lf, pairs, picks, visual, rows, keys)
        feats = {i: lf.image_features([D.open_rgb(visual[i].images[0])]) for i in {pairs[j][0] for j in picks}}
        t = time.perf_counter()
        for j in picks:
            i, qa = pairs[j]
            lf.answer_features(qa.question, facts_of(rows[visual[i].sku], keys), feats[i])
        repeated = round(1000 * (time.perf_counter() - t) / max(1, len(picks)), 2)
    return {"model_key": key, "ms_per_question": repeated, "ms_first_question": first}
