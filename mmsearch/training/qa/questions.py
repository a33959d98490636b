"""Questions about a product: the phrasings, the answer vocabulary, generated training pairs and the parser.

Question types (the keys of evaluate_qa's report):
- an attribute the image shows, asked openly: `colour` ("what colour is it?"), `article_type`, `gender`, `usage`
  (VISUAL_KEYS; another catalog's keys get the generic phrasings); the answer is one of the key's values;
- `yes_no`: "is it red?", "is this for women?" -> yes / no; generated balanced, one true and one false value;
- `choice`: "is it red or blue?" -> one of the two values named;
- facts, answered from the product's data (mmsearch.plugins.answerer): `price`, `brand`, `origin`,
  `description` (a sentence of the product's description), `attribute` (any other attribute named).

The same phrasings serve three purposes, so they live here once: generating training pairs, the text
embedder's prototypes that route a question (plugins/answerer.Router), and the held-out evaluation.
No torch here.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

VISUAL_KEYS: tuple[str, ...] = ("colour", "article_type", "gender", "usage")
CATEGORY_KEY = "category"  # asked as "what is this?": the category's family level (value_of)
YES, NO = "yes", "no"
YES_NO, CHOICE = "yes_no", "choice"
FACT_TYPES: tuple[str, ...] = ("price", "brand", "origin", "description", "attribute")

OPEN_PHRASINGS: dict[str, tuple[str, ...]] = {
    "colour": ("what colour is it?", "what color is this?", "which colour is this product?", "what is the colour?",
               "what colour does it come in?", "tell me the colour", "what shade is it?", "which color is it?"),
    "article_type": ("what kind of product is this?", "what is this?", "what type of item is it?",
                     "what is this item?", "which product type is this?", "what am I looking at?",
                     "what sort of thing is this?", "what is it exactly?"),
    "gender": ("who is it for?", "which gender is it for?", "who is this made for?", "who can wear this?",
               "what gender is this for?", "who is this product designed for?", "is it for him or her?"),
    "category": ("what is this?", "what kind of product is it?", "which product is this?", "what is it?",
                 "what am I looking at?", "what sort of product is this?"),
    "usage": ("what is it used for?", "what occasion is it for?", "what is the usage?", "when would I wear this?",
              "what is this meant for?", "what style of use is it?", "what setting is this for?"),
}
GENERIC_OPEN = ("what is its {name}?", "which {name} is it?", "what {name} is this?", "tell me the {name}")

YES_NO_PHRASINGS: dict[str, tuple[str, ...]] = {
    "colour": ("is it {v}?", "is this {v}?", "does it come in {v}?", "is the colour {v}?", "is it {v} in colour?",
               "is this product {v}?"),
    "article_type": ("is this {v}?", "is it {v}?", "are these {v}?", "is this product {v}?", "is this one of the {v}?"),
    "gender": ("is it for {v}?", "is this for {v}?", "is this made for {v}?", "can {v} wear it?",
               "is it a {v} product?"),
    "usage": ("is it for {v} use?", "is it {v}?", "is this {v} wear?", "is this meant for {v}?"),
}
GENERIC_YES_NO = ("is it {v}?", "is this {v}?", "is the {name} {v}?")

CHOICE_PHRASINGS: dict[str, tuple[str, ...]] = {
    "colour": ("is it {a} or {b}?", "{a} or {b}?", "is this {a} or {b} in colour?", "which colour, {a} or {b}?"),
    "article_type": ("is this {a} or {b}?", "{a} or {b}?", "which is it, {a} or {b}?", "are these {a} or {b}?"),
    "gender": ("is it for {a} or {b}?", "{a} or {b}?", "is this made for {a} or {b}?"),
    "usage": ("is it for {a} or {b}?", "{a} or {b}?", "is this {a} or {b} wear?"),
}
GENERIC_CHOICE = ("is it {a} or {b}?", "{a} or {b}?", "which is it, {a} or {b}?")

# Fact questions: the router's prototypes (and the fact evaluation's phrasings).
FACT_PHRASINGS: dict[str, tuple[str, ...]] = {
    "price": ("how much is it?", "what is the price?", "what does it cost?", "how much does this cost?",
              "is it expensive?", "what's the price?", "how much do I pay for it?"),
    "brand": ("which brand is it?", "who makes it?", "what brand is this?", "who is the manufacturer?",
              "which company makes this?", "what make is it?"),
    "origin": ("where is it from?", "where is it made?", "which country does it come from?", "where was it grown?",
               "what is its origin?", "where does it come from?", "what country is it produced in?"),
    "description": ("is it organic?", "how does it taste?", "is it sweet?", "what does it taste like?",
                    "is it juicy?", "how should I store it?", "what is it good for?", "tell me more about it",
                    "what is special about it?", "what is it made of?", "how big is it?", "is it soft?"),
}
AUX_WORDS = {"is", "are", "does", "do", "can", "will", "would", "could", "has", "have", "was", "should", "am"}


@dataclass(frozen=True)
class QA:
    """One generated question with its answer: `type` is a visual key, YES_NO or CHOICE; `key` the attribute."""

    question: str
    answer: str
    type: str
    key: str
    options: tuple[str, ...] = ()  # the values a CHOICE (two) or YES_NO (one) question names


def name_of(key: str) -> str:
    """An attribute key as words ("article_type" -> "article type")."""
    return key.replace("_", " ")


def word(value: str) -> str:
    """A value as a question writes it (lower case)."""
    return value.lower()


def open_phrasings(key: str) -> tuple[str, ...]:
    return OPEN_PHRASINGS.get(key) or tuple(t.format(name=name_of(key)) for t in GENERIC_OPEN)


def yes_no_phrasings(key: str) -> tuple[str, ...]:
    return YES_NO_PHRASINGS.get(key) or tuple(t.replace("{name}", name_of(key)) for t in GENERIC_YES_NO)


def choice_phrasings(key: str) -> tuple[str, ...]:
    return CHOICE_PHRASINGS.get(key) or GENERIC_CHOICE


class Vocabulary:
    """The answers a model chooses from: yes, no, then every value of every key (a string once, whichever keys
    share it), with each key's values and their counts in the products it was fitted on."""

    def __init__(self, values: Mapping[str, Mapping[str, int]]):
        self.counts: dict[str, Counter] = {k: Counter(dict(v)) for k, v in values.items()}
        self.values: dict[str, list[str]] = {k: sorted(c) for k, c in self.counts.items()}
        answers = [YES, NO]
        for k in sorted(self.values):
            answers += [v for v in self.values[k] if v not in answers]
        self.answers = answers
        self.index = {a: i for i, a in enumerate(answers)}

    @classmethod
    def fit(cls, products: Iterable, keys: Sequence[str] = VISUAL_KEYS, max_values: int = 200) -> Vocabulary:
        """From products with `attributes`: each key with 2..max_values distinct values."""
        counts: dict[str, Counter] = {k: Counter() for k in keys}
        for p in products:
            for k in keys:
                v = value_of(p, k)
                if v is not None:
                    counts[k][v] += 1
        return cls({k: c for k, c in counts.items() if 2 <= len(c) <= max_values})

    def to_json(self) -> dict:
        return {k: dict(sorted(c.items())) for k, c in sorted(self.counts.items())}

    def majority(self, key: str) -> str:
        """The key's most frequent value (ties: the first by name)."""
        c = self.counts[key]
        return max(sorted(c), key=lambda v: c[v])

    def __len__(self) -> int:
        return len(self.answers)


