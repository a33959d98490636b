"""What a caption says: the brand-free text of a product, and the checks evaluation makes on any caption.

A caption names what a shopper can see: who the product is for (gender), its colour, its kind (article type) and
pattern or style words; never a brand. Training targets are built from the product's own text:

- **Words** (`words`): lowercase; a possessive 's is dropped (men's -> men); hyphenated words are joined
  (t-shirt -> tshirt, off-white -> offwhite); '&' reads 'and'; anything else that is not a letter or a digit
  separates words. Comparisons fold plurals (`singular`: kurtas -> kurta, watches -> watch, ties -> tie).
- **The brand rule** (`brand_of`): fashion titles start with the brand ("Mother Earth Women Aug Bagru Red
  Kurtas"). The brand is the run of words at the start of the title before the first word that names the
  product: a word of one of its attribute values ("Women", "Red", "Kurtas") or a gender word (men, women, boys,
  girls, kids, unisex and their forms). A title that starts with such a word has no brand; a title none of whose
  words names the product has its first word as the brand. A product with a `brand` attribute has that brand.
- **The target** (`CaptionTargets.target`): the title's words without the brand (wherever the brand's words
  occur in the title), without any other brand of the catalog's brand lexicon (below), without model codes
  (words mixing letters and digits, numbers of three or more digits), then completed with what the title leaves
  unsaid: the article type (its missing qualifier before the title's head noun, "black shoes" -> "black casual
  shoes", or the whole value at the end), the colour (before the article type) and the gender (in front).
- **The brand lexicon** (`CaptionTargets.brands`): every brand the rule finds in a catalog, less the phrases that
  are ordinary words there: ones that more products of other brands (and at least two) say in their brand-free
  titles than have them as their brand ("and" after a short brand-less title, a licensed print such as
  "mickey"). Evaluation counts a caption that names a lexicon brand other than
  its product's own as a brand hallucination.
- **Mentions** (`mentions`): a caption names a product's gender, colour or article type when it holds one of
  the value's names: the value's own words (plurals folded), either half of an "X and Y" value ("Perfume and
  Body Mist" -> perfume, body mist), or a synonym from the tables below (gray for grey, navy for navy blue, tee
  for tshirts, sari for sarees). Nothing coarser counts: "shoes" does not name "Casual Shoes".
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# Attributes whose value may name a brand (other catalogs than the fashion one have them).
BRAND_KEYS = ("brand", "manufacturer", "make")
# The attributes a caption is checked on (evaluation) and completed with (targets).
MENTION_KEYS = ("article_type", "colour", "gender")
# Words that never stop the brand run (they join brand names: "Gini and Jony", "United Colors of Benetton").
_GLUE = {"and", "of", "the", "a", "an", "for", "with", "by", "n", "in", "on"}

GENDER_NAMES: dict[str, tuple[str, ...]] = {
    "men": ("men", "man", "mens", "male", "gents", "gent"),
    "women": ("women", "woman", "womens", "ladies", "lady", "female"),
    "boys": ("boys", "boy"),
    "girls": ("girls", "girl"),
    "unisex": ("unisex",),
    "kids": ("kids", "kid", "children", "child", "boys", "boy", "girls", "girl", "infant", "baby"),
}
GENDER_WORDS = {w for names in GENDER_NAMES.values() for w in names}

COLOUR_SYNONYMS: dict[str, tuple[str, ...]] = {
    "grey": ("gray",),
    "navy blue": ("navy",),
    "multi": ("multicolour", "multicolor", "multicoloured", "multicolored", "multi colour", "multi color",
              "multi coloured", "multi colored"),
    "off white": ("offwhite",),
    "grey melange": ("melange", "gray melange"),
    "turquoise blue": ("turquoise",),
    "coffee brown": ("coffee",),
    "mushroom brown": ("mushroom",),
    "lime green": ("lime",),
    "fluorescent green": ("fluorescent", "neon green"),
    "gold": ("golden",),
    "charcoal": ("charcoal grey",),
}
ARTICLE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "tshirts": ("t shirt", "tee"),
    "sarees": ("sari",),
    "perfume and body mist": ("edt", "edp", "eau de toilette", "eau de parfum"),
    "deodorant": ("deo", "body spray"),
    "heels": ("wedge", "pump", "stiletto", "peep toe"),
    "flats": ("ballerina", "belly", "bellies"),
    "casual shoes": ("sneaker",),
    "sports shoes": ("running shoe", "training shoe"),
    "handbags": ("hand bag", "sling bag", "tote bag", "tote", "shoulder bag", "satchel"),
    "night suits": ("nightsuit", "pyjama set", "pajama set"),
    "kurta sets": ("kurta set",),
    "innerwear vests": ("vest",),
    "highlighter and blush": ("blusher",),
    "face moisturisers": ("moisturiser", "moisturizer"),
    "duffel bag": ("duffle bag", "duffel", "duffle"),
    "sports sandals": ("sport sandal", "floater"),
    "jewellery set": ("jewelry set",),
    "nail polish": ("nail enamel", "nail lacquer", "nail paint"),
    "kajal and eyeliner": ("eye liner", "kohl"),
}
SYNONYMS = {"colour": COLOUR_SYNONYMS, "article_type": ARTICLE_SYNONYMS}
_IRREGULAR = {"scarves": "scarf", "knives": "knife", "children": "child", "women": "women", "men": "men"}


def words(text: str) -> list[str]:
    """The words of a text as captions compare them (see the module docstring)."""
    text = str(text).lower().replace("&", " and ")
    text = re.sub(r"['’]s\b", "", text)
    text = re.sub(r"['’]", "", text)
    text = re.sub(r"(?<=[a-z0-9])-(?=[a-z0-9])", "", text)
    return re.findall(r"[a-z0-9]+", text)


def singular(word: str) -> str:
    """A word with its plural folded (a rule of thumb that only needs to fold both sides of a comparison alike)."""
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if len(word) <= 3 or word.isdigit():
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "shes", "ches", "xes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us")):
        return word[:-1]
    return word


def folded(text_or_words: str | Sequence[str]) -> tuple[str, ...]:
    """The words of a text (or a word list) with plurals folded."""
    ws = words(text_or_words) if isinstance(text_or_words, str) else text_or_words
    return tuple(singular(w) for w in ws)


def find(haystack: Sequence[str], needle: Sequence[str]) -> int:
    """Index of the first occurrence of the word sequence `needle` in `haystack`, or -1."""
    n = len(needle)
    if not n:
        return -1
    for i in range(len(haystack) - n + 1):
        if tuple(haystack[i:i + n]) == tuple(needle):
            return i
    return -1


def names(key: str, value: str) -> list[tuple[str, ...]]:
    """Every folded word sequence that names `value` of attribute `key` (longest first)."""
    value = " ".join(words(value))
    out = {folded(value)}
    if key == "gender":
        out |= {folded(n) for n in GENDER_NAMES.get(value, ())}
    if " and " in f" {value} " and key != "gender":
        out |= {folded(part) for part in value.split(" and ") if part.strip()}
    out |= {folded(s) for s in SYNONYMS.get(key, {}).get(value, ())}
    return sorted((n for n in out if n), key=lambda n: (-len(n), n))


def mentions(caption: str | Sequence[str], key: str, value: str) -> bool:
    """Whether a caption names `value` of attribute `key` (synonyms and plurals allowed)."""
    cap = folded(caption)
    return any(find(cap, n) >= 0 for n in names(key, value))


def _value(attributes: dict, key: str) -> str | None:
    v = attributes.get(key)
    return str(v) if v not in (None, "") else None


def brand_of(title: str, attributes: dict) -> tuple[str, ...]:
    """The brand of a product by the brand rule, as its title's words (empty when it has none)."""
    for key in BRAND_KEYS:
        if _value(attributes, key):
            return tuple(words(_value(attributes, key)))
    ws = words(title)
    stops = {singular(w) for v in attributes.values() if v not in (None, "") for w in words(str(v))}
    stops |= {singular(w) for w in GENDER_WORDS}
    stops -= _GLUE
    for i, w in enumerate(ws):
        if singular(w) in stops:
            return tuple(ws[:i])
    return tuple(ws[:1])


