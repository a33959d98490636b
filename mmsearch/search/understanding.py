"""Query understanding: which words of a query name something of the catalog (a colour, a gender, an article
type, a category, a tag), including words the catalog never uses.

    vocab = current_vocabulary()                  # cached per process; one cheap version query per call
    plan = prepare(vocab, "ladies grey jumper")   # exact, lexicon and typo candidates, the spans left to embed
    found = resolve(plan, span_vectors, encoder)  # + the lexicon's and the embedder's -> [Understood, ...]

The vocabulary comes through the catalog adapter (`search_vocabulary`): attribute values, category names, tags
with their synonyms, and the merchant's search synonyms (catalog.SearchSynonym in the admin). A span is matched
in four stages, each only on the words the earlier ones left:

  1. exact: the longest run of words whose light stems (plurals, possessives: "women's" = "women", "ladies" =
     "lady") or whose concatenation ("t-shirt" = "tshirt") equal a name, a synonym or a merchant synonym;
  2. lexicon: one or two words that an English lexicon (WordNet, mmsearch.search.lexicon) places under a
     value's name ("pullover" is a kind of sweater, "crimson" of red, "ladies" of woman); among the values it
     allows, the text embedder's similarity decides ("male": Men rather than Boys);
  3. typo: one word the catalog's text does not contain within a small edit distance of a one-word phrase;
  4. embedding: one or two words whose text_embedder vector is close enough to a phrase's vector
     (UNDERSTAND["EMBED_THRESHOLD"], with a margin over the next-best value), e.g. "trackies" -> Track Pants.

Each recognised span is a soft signal for the engine (a boost in the fusion and a candidate list), never a
filter: the shopper did not ask for one. Confidences of the lexicon, typo and embedding stages are calibrated on a
labelled set by `manage.py fit_search_weights` (UNDERSTAND["CALIBRATION"]).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from mmsearch.adapter import VocabularyTerm, get_catalog
from mmsearch.search import lexicon as lexicon_mod
from mmsearch.search.config import config

logger = logging.getLogger(__name__)

# Words that carry no meaning of their own in a shopper's query.
STOPWORDS = frozenset(
    "a an and any are at by for from in into is it its me my of on or our some the to with without "
    "i im want need looking look find show buy new".split()
)
_TOKEN = re.compile(r"[^\W_]+(?:['’][^\W_]+)*", re.UNICODE)
# Words that describe which attribute a value belongs to, in any catalog ("red colour", "coloured", "size").
FIELD_WORDS = frozenset({"colour", "color", "coloured", "colored", "type", "kind", "style", "size"})
SOURCE_RANK = {"merchant": 0, "name": 1, "synonym": 2}
# Which filter wins when two terms share a phrase: an attribute value, then a tag, then a category.
KIND_RANK = {"attr": 0, "tag": 1, "category": 2}
MAX_NGRAM = 5
# The embedder looks at spans of at most this many words.
EMBED_NGRAM = 2


@dataclass(frozen=True)
class Token:
    text: str  # as typed
    norm: str  # lower case, apostrophes dropped
    stem: str
    start: int
    end: int
    content: bool  # not a stop word


@dataclass
class Understood:
    """One recognised span of the query and what it names."""

    span: str
    start: int
    end: int
    filter: str  # "attr.colour", "category", "tag"
    value: str  # the filter's value
    label: str
    confidence: float
    source: str  # "name", "synonym", "merchant", "lexicon", "typo", "embedding"
    matched: str = ""  # the vocabulary phrase it matched
    similarity: float | None = None  # the embedding stage's cosine similarity (else None)
    margin: float | None = None  # its lead over the best phrase of another value of the same filter
    distance: float | None = None  # the typo stage's edit distance over the word's length
    cost: float | None = None  # the lexicon stage's WordNet distance (lexicon.Hit.cost)
    applied: bool = True  # False when the shopper removed it or an explicit filter on the same name decides
    tokens: tuple[int, ...] = ()
    term: int = -1  # index into the vocabulary's terms

    @property
    def attribute(self) -> str:
        """'colour' for attr.colour; 'category' or 'tag' otherwise."""
        return self.filter[5:] if self.filter.startswith("attr.") else self.filter

    def data(self) -> dict:
        return {
            "span": self.span, "attribute": self.attribute, "filter": self.filter, "value": self.value,
            "label": self.label, "confidence": round(self.confidence, 3), "source": self.source,
            "start": self.start, "end": self.end, "applied": self.applied,
        }


# --- words --------------------------------------------------------------------------------------------------

def stem(word: str) -> str:
    """A light English stem for matching names: plurals and possessives only ('ladies' -> 'lady', 'watches' ->
    'watch', 'shoes' -> 'shoe', "men's" -> 'men', 'jeans' -> 'jean'). Both sides go through it, so it need
    only be consistent, not a dictionary form."""
    w = word.lower().replace("'", "").replace("’", "")
    if len(w) <= 3:
        return w
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y"
    if w.endswith("sses"):
        return w[:-2]
    if w.endswith(("ches", "shes", "xes", "zes")):
        return w[:-2]
    if w.endswith("s") and not w.endswith("ss"):
        return w[:-1]
    return w


def tokens(text: str) -> list[Token]:
    out = []
    for m in _TOKEN.finditer(text):
        raw = m.group(0)
        norm = raw.lower().replace("'", "").replace("’", "")
        out.append(Token(raw, norm, stem(norm), m.start(), m.end(), norm not in STOPWORDS))
    return out


def phrase_keys(phrase: str) -> list[tuple[str, ...]]:
    """The keys a phrase is found by: its stems, and (for several words) their concatenation."""
    stems = tuple(t.stem for t in tokens(phrase))
    if not stems:
        return []
    keys = [stems]
    if len(stems) > 1:
        keys.append((stem("".join(t.norm for t in tokens(phrase))),))
    return keys


def edit_distance(a: str, b: str, limit: int) -> int:
    """Optimal-string-alignment distance (a transposition counts 1), or limit + 1 once it must exceed limit."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev2: list[int] | None = None
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        best = cur[0]
        for j, cb in enumerate(b, 1):
            cost = 0 if ca == cb else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if prev2 is not None and i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
            best = min(best, cur[j])
        if best > limit:
            return limit + 1
        prev2, prev = prev, cur
    return prev[-1]