def value_of(product, key: str) -> str | None:
    """A product's value of `key` as an answer names it, or None. The key CATEGORY_KEY, when no attribute has that
    name, is the second level of the product's category path (its family: Fruit/Apple/Pink-Lady -> Apple)."""
    attrs = getattr(product, "attributes", product) or {}
    v = attrs.get(key) if isinstance(attrs, Mapping) else None
    if v is None and key == CATEGORY_KEY:
        path = getattr(product, "category", "")
        levels = [x for x in path.split("/") if x] if isinstance(path, str) else []
        v = levels[1] if len(levels) > 1 else (levels[0] if levels else None)
    if v in (None, "") or isinstance(v, (dict, list, tuple, set)):
        return None
    return str(v)


def _other(rng: random.Random, counts: Counter, not_value: str) -> str | None:
    """A value other than `not_value`, drawn by frequency (common values are the plausible wrong ones)."""
    values = [v for v in sorted(counts) if v != not_value]
    if not values:
        return None
    return rng.choices(values, weights=[counts[v] for v in values])[0]


def generate(product, vocab: Vocabulary, rng: random.Random) -> list[QA]:
    """A product's training questions: one open question per key it has, one true and one false yes/no
    question, and two "A or B" choices (the true value and a frequency-drawn other one, in random order)."""
    keys = [k for k in sorted(vocab.values) if value_of(product, k) in vocab.counts[k]]
    out: list[QA] = []
    for k in keys:
        out.append(QA(rng.choice(open_phrasings(k)), value_of(product, k), k, k))
    if not keys:
        return out
    for truth in (True, False):
        k = rng.choice(keys)
        v = value_of(product, k) if truth else _other(rng, vocab.counts[k], value_of(product, k))
        if v is not None:
            out.append(QA(rng.choice(yes_no_phrasings(k)).format(v=word(v)), YES if truth else NO, YES_NO, k, (v,)))
    for _ in range(2):
        k = rng.choice(keys)
        v = value_of(product, k)
        other = _other(rng, vocab.counts[k], v)
        if other is None:
            continue
        a, b = (v, other) if rng.random() < 0.5 else (other, v)
        out.append(QA(rng.choice(choice_phrasings(k)).format(a=word(a), b=word(b)), v, CHOICE, k, (a, b)))
    return out