def _is_code(word: str) -> bool:
    has_digit = any(c.isdigit() for c in word)
    return has_digit and (not word.isdigit() or len(word) >= 3)


def _remove(ws: list[str], phrase: Sequence[str]) -> list[str]:
    """`ws` without every occurrence of the word sequence `phrase`."""
    if not phrase:
        return ws
    out, i, n = [], 0, len(phrase)
    while i < len(ws):
        if tuple(ws[i:i + n]) == tuple(phrase):
            i += n
        else:
            out.append(ws[i])
            i += 1
    return out


def complete(ws: list[str], attributes: dict) -> list[str]:
    """Words of a brand-free title completed with the article type, colour and gender it leaves unsaid."""
    ws = list(ws)
    article = _value(attributes, "article_type")
    if article and not mentions(ws, "article_type", article):
        value = words(article)
        head = find(folded(ws), folded(value[-1:]))
        if head >= 0 and len(value) > 1:
            ws[head:head] = value[:-1]  # "black shoes" -> "black casual shoes"
        else:
            ws += value
    colour = _value(attributes, "colour")
    if colour and not mentions(ws, "colour", colour):
        at = -1
        if article:
            spots = [find(folded(ws), n) for n in names("article_type", article)]
            at = min((s for s in spots if s >= 0), default=-1)
        at = at if at >= 0 else len(ws)
        ws[at:at] = words(colour)
    gender = _value(attributes, "gender")
    if gender and not mentions(ws, "gender", gender):
        ws = words(gender) + ws
    return ws