def typo_limit(word: str) -> int:
    return 0 if len(word) < 4 else (1 if len(word) <= 7 else 2)


# --- the vocabulary -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Phrase:
    text: str  # lower case
    term: int  # index into Vocabulary.terms
    source: str  # name, synonym, merchant


def _kind(filter_name: str) -> str:
    return "attr" if filter_name.startswith("attr.") else filter_name


class Vocabulary:
    """The catalog's terms indexed for matching: exact keys, one-word keys for typos, phrases for the embedder."""

    def __init__(self, terms: Sequence[VocabularyTerm], version: str = "") -> None:
        self.terms = list(terms)
        self.version = version
        self.phrases: list[Phrase] = []
        seen: set[tuple[str, int]] = set()
        for i, term in enumerate(self.terms):
            for source, texts in (("merchant", term.merchant), ("name", term.names), ("synonym", term.synonyms)):
                for text in texts:
                    norm = " ".join(text.lower().split())
                    if norm and (norm, i) not in seen:
                        seen.add((norm, i))
                        self.phrases.append(Phrase(norm, i, source))
        self.exact: dict[tuple[str, ...], list[int]] = {}  # key -> phrase indexes, best first
        for p, phrase in enumerate(self.phrases):
            for key in phrase_keys(phrase.text):
                self.exact.setdefault(key, []).append(p)
        for key, found in self.exact.items():
            found.sort(key=self._rank)
        # One-word keys (and concatenated phrases) by length, for the typo stage.
        self.words: dict[int, list[str]] = {}
        for key in self.exact:
            if len(key) == 1 and len(key[0]) >= 4:
                self.words.setdefault(len(key[0]), []).append(key[0])
        self.max_ngram = min(MAX_NGRAM, max((len(k) for k in self.exact), default=1))
        # Words that name an attribute rather than a value ("colour", "coloured", "gender", "usage"): never a
        # value themselves, unless some phrase is exactly that word.
        names = {t.filter[5:].replace("_", " ") for t in self.terms if t.filter.startswith("attr.")}
        self.field_words = {stem(w) for name in names for w in name.split()} | FIELD_WORDS
        self.field_words -= {k[0] for k in self.exact if len(k) == 1}
        # The embedder compares against each distinct phrase once, as its best-ranked term's ("jumpsuit" is the
        # article type, not also the category of the same name).
        best: dict[str, int] = {}
        for p, phrase in enumerate(self.phrases):
            if phrase.text not in best or self._rank(p) < self._rank(best[phrase.text]):
                best[phrase.text] = p
        self.embedded = sorted(best.values())
        self._vectors: dict[str, np.ndarray] = {}  # model_key -> phrase matrix
        self._lock = threading.Lock()
        self._lexicon: lexicon_mod.Lexicon | None | bool = False  # False: not read yet

    def lexicon(self) -> lexicon_mod.Lexicon | None:
        """The WordNet map of this vocabulary's names (anchors: names and tag synonyms, not the merchant's
        synonyms, so a synonym edit reuses it); None when switched off or WordNet is not installed."""
        conf = config()["UNDERSTAND"]
        if not conf.get("LEXICON", True):
            return None
        with self._lock:
            if self._lexicon is False:
                anchors = [(t.filter, tuple(t.names) + tuple(t.synonyms)) for t in self.terms]
                self._lexicon = lexicon_mod.lexicon_for(anchors, int(conf.get("LEXICON_DEPTH", 3)))
            return self._lexicon

    def term_phrases(self, term: int) -> list[str]:
        """The phrases (lower case) a term is named by, for the embedder's tie-break."""
        return [p.text for p in self.phrases if p.term == term] or [self.terms[term].label.lower()]

    def _rank(self, p: int) -> tuple:
        phrase = self.phrases[p]
        term = self.terms[phrase.term]
        return (SOURCE_RANK[phrase.source], KIND_RANK.get(_kind(term.filter), 3), -term.products, term.value)

    def phrase_matrix(self, model_key: str, embed: Callable[[list[str]], np.ndarray]) -> np.ndarray:
        """Unit vectors of every phrase for this model (computed once; per phrase cached across reloads)."""
        with self._lock:
            matrix = self._vectors.get(model_key)
            if matrix is None:
                texts = [self.phrases[p].text for p in self.embedded]
                matrix = phrase_vectors(model_key, texts, embed) if texts else np.zeros((0, 1), dtype=np.float32)
                self._vectors[model_key] = matrix
            return matrix


