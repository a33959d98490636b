"""Caption metrics: BLEU-1..4, CIDEr-D and ROUGE-L with pycocoevalcap's Python scorers, plus mentions and brands.

pycocoevalcap (the COCO caption evaluation code, `pip install mmsearch[train]`) is used for its pure-Python
scorers only; its PTB tokenizer needs Java, so texts are tokenised here with targets.words (lowercase, hyphenated
words joined, punctuation dropped) on both sides. Scores from a non-PTB tokeniser are close to, but not
comparable digit for digit with, published ones. Definitions:

- bleu1..bleu4: corpus BLEU (clipped n-gram precisions over all captions, geometric mean up to n, brevity
  penalty on the summed lengths; pycocoevalcap's "closest" reference length);
- cider: CIDEr-D (TF-IDF weighted n-grams 1-4, document frequencies from the references of the evaluated set,
  Gaussian length penalty sigma 6, clipped counts, x10);
- rouge_l: ROUGE-L F-measure (longest common subsequence, beta 1.2), averaged over captions;
- mentions: per attribute (article_type, colour, gender), the share of captions naming the product's value
  (targets.mentions), over the products that have a value;
- brand_hallucination: the share of captions naming a brand of the lexicon other than their product's own.
"""

from __future__ import annotations

from collections.abc import Sequence

from mmsearch.training.caption.targets import MENTION_KEYS, CaptionTargets, mentions, words


def _scorers():
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError as exc:
        raise ImportError("caption metrics need pycocoevalcap: pip install 'mmsearch[train]' "
                          "(or pip install pycocoevalcap)") from exc
    return Bleu, Cider, Rouge


def tokenised(text: str) -> str:
    """A caption as the scorers see it: its words joined by single spaces."""
    return " ".join(words(text))


def text_scores(captions: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """bleu1..bleu4, cider (CIDEr-D) and rouge_l of captions against their references (one list per caption)."""
    if len(captions) != len(references):
        raise ValueError(f"{len(captions)} captions for {len(references)} reference lists")
    if not captions:
        return {"bleu1": 0.0, "bleu2": 0.0, "bleu3": 0.0, "bleu4": 0.0, "cider": 0.0, "rouge_l": 0.0}
    Bleu, Cider, Rouge = _scorers()
    # An empty caption would break the scorers' n-gram code; a placeholder word matches nothing.
    res = {i: [tokenised(c) or "<empty>"] for i, c in enumerate(captions)}
    gts = {i: [tokenised(r) or "<empty>" for r in refs] for i, refs in enumerate(references)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    rouge, _ = Rouge().compute_score(gts, res)
    out = {f"bleu{n + 1}": float(b) for n, b in enumerate(bleu)}
    out.update(cider=float(cider), rouge_l=float(rouge))
    return out


def mention_rates(captions: Sequence[str], products: Sequence, keys: Sequence[str] = MENTION_KEYS) -> dict:
    """Per attribute, the share of captions that name their product's value (products without one left out)."""
    out = {}
    for key in keys:
        pairs = [(c, p.attributes[key]) for c, p in zip(captions, products) if p.attributes.get(key) not in (None, "")]
        out[key] = sum(mentions(c, key, str(v)) for c, v in pairs) / len(pairs) if pairs else None
    return out


def brand_hallucination(captions: Sequence[str], products: Sequence, targets: CaptionTargets) -> float:
    """The share of captions naming a lexicon brand that is not their product's brand."""
    if not captions:
        return 0.0
    return sum(targets.hallucinated_brand(c, p.title, p.attributes) is not None
               for c, p in zip(captions, products)) / len(captions)


def caption_metrics(captions: Sequence[str], references: Sequence[Sequence[str]], products: Sequence,
                    targets: CaptionTargets) -> dict:
    """Every metric of the module docstring for one set of captions."""
    return {**text_scores(captions, references), "mentions": mention_rates(captions, products),
            "brand_hallucination": brand_hallucination(captions, products, targets)}
