"""Colour words a catalog never uses, read as the catalog's colours: "plum" -> Purple, "mocha" -> Brown.

The xkcd colour survey's 949 names (data/xkcd_colours.tsv: what most of its respondents called each sRGB colour)
are the table. A filter is a colour filter when at least half of its values are named in the table ("Navy Blue",
"Grey"; grey and gray are one spelling). Its values then label the table's names that end with a value's name
("dark pink", "dusty rose" -> Pink, Rose: the longest such ending). Every other name of the table ("crimson",
"fuchsia", "mocha"; not the modifiers "dark", "pale") is read as the value that most of its nearest labelled
names have, by a vote of the `K` nearest in CIELAB weighted by 1 / (1 + distance): names for colours people call
by a basic word outnumber the rare ones, so a dark red reads as Red rather than as the nearest value, Maroon.

    colour_readings([(3, ("Red",)), (4, ("Pink",)), ...])   # {"crimson": (3, 0.86), ...}: term, vote share

The lexicon (mmsearch.search.lexicon) adds these readings where WordNet has no colour reading of the word.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

TABLE = Path(__file__).with_name("data") / "xkcd_colours.tsv"
K = 7  # neighbours in a vote
SHARE = 0.5  # of a filter's values named in the table, to make it a colour filter
MODIFIER = 10  # a one-word name that starts this many other names is a modifier ("dark", "pale"), not a colour


def norm(name: str) -> str:
    """A colour name's comparable form: lower case, one spelling of grey, words separated by single spaces."""
    words = name.lower().replace("-", " ").replace("'", "").replace("’", "").split()
    return " ".join("grey" if w == "gray" else "greyish" if w == "grayish" else w for w in words)


def lab(hex_rgb: str) -> np.ndarray:
    """CIELAB (D65) of an sRGB colour '#rrggbb'."""
    c = np.array([int(hex_rgb[i:i + 2], 16) / 255.0 for i in (1, 3, 5)])
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ c
    f = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(f > 0.008856, np.cbrt(f), 7.787 * f + 16 / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


@functools.lru_cache(maxsize=1)
def table() -> dict[str, np.ndarray]:
    """The survey's names (normalised; names of two colours such as 'blue/green' left out) -> CIELAB."""
    out: dict[str, np.ndarray] = {}
    try:
        text = TABLE.read_text(encoding="utf-8")
    except OSError as exc:  # an installation without the package data: no colour readings, the rest works
        logger.warning("query understanding: no colour-name table (%s)", exc)
        return out
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, hex_rgb = line.split("\t")
        if "/" not in name:
            out.setdefault(norm(name), lab(hex_rgb))
    return out


def colour_readings(values: Sequence[tuple[int, Sequence[str]]]) -> dict[str, tuple[int, float]]:
    """For one filter's values ((term, names) each): every table name that ends with none of their names ->
    (the term it reads as, the share of the weighted vote that term won); {} when it is no colour filter."""
    names = table()
    own = {norm(n): term for term, ns in values for n in ns}
    named = sum(any(norm(n) in names for n in ns) for _term, ns in values)
    if not values or named < max(2, SHARE * len(values)):
        return {}
    starts = Counter(name.split()[0] for name in names if " " in name)
    labelled, points, free = [], [], []
    for name, colour in names.items():
        words = name.split()
        endings = (" ".join(words[i:]) for i in range(len(words)))
        label = next((own[e] for e in endings if e in own), None)
        if label is None:
            if starts[name] < MODIFIER:
                free.append((name, colour))
        else:
            labelled.append(label)
            points.append(colour)
    if not points:
        return {}
    points_arr = np.array(points)
    out: dict[str, tuple[int, float]] = {}
    for name, colour in free:
        dist = np.linalg.norm(points_arr - colour, axis=1)
        votes: Counter = Counter()
        for i in np.argsort(dist, kind="stable")[:K]:
            votes[labelled[i]] += 1.0 / (1.0 + float(dist[i]))
        (term, weight), = votes.most_common(1)
        out[name] = (term, weight / sum(votes.values()))
    return out