@dataclass
class CaptionTargets:
    """Brand-free caption targets for a catalog, with the catalog's brand lexicon (see the module docstring)."""

    brands: set[tuple[str, ...]] = field(default_factory=set)
    max_words: int = 24
    brand_products: dict[tuple[str, ...], int] = field(default_factory=dict)  # products per lexicon brand

    def __post_init__(self):
        self._index = _first_word_index(self.brands)

    @classmethod
    def fit(cls, products: Iterable, min_other: int = 2, max_words: int = 24) -> CaptionTargets:
        """The brand lexicon of `products` (objects with .title and .attributes)."""
        rows = [(brand_of(p.title, p.attributes), words(p.title)) for p in products]
        found = Counter(b for b, _ in rows if b)
        index = _first_word_index(found)
        # A phrase that more products of other brands say in their brand-free titles than have it as their brand
        # (and at least `min_other` of them) is an ordinary word there ("and", a licensed print such as "mickey").
        other = Counter()
        for brand, ws in rows:
            other.update(_phrases_in(_remove(ws, brand), index) - {brand})
        brands = {b for b in found if other[b] < max(min_other, found[b] + 1)}
        return cls(brands, max_words, {b: found[b] for b in brands})

    def target_words(self, title: str, attributes: dict) -> list[str]:
        """The caption target of one product, as words."""
        own = brand_of(title, attributes)
        ws = _remove(words(title), own)
        for brand in sorted(_phrases_in(ws, self._index) - {own}, key=len, reverse=True):
            ws = _remove(ws, brand)
        ws = [w for w in ws if not _is_code(w)]
        return complete(ws, attributes)[: self.max_words]

    def target(self, title: str, attributes: dict) -> str:
        """The caption target of one product ("women aug bagru red kurtas")."""
        return " ".join(self.target_words(title, attributes))

    def brand_words(self, target_counts: Counter) -> set[str]:
        """Words that name brands more often than they describe products: a word of lexicon brands (glue words
        aside) whose brands have more products than there are targets holding it ("benetton", "earth"), given
        the count of targets holding each word. A caption vocabulary leaves them out."""
        as_brand = Counter()
        for brand, n in self.brand_products.items():
            for w in set(brand) - _GLUE:
                as_brand[w] += n
        return {w for w, n in as_brand.items() if n > target_counts.get(w, 0)}

    def hallucinated_brand(self, caption: str | Sequence[str], title: str, attributes: dict) -> tuple[str, ...] | None:
        """A lexicon brand the caption names that is not the product's own, or None."""
        ws = words(caption) if isinstance(caption, str) else list(caption)
        named = sorted(_phrases_in(ws, self._index) - {brand_of(title, attributes)})
        return named[0] if named else None


def _first_word_index(phrases: Iterable[tuple[str, ...]]) -> dict[str, list[tuple[str, ...]]]:
    index: dict[str, list[tuple[str, ...]]] = {}
    for phrase in phrases:
        index.setdefault(phrase[0], []).append(phrase)
    return index


def _phrases_in(ws: Sequence[str], index: dict[str, list[tuple[str, ...]]]) -> set[tuple[str, ...]]:
    """The phrases of a first-word index that occur in the word list."""
    found = set()
    for i, w in enumerate(ws):
        for phrase in index.get(w, ()):
            if tuple(ws[i:i + len(phrase)]) == phrase:
                found.add(phrase)
    return found