# --- reading a shopper's question -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Parsed:
    """What a question asks about the image: its type (a key, YES_NO or CHOICE, or None when it names no value
    and no key was routed), the attribute, the values it names, and the answers it allows."""

    type: str | None
    key: str | None
    values: tuple[str, ...] = ()
    candidates: tuple[str, ...] = ()


def _variants(value: str) -> set[str]:
    """How a question may write a value: lower case, with '-' as a space or none, singular or plural."""
    v = value.lower()
    out = {v, v.replace("-", " "), v.replace("-", ""), v.replace(" ", "")}
    for x in list(out):
        if x.endswith("es") and len(x) > 4:
            out.add(x[:-2])
        if x.endswith("s") and not x.endswith("ss") and len(x) > 3:
            out.add(x[:-1])
        out.add(x + "s")
    if v in ("men", "women"):
        out |= {v[:-2] + "an", v[:-2] + "an's", v + "'s"}
    return {x for x in out if x}


class QuestionParser:
    """Finds the vocabulary's values in a question (whole words, longest first) and reads its form: two values
    of one key joined by "or" make a choice, a value in a question that starts like "is / does / can" a yes/no
    question; otherwise the question is open, about the key the router chose."""

    def __init__(self, vocab: Vocabulary):
        self.vocab = vocab
        pairs = []  # (variant, key, value)
        for k, values in vocab.values.items():
            for v in values:
                pairs += [(x, k, v) for x in _variants(v)]
        pairs.sort(key=lambda t: -len(t[0]))
        self._pairs = pairs
        self._re = re.compile(r"\b(" + "|".join(re.escape(x) for x, _, _ in pairs) + r")\b") if pairs else None
        self._lookup: dict[str, list[tuple[str, str]]] = {}
        for x, k, v in pairs:
            self._lookup.setdefault(x, []).append((k, v))

    def mentions(self, question: str) -> list[tuple[str, str]]:
        """(key, value) of every value the question names, in order (a word naming values of several keys
        gives each)."""
        if self._re is None:
            return []
        out = []
        for m in self._re.finditer(question.lower()):
            out += [kv for kv in self._lookup[m.group(1)] if kv not in out]
        return out

    def parse(self, question: str, routed_key: str | None = None) -> Parsed:
        q = question.lower().strip()
        found = self.mentions(q)
        first = re.match(r"[a-z']+", q)
        by_key: dict[str, list[str]] = {}
        for k, v in found:
            by_key.setdefault(k, []).append(v)
        if re.search(r"\bor\b", q):
            multi = [k for k, vs in by_key.items() if len(vs) >= 2]
            if multi:
                k = routed_key if routed_key in multi else max(multi, key=lambda key: len(by_key[key]))
                vs = tuple(by_key[k])
                return Parsed(CHOICE, k, vs, vs)
        if found and first and first.group(0) in AUX_WORDS:
            k = routed_key if routed_key in by_key else found[0][0]
            return Parsed(YES_NO, k, (by_key[k][0],), (YES, NO))
        if routed_key in self.vocab.values:
            return Parsed(routed_key, routed_key, (), tuple(self.vocab.values[routed_key]))
        return Parsed(None, None, tuple(v for _, v in found), ())


def truth_of(parsed: Parsed, value: str | None) -> str | None:
    """The right answer to a parsed question for a product whose value of parsed.key is `value`."""
    if value is None or parsed.type is None:
        return None
    if parsed.type == YES_NO:
        return YES if value == parsed.values[0] else NO
    if parsed.type == CHOICE:
        return value if value in parsed.values else None
    return value