# Phrase vectors survive vocabulary reloads (a merchant's new synonym embeds one phrase, not all of them).
_PHRASE_VECTORS: dict[tuple[str, str], np.ndarray] = {}
_PHRASE_LOCK = threading.Lock()


def phrase_vectors(model_key: str, texts: list[str], embed: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    with _PHRASE_LOCK:
        missing = [t for t in dict.fromkeys(texts) if (model_key, t) not in _PHRASE_VECTORS]
    for start in range(0, len(missing), 256):
        batch = missing[start:start + 256]
        vecs = np.asarray(embed(batch), dtype=np.float32)
        with _PHRASE_LOCK:
            for text, vec in zip(batch, vecs):
                _PHRASE_VECTORS[(model_key, text)] = vec / max(float(np.linalg.norm(vec)), 1e-12)
    with _PHRASE_LOCK:
        return np.stack([_PHRASE_VECTORS[(model_key, t)] for t in texts])


_STATE: dict = {"vocab": None, "version": None, "loaded": 0.0}
_STATE_LOCK = threading.Lock()


def current_vocabulary() -> Vocabulary:
    """The catalog's vocabulary, reloaded when its version token changes (a merchant's synonym, a tag or a
    category edit: seen by the next search) or after UNDERSTAND["VOCABULARY_TTL"] seconds (attribute values,
    which change with imports, are not in the token: reading them is the expensive part)."""
    catalog = get_catalog()
    version = catalog.search_vocabulary_version()
    ttl = float(config()["UNDERSTAND"]["VOCABULARY_TTL"])
    with _STATE_LOCK:
        vocab = _STATE["vocab"]
        if vocab is not None and _STATE["version"] == version and time.monotonic() - _STATE["loaded"] < ttl:
            return vocab
        vocab = Vocabulary(catalog.search_vocabulary(), version)
        _STATE.update(vocab=vocab, version=version, loaded=time.monotonic())
        return vocab


def reset() -> None:
    """Forget the cached vocabulary and phrase vectors (tests)."""
    with _STATE_LOCK:
        _STATE.update(vocab=None, version=None, loaded=0.0)
    with _PHRASE_LOCK:
        _PHRASE_VECTORS.clear()
    from mmsearch.search import signals

    with signals._SPAN_LOCK:
        signals._SPAN_VECTORS.clear()


# --- matching -----------------------------------------------------------------------------------------------

@dataclass
class Plan:
    """A query after the exact and typo stages: what they found and the spans left for the embedder."""

    text: str
    vocab: Vocabulary
    tokens: list[Token]
    found: list[Understood] = field(default_factory=list)
    pending: list[tuple[int, ...]] = field(default_factory=list)  # token index runs for the embedder
    # (modifier + exactly matched word, index into found): "tee shirts", "court shoes", "midnight blue" may name
    # another value than their last word alone; the embedder decides.
    compounds: list[tuple[tuple[int, ...], int]] = field(default_factory=list)
    # The lexicon's readings of pending runs (and of compounds): run -> WordNet hits (decided in resolve).
    lexical: dict[tuple[int, ...], list] = field(default_factory=dict)

    @property
    def runs(self) -> list[tuple[int, ...]]:
        """Every span the embedder is asked about: the pending ones, then the compounds."""
        return [*self.pending, *(run for run, _ in self.compounds)]

    def pending_texts(self) -> list[str]:
        return [span_text(self.text, self.tokens, run).lower() for run in self.runs]


def span_text(text: str, toks: list[Token], run: Sequence[int]) -> str:
    return text[toks[run[0]].start:toks[run[-1]].end]


def _understood(plan: Plan, run: Sequence[int], phrase: Phrase, source: str, confidence: float,
                similarity: float | None = None) -> Understood:
    term = plan.vocab.terms[phrase.term]
    toks = plan.tokens
    return Understood(
        span=span_text(plan.text, toks, run), start=toks[run[0]].start, end=toks[run[-1]].end, filter=term.filter,
        value=term.value, label=term.label, confidence=confidence, source=source, matched=phrase.text,
        similarity=similarity, tokens=tuple(run), term=phrase.term,
    )


def prepare(vocab: Vocabulary, text: str, unknown: Iterable[str] | None = None,
            rare: dict[str, int] | None = None) -> Plan:
    """Exact, lexicon and typo matches; `unknown` are the query's words that no product's text contains (the
    lexical signal's analysis) - only those are typo candidates (None: every unmatched word is); `rare` the words
    a few products contain, with their count: a typo candidate too, but only for a value of at least
    TYPO_RARE_RATIO times as many products (the catalog's own misspellings: "wmens" in one title)."""
    conf = config()["UNDERSTAND"]
    toks = tokens(text)
    plan = Plan(text, vocab, toks)
    used = [False] * len(toks)
    # 1. exact: longest runs first, left to right.
    for n in range(min(vocab.max_ngram, len(toks)), 0, -1):
        for i in range(len(toks) - n + 1):
            run = range(i, i + n)
            if any(used[j] for j in run) or not toks[i].content or not toks[i + n - 1].content:
                continue
            keys = [tuple(toks[j].stem for j in run)]
            if n > 1:
                keys.append((stem("".join(toks[j].norm for j in run)),))
            hits = next((vocab.exact[k] for k in keys if k in vocab.exact), None)
            if not hits:
                continue
            phrase = vocab.phrases[hits[0]]
            plan.found.append(_understood(plan, run, phrase, phrase.source, float(conf["EXACT_CONFIDENCE"][phrase.source])))
            for j in run:
                used[j] = True
    # 2. lexicon: runs of one or two free content words that WordNet places under a value (decided in resolve,
    # with the embedder); they are no typo candidates.
    lex = vocab.lexicon() if vocab.terms else None
    reserved = [False] * len(toks)
    if lex is not None:
        def free(j: int) -> bool:
            return 0 <= j < len(toks) and not used[j] and toks[j].content and not toks[j].norm.isdigit() \
                and len(toks[j].norm) >= 2 and not _field_word(vocab, toks[j])

        for i in range(len(toks)):
            for run in ((i, i + 1), (i,)):
                if all(free(j) for j in run):
                    hits = lex.get(span_text(text, toks, run))
                    if hits:
                        plan.lexical[run] = hits
                        for j in run:
                            reserved[j] = True
        for u in plan.found:  # modifier + exactly matched word: "tee shirts", "court shoes"
            if len(u.tokens) == 1 and free(u.tokens[0] - 1):
                run = (u.tokens[0] - 1, u.tokens[0])
                hits = lex.get(span_text(text, toks, run))
                if hits:
                    plan.lexical[run] = hits
    # 3. typos: one word against the one-word keys within its edit distance; a unique nearest key only.
    unknown_set = None if unknown is None else {w.lower() for w in unknown}
    rare_map = {w.lower(): int(n) for w, n in (rare or {}).items()}
    rare_ratio = float(conf.get("TYPO_RARE_RATIO", 20))
    a, b = conf["CALIBRATION"]["typo"]
    for i, tok in enumerate(toks):
        limit = typo_limit(tok.norm)
        if used[i] or reserved[i] or not tok.content or not limit or tok.norm.isdigit() or _field_word(vocab, tok):
            continue
        forms = {tok.norm, tok.text.lower(), re.split(r"['’]", tok.text.lower())[0]}  # "womeen's": "womeen"
        rare_count = max((rare_map[f] for f in forms if f in rare_map), default=0)
        if unknown_set is not None and not forms & unknown_set and not rare_count:
            continue
        best: tuple[int, str] | None = None
        rank: tuple[int, int] | None = None
        tie = False
        # The distance from the stem or the word as typed, whichever is less; on a tie the word as typed decides:
        # "womes" is one edit from "women" and two from "home" (its stem "wome" is one from both).
        for length in range(len(tok.stem) - limit, max(len(tok.stem), len(tok.norm)) + limit + 1):
            for word in vocab.words.get(length, ()):
                typed = edit_distance(tok.norm, word, limit)
                r = (min(edit_distance(tok.stem, word, limit), typed), typed)
                if r[0] <= limit and (rank is None or r < rank):
                    best, rank, tie = (r[0], word), r, False
                elif rank is not None and r == rank and word != best[1]:
                    tie = True
        if rare_count and best is not None and not tie:
            term = vocab.terms[vocab.phrases[vocab.exact[(best[1],)][0]].term]
            if term.products < rare_ratio * rare_count:
                best = None  # a rare word, but not rare enough beside that value to be its misspelling
        near = None
        if lex is not None and len(tok.norm) >= 5 and not rare_count:
            close = {k for k in lex.near(tok.stem) if edit_distance(tok.stem, k, 1) <= 1}
            near = close.pop() if len(close) == 1 else None
        if near is not None and (best is None or tie or best[0] > 1):
            # A misspelt English word the lexicon knows ("sneakres"): its reading, one step further away.
            plan.lexical[(i,)] = [dataclasses.replace(h, steps=h.steps + 1) for h in lex.hits[near]]
            reserved[i] = True
            continue
        if best is None or tie:
            continue
        phrase = vocab.phrases[vocab.exact[(best[1],)][0]]
        distance = best[0] / max(len(tok.stem), 1)
        found = _understood(plan, (i,), phrase, "typo", _sigmoid(a * distance + b))
        found.distance = distance
        plan.found.append(found)
        used[i] = True
    # 4. what is left goes to the embedder: single content words and adjacent pairs of them.
    free = [i for i, t in enumerate(toks)
            if not used[i] and t.content and not t.norm.isdigit() and len(t.norm) >= 2 and not _field_word(vocab, t)]
    free_set = set(free)
    for i in free:
        plan.pending.append((i,))
        if EMBED_NGRAM >= 2 and i + 1 in free_set:
            plan.pending.append((i, i + 1))
    for f, u in enumerate(plan.found):
        if u.source != "typo" and len(u.tokens) == 1 and u.tokens[0] - 1 in free_set:
            plan.compounds.append(((u.tokens[0] - 1, u.tokens[0]), f))
    return plan


def _field_word(vocab: Vocabulary, tok: Token) -> bool:
    return tok.stem in vocab.field_words or (tok.stem.endswith("ed") and tok.stem[:-2] in vocab.field_words)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def resolve(plan: Plan, span_vectors: np.ndarray | None, model_key: str | None,
            embed: Callable[[list[str]], np.ndarray] | None) -> list[Understood]:
    """The exact and typo matches plus the lexicon's and the embedder's readings of the pending spans and
    compounds (`span_vectors`, one row per plan.runs, unit length), non-overlapping, in query order."""
    conf = config()["UNDERSTAND"]
    found = list(plan.found)
    runs = plan.runs
    if runs and span_vectors is not None and len(span_vectors) and model_key and embed and plan.vocab.embedded:
        matrix = plan.vocab.phrase_matrix(model_key, embed)
        sims = np.asarray(span_vectors, dtype=np.float32) @ matrix.T  # spans x distinct phrases
        phrases = [plan.vocab.phrases[p] for p in plan.vocab.embedded]
        terms = np.array([p.term for p in phrases])
        threshold = float(conf["EMBED_THRESHOLD"])
        margin_min = float(conf["EMBED_MARGIN"])
        a, b, c = conf["CALIBRATION"]["embedding"]

        def best_of(s: int) -> tuple[int, float, float]:
            """(best phrase, its similarity, its lead over another value of the same filter) of span row s."""
            order = np.argsort(-sims[s])
            best = int(order[0])
            term = plan.vocab.terms[terms[best]]
            # "navy" close to both Navy Blue and Blue is not evidence for either.
            runner = next(
                (float(sims[s, p]) for p in order[1:]
                 if terms[p] != terms[best] and plan.vocab.terms[terms[p]].filter == term.filter), 0.0
            )
            return best, float(sims[s, best]), float(sims[s, best]) - runner

        taken: set[int] = set()
        lexical = _lexicon_readings(plan, runs, span_vectors, model_key, embed, conf)
        # The lexicon's compounds first: a modifier + an exactly matched word that WordNet reads as another value
        # of the word's kind ("tee shirts": T-shirts, not Shirts) replace the word's reading.
        for run, f in plan.compounds:
            cand = lexical.get(run)
            exact = plan.found[f]
            if cand is None or exact not in found or cand.term == exact.term:
                continue
            if cand.filter != exact.filter and exact.filter != "category":
                continue
            own = [h.cost() for h in plan.lexical[run] if h.term == exact.term]
            if own and min(own) <= (cand.cost or 0.0):  # WordNet reads it as the word's own value just as well
                continue
            found[found.index(exact)] = cand
            taken |= set(run)
        # Then its readings of the free words, most confident first, longest first on ties; one per filter, and
        # none for a filter the exact stage read.
        read = {u.filter for u in found}
        for run, cand in sorted(((r, c) for r, c in lexical.items() if r in plan.pending),
                                key=lambda rc: (-rc[1].confidence, -len(rc[0]))):
            if taken & set(run) or {t for u in found for t in u.tokens} & set(run) or cand.filter in read:
                continue
            found.append(cand)
            taken |= set(run)
            read.add(cand.filter)
        # Compounds for the embedder: the modifier and the word replace the word's own reading when together
        # they are closer to another value than to the word's own (by COMPOUND_MARGIN).
        for n, (run, f) in enumerate(plan.compounds):
            s = len(plan.pending) + n
            best, best_sim, margin = best_of(s)
            exact = plan.found[f]
            if exact not in found or taken & set(run) or terms[best] == exact.term or best_sim < threshold:
                continue
            # A compound names another value of the same kind ("midnight blue": a colour), or narrows a category
            # used as its head noun ("court shoes", "school bag"); "sneakers mens" is two readings, not one.
            if plan.vocab.terms[terms[best]].filter != exact.filter and exact.filter != "category":
                continue
            own = sims[s][terms == exact.term]
            lead = best_sim - (float(own.max()) if own.size else 0.0)
            if lead < float(conf["COMPOUND_MARGIN"]):
                continue
            cand = _understood(plan, run, phrases[best], "embedding", _sigmoid(a * best_sim + b * margin + c), best_sim)
            cand.margin = margin
            found[found.index(exact)] = cand
            taken |= set(run)
        candidates = []
        for s, run in enumerate(plan.pending):
            if run in lexical:  # the lexicon knows these words: the embedder does not guess another value
                continue
            best, best_sim, margin = best_of(s)
            if best_sim < threshold or margin < margin_min:
                continue
            cand = _understood(plan, run, phrases[best], "embedding", _sigmoid(a * best_sim + b * margin + c), best_sim)
            cand.margin = margin
            candidates.append(cand)
        taken |= {t for u in found for t in u.tokens}
        # A filter the exact stage already recognised keeps its words ("nike tshirt" stays a t-shirt query).
        exact_filters = {u.filter for u in found}
        for cand in sorted(candidates, key=lambda u: (-u.confidence, -len(u.tokens))):
            if taken & set(cand.tokens) or cand.filter in exact_filters:
                continue
            found.append(cand)
            taken |= set(cand.tokens)
            exact_filters.add(cand.filter)  # one embedding guess per filter
    return sorted(found, key=lambda u: u.start)


def _lexicon_readings(plan: Plan, runs: list[tuple[int, ...]], span_vectors: np.ndarray, model_key: str,
                      embed: Callable[[list[str]], np.ndarray], conf: dict) -> dict[tuple[int, ...], Understood]:
    """The lexicon's reading of each run it has hits for: among the values WordNet allows (those named by the
    word's sense itself before those sharing only their last word with it, attribute values before tags before
    categories), the one whose phrase is closest to the run's vector after LEXICON_STEP x its WordNet cost
    (ties: the larger value); kept when that similarity reaches LEXICON_MIN_SIMILARITY."""
    out: dict[tuple[int, ...], Understood] = {}
    if not plan.lexical:
        return out
    step = float(conf.get("LEXICON_STEP", 0.2))
    floor = float(conf.get("LEXICON_MIN_SIMILARITY", 0.0))
    a, b, c = conf["CALIBRATION"].get("lexicon", (6.0, -0.5, -1.0))
    vocab = plan.vocab
    compounds = {run for run, _ in plan.compounds}
    for run, hits in plan.lexical.items():
        if run not in runs:
            continue
        vec = span_vectors[runs.index(run)]
        best = None
        for hit in hits:
            phrases = vocab.term_phrases(hit.term)
            sim = float((phrase_vectors(model_key, phrases, embed) @ vec).max())
            term = vocab.terms[hit.term]
            # A compound shares its last word with that word's own value, which the embedder then always
            # prefers ("tee shirts" ~ "shirts"): there WordNet's distance decides, the similarity breaks ties.
            closeness = (-hit.cost(), sim) if run in compounds else (sim - step * hit.cost(),)
            rank = (not hit.head, -KIND_RANK.get(_kind(term.filter), 3), *closeness, term.products)
            if best is None or rank > best[0]:
                best = (rank, hit, sim, phrases[0])
        if best is None or best[2] < floor:
            continue
        _, hit, sim, text = best
        phrase = Phrase(text, hit.term, "lexicon")
        cost = hit.cost()
        cand = _understood(plan, run, phrase, "lexicon", _sigmoid(a * sim + b * cost + c), sim)
        cand.cost = cost
        out[run] = cand
    return out


def understand(text: str, *, unknown: Iterable[str] | None = None, encoder=None, embed=None) -> list[Understood]:
    """prepare + resolve in one call, embedding the pending spans with `embed` (texts -> vectors)."""
    vocab = current_vocabulary()
    plan = prepare(vocab, text, unknown)
    vecs = None
    if plan.runs and embed is not None:
        raw = np.asarray(embed(plan.pending_texts()), dtype=np.float32)
        vecs = raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)
    return resolve(plan, vecs, getattr(encoder, "model_key", None), embed)


def apply_choices(found: list[Understood], filters: dict[str, list[str]], ignore: Iterable[str]) -> list[Understood]:
    """Mark spans the shopper removed (`ignore`: spans as typed, case-insensitive) and spans whose filter the
    shopper set explicitly (an explicit filter is hard and decides that attribute) as not applied."""
    ignored = {" ".join(i.lower().split()) for i in ignore}
    for u in found:
        if " ".join(u.span.lower().split()) in ignored or u.filter in filters:
            u.applied = False
    return found


def groups(found: Iterable[Understood]) -> dict[str, list[Understood]]:
    """Applied spans by filter name (several values of one filter are "any of")."""
    out: dict[str, list[Understood]] = {}
    for u in found:
        if u.applied:
            out.setdefault(u.filter, []).append(u)
    return out


def cache_key(model_key: str, text: str) -> str:
    return "mmsearch:svec:" + hashlib.sha256(f"{model_key}\0{text}".encode()).hexdigest()
