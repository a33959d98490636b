"""Shoppers' words: precision@10 on queries phrased with words the catalog does not use, in two halves.

    MMSEARCH_DB_NAME=qu .venv/bin/python bench/query_understanding.py [--per-class 40] [--merchant-synonyms]
    .venv/bin/python bench/query_understanding.py --write-set tune --out-set var/qu-tune.jsonl   # for fitting

The labelled set is built from templates and word lists that the engine never sees: British and informal
names of product types (jumper, trainers, rucksack, necktie, hoodie, tee, ...), gender words (ladies, gents,
lads, ...), colour variants (gray, navy, crimson, ...), and typos. Every word group (the forms of one word:
'jumper', 'jumpers') and every template falls into one of two halves by a hash of its text (`half_of`), fixed
before anything was measured:

  tune  may feed the merchant's synonym list and the weight fitting (manage.py fit_search_weights);
  eval  only evaluates. Its words, groups and templates are in no synonym list and no fitted value.

Queries come in five classes of equal size per half: `type` (a shopper's word for the product type), `gender`
(a shopper's gender word), `colour` (a colour variant), `typo` (one word of a query misspelt: a deletion,
transposition, substitution or doubling) and `mixed` (shopper's words in two or three slots). The other slots
use the catalog's own words. A product is relevant when its article type (one of the group's types), colour and
gender (for the slots the query has) match; only combinations with at least 10 active products are used, so
a perfect top 10 exists.

Each query is gathered once through the engine (hybrid, understanding on); every row of the table is the same
candidates fused with other weights (mmsearch.search.tuning), so the single-signal rows are that signal alone:

  lexical         full text + partial + trigram          text_vector   the MiniLM product-text kNN alone
  understood      the understood list + boosts alone     image_vector  the image embedder alone (if active)
  hybrid_before   the fusion before this work (DEFAULTS' old weights, no understanding)
  hybrid          the default now (fitted weights file + understanding)

--merchant-synonyms also measures with the tune half's words stored as merchant synonyms (catalog
SearchSynonym rows, inside a transaction rolled back at the end). Writes bench/results/query_understanding.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mmsearch.settings")

# --- word lists (each inner list is one word group: its forms; the group's half is a hash of its first form) --

# (article types that count as relevant, forms)
TYPE_WORDS: list[tuple[tuple[str, ...], list[str]]] = [
    (("Sweaters",), ["jumper", "jumpers"]),
    (("Sweaters",), ["pullover", "pullovers"]),
    (("Sweaters",), ["knitwear"]),
    (("Sweaters",), ["cardigan", "cardigans"]),
    (("Sweatshirts",), ["hoodie", "hoodies", "hoody"]),
    (("Sweatshirts",), ["sweat top", "sweat tops"]),
    (("Tshirts",), ["tee", "tees"]),
    (("Tshirts",), ["tee shirt", "tee shirts"]),
    (("Track Pants",), ["joggers"]),
    (("Track Pants",), ["sweatpants", "sweat pants"]),
    (("Track Pants",), ["trackies", "tracky bottoms"]),
    (("Track Pants",), ["jogging bottoms"]),
    (("Sports Shoes", "Casual Shoes"), ["trainers"]),
    (("Sports Shoes",), ["runners"]),
    (("Casual Shoes",), ["sneakers"]),
    (("Casual Shoes",), ["plimsolls"]),
    (("Ties",), ["necktie", "neckties"]),
    (("Ties",), ["cravat", "cravats"]),
    (("Backpacks", "Rucksacks"), ["rucksack", "rucksacks"]),
    (("Backpacks", "Rucksacks"), ["knapsack", "knapsacks"]),
    (("Backpacks", "Rucksacks"), ["bookbag", "school bag"]),
    (("Trousers",), ["slacks"]),
    (("Trousers",), ["chinos"]),
    (("Sunglasses",), ["shades"]),
    (("Sunglasses",), ["sunnies"]),
    (("Handbags",), ["purse", "purses"]),
    (("Handbags",), ["tote bag", "tote"]),
    (("Briefs",), ["underpants"]),
    (("Briefs",), ["knickers"]),
    (("Briefs",), ["undies"]),
    (("Innerwear Vests",), ["undershirt", "undershirts"]),
    (("Innerwear Vests",), ["singlet", "singlets"]),
    (("Heels",), ["stilettos", "stiletto"]),
    (("Heels",), ["pumps", "court shoes"]),
    (("Watches",), ["wristwatch", "wristwatches"]),
    (("Watches",), ["timepiece"]),
    (("Nightdress",), ["nightie", "nighties"]),
    (("Nightdress",), ["nightgown"]),
    (("Night suits",), ["pyjamas", "pajamas", "pjs"]),
    (("Dresses",), ["frock", "frocks"]),
    (("Dresses",), ["gown", "gowns"]),
    (("Flip Flops",), ["sliders"]),
    (("Flip Flops",), ["thongs"]),
    (("Jackets",), ["coat", "coats"]),
    (("Jackets",), ["anorak", "windcheater"]),
    (("Shorts",), ["bermudas", "half pants"]),
    (("Deodorant",), ["deo", "antiperspirant"]),
    (("Perfume and Body Mist",), ["cologne", "scent"]),
    (("Bra",), ["brassiere", "bralette"]),
    (("Wallets",), ["billfold"]),
]
GENDER_WORDS: list[tuple[str, list[str]]] = [
    ("Women", ["ladies", "lady", "ladies'"]),
    ("Women", ["female", "females"]),
    ("Women", ["womenswear"]),
    ("Men", ["gents", "gent's", "gentlemen"]),
    ("Men", ["male", "males"]),
    ("Men", ["menswear"]),
    ("Men", ["guys"]),
    ("Boys", ["lads", "lad's"]),
]
COLOUR_WORDS: list[tuple[str, list[str]]] = [
    ("Grey", ["gray"]), ("Grey", ["ash"]),
    ("Navy Blue", ["navy", "dark navy"]), ("Navy Blue", ["midnight blue"]),
    ("Black", ["jet black"]), ("Black", ["ebony"]), ("Black", ["onyx"]),
    ("White", ["ivory"]), ("White", ["snow white"]), ("White", ["pearl white"]),
    ("Blue", ["cobalt"]), ("Blue", ["azure"]), ("Blue", ["royal blue"]), ("Blue", ["sky blue"]),
    ("Red", ["scarlet"]), ("Red", ["crimson"]), ("Red", ["cherry red"]),
    ("Green", ["emerald"]), ("Green", ["forest green"]), ("Green", ["bottle green"]),
    ("Pink", ["fuchsia"]), ("Pink", ["hot pink"]), ("Pink", ["blush"]),
    ("Purple", ["violet"]), ("Purple", ["plum"]),
    ("Brown", ["chocolate"]), ("Brown", ["chestnut"]), ("Brown", ["mocha"]),
    ("Yellow", ["lemon"]), ("Yellow", ["canary yellow"]),
    ("Maroon", ["wine"]), ("Maroon", ["oxblood"]),
    ("Beige", ["camel"]), ("Beige", ["sand"]),
    ("Orange", ["tangerine"]),
]
# {g} gender, {c} colour, {a} article type; templates without {c} or {g} serve queries without that slot.
TEMPLATES = [
    "{g} {c} {a}", "{c} {a} for {g}", "{a} for {g} in {c}", "{c} {g} {a}", "{g} {a} in {c}", "{c} {a} {g}",
    "{g} {a} {c}", "{a} {c} {g}", "{c} coloured {a} for {g}", "{g} {c} colour {a}", "{g} {a}", "{a} for {g}",
    "{a} {g}", "{c} {a}", "{a} in {c}", "{c} colour {a}",
]
CLASSES = ("type", "gender", "colour", "typo", "mixed")
# The catalog's own gender words and their grammatical forms (not synonyms).
GENDER_FORMS = {"Men": ["men", "mens", "men's"], "Women": ["women", "womens", "women's"], "Boys": ["boys", "boys'"],
                "Girls": ["girls", "girls'"]}


def half_of(text: str) -> str:
    """'tune' or 'eval': a fixed hash of a word group's first form or a template."""
    return "tune" if hashlib.sha256(f"qu-split:{text}".encode()).digest()[0] % 2 == 0 else "eval"


def catalog_forms(value: str) -> list[str]:
    """The catalog's own word for a value, singular and plural (lower case)."""
    low = value.lower()
    if low.endswith("ies"):
        singular = low[:-3] + "y"
    elif low.endswith(("sses", "ches", "shes", "xes")):
        singular = low[:-2]
    elif low.endswith("s") and not low.endswith("ss"):
        singular = low[:-1]
    else:
        singular = low
    return sorted({low, singular})


def typo(word: str, rng: random.Random) -> str:
    """One edit of a word of 5+ letters: delete, transpose, substitute (a keyboard neighbour) or double."""
    near = {"a": "qs", "b": "vn", "c": "xv", "d": "sf", "e": "wr", "f": "dg", "g": "fh", "h": "gj", "i": "uo",
            "j": "hk", "k": "jl", "l": "k", "m": "n", "n": "bm", "o": "ip", "p": "o", "q": "w", "r": "et",
            "s": "ad", "t": "ry", "u": "yi", "v": "cb", "w": "qe", "x": "zc", "y": "tu", "z": "x"}
    i = rng.randrange(1, len(word) - 1)
    op = rng.choice(["delete", "transpose", "substitute", "double"])
    if op == "delete":
        return word[:i] + word[i + 1:]
    if op == "transpose":
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if op == "substitute" and word[i] in near:
        return word[:i] + rng.choice(near[word[i]]) + word[i + 1:]
    return word[:i] + word[i] + word[i:]


def load_products() -> dict[int, tuple]:
    from django.apps import apps

    Product = apps.get_model("catalog.Product")
    rows = Product.objects.filter(active=True, sku__startswith="fashion-").values_list("id", "attributes")
    return {pid: (a.get("gender"), a.get("colour"), a.get("article_type")) for pid, a in rows}


def build_set(products: dict[int, tuple], half: str, per_class: int, seed: int = 0) -> list[dict]:
    """The labelled queries of one half: per_class of each class."""
    counts3 = Counter(products.values())
    counts_ga = Counter((g, a) for g, _, a in products.values())
    counts_ca = Counter((c, a) for _, c, a in products.values())
    types = [(vals, forms) for vals, forms in TYPE_WORDS if half_of(forms[0]) == half]
    genders = [(v, forms) for v, forms in GENDER_WORDS if half_of(forms[0]) == half]
    colours = [(v, forms) for v, forms in COLOUR_WORDS if half_of(forms[0]) == half]
    templates = [t for t in TEMPLATES if half_of(t) == half]
    articles = sorted({a for _, _, a in products.values() if a})
    all_genders = sorted({g for g, _, _ in products.values() if g in ("Men", "Women", "Boys", "Girls")})
    all_colours = sorted({c for _, c, _ in products.values() if c})
    rng = random.Random(f"{seed}:{half}")

    def count(g, c, types_):
        if g and c:
            return sum(counts3[(g, c, a)] for a in types_)
        if g:
            return sum(counts_ga[(g, a)] for a in types_)
        if c:
            return sum(counts_ca[(c, a)] for a in types_)
        return 0

    queries: list[dict] = []
    seen: set[str] = set()
    for cls in CLASSES:
        made, tries = 0, 0
        while made < per_class and tries < per_class * 400:
            tries += 1
            slots = {}
            # type slot
            if cls in ("type", "mixed") or (cls == "typo" and rng.random() < 0.5):
                vals, forms = rng.choice(types)
                slots["a"] = (rng.choice(forms), vals, "shopper")
            else:
                a = rng.choice(articles)
                slots["a"] = (rng.choice(catalog_forms(a)), (a,), "catalog")
            want_g = cls == "gender" or (cls == "mixed" and rng.random() < 0.7) or rng.random() < 0.6
            want_c = cls == "colour" or (cls == "mixed" and rng.random() < 0.7) or rng.random() < 0.6
            if cls == "mixed" and not (want_g or want_c):
                want_g = True
            if want_g:
                if cls == "gender" or (cls == "mixed" and rng.random() < 0.6 and genders):
                    g, forms = rng.choice(genders)
                    slots["g"] = (rng.choice(forms), g, "shopper")
                else:
                    g = rng.choice(all_genders)
                    slots["g"] = (rng.choice(GENDER_FORMS[g]), g, "catalog")
            if want_c:
                if cls == "colour" or (cls == "mixed" and rng.random() < 0.6 and colours):
                    c, forms = rng.choice(colours)
                    slots["c"] = (rng.choice(forms), c, "shopper")
                else:
                    c = rng.choice(all_colours)
                    slots["c"] = (c.lower(), c, "catalog")
            shopper = sum(1 for s in slots.values() if s[2] == "shopper")
            if cls == "mixed" and shopper < 2:
                continue
            g = slots.get("g", (None, None))[1]
            c = slots.get("c", (None, None))[1]
            types_ = slots["a"][1]
            if count(g, c, types_) < 10:
                continue
            fitting = [t for t in templates if ("{g}" in t) == ("g" in slots) and ("{c}" in t) == ("c" in slots)]
            if not fitting:
                continue
            template = rng.choice(fitting)
            words = {k: v[0] for k, v in slots.items()}
            spans = [{"span": v[0], "filter": {"a": "attr.article_type", "g": "attr.gender", "c": "attr.colour"}[k],
                      "values": list(v[1]) if k == "a" else [v[1]], "kind": v[2]} for k, v in slots.items()]
            if cls == "typo":
                key = rng.choice([k for k, v in slots.items() if len(v[0]) >= 5 and " " not in v[0]] or [None])
                if key is None:
                    continue
                wrong = typo(words[key], rng)
                if wrong == words[key]:
                    continue
                for span in spans:
                    if span["span"] == words[key]:
                        span["span"], span["typo_of"] = wrong, words[key]
                words[key] = wrong
            text = template.format(g=words.get("g", ""), c=words.get("c", ""), a=words["a"])
            text = " ".join(text.split())
            if text in seen:
                continue
            seen.add(text)
            relevant = {"attr.article_type": list(types_)}
            if g:
                relevant["attr.gender"] = [g]
            if c:
                relevant["attr.colour"] = [c]
            queries.append({"q": text, "class": cls, "half": half, "template": template, "relevant": relevant,
                            "spans": spans, "relevant_count": count(g, c, types_)})
            made += 1
    return queries


def merchant_rows(half: str) -> list[tuple[str, str, str]]:
    """(phrase, field, value) of one half's shopper words, as merchant synonyms would store them."""
    rows = []
    for vals, forms in TYPE_WORDS:
        if half_of(forms[0]) == half:
            rows += [(f, "attr.article_type", vals[0]) for f in forms]
    for v, forms in GENDER_WORDS:
        if half_of(forms[0]) == half:
            rows += [(f, "attr.gender", v) for f in forms]
    for v, forms in COLOUR_WORDS:
        if half_of(forms[0]) == half:
            rows += [(f, "attr.colour", v) for f in forms]
    return rows


def configs() -> dict[str, tuple[dict, dict]]:
    """name: (weights, boosts) over the gathered candidates."""
    from mmsearch.search.config import DEFAULTS, config

    conf = config()
    only = lambda *names: ({s: (conf["WEIGHTS"].get(s, 1.0) if s in names else 0.0)  # noqa: E731
                            for s in ("lexical", "lexical_partial", "trigram", "text_vector", "image_vector", "understood")})
    zero: dict = {"default": 0.0}
    before = {**{k: v for k, v in DEFAULTS["WEIGHTS"].items()}, "understood": 0.0}
    return {
        "lexical": (only("lexical", "lexical_partial", "trigram"), zero),
        "text_vector": ({**only("text_vector"), "text_vector": 1.0}, zero),
        "image_vector": ({**only("image_vector"), "image_vector": 1.0}, zero),
        "understood": ({**only("understood"), "understood": 1.0}, conf["BOOSTS"]),
        "hybrid_before": (before, zero),
        "hybrid_no_understanding": ({**conf["WEIGHTS"], "understood": 0.0}, zero),
        "hybrid": (conf["WEIGHTS"], conf["BOOSTS"]),
    }


def measure(queries: list[dict], label: str, progress: bool = True) -> dict:
    """Gather every query once, then P@10 of each config, overall and per class."""
    from mmsearch.search import tuning
    from mmsearch.search.config import config

    t0 = time.perf_counter()
    times: list[float] = []

    def tick(i, n):
        times.append(time.perf_counter())
        if progress and (i % 25 == 0 or i == n):
            print(f"  {label}: gathered {i}/{n} ({time.perf_counter() - t0:.0f} s)", flush=True)

    gathered = tuning.gather_all(queries, progress=tick)
    table = tuning.Table.build(gathered, queries)
    out: dict = {"queries": len(queries), "gather_s": round(time.perf_counter() - t0, 1), "configs": {}}
    has_image = any("image_vector" in g.ranked for g in gathered)
    rrf_k = float(config()["RRF_K"])
    for name, (weights, boosts) in configs().items():
        if name == "image_vector" and not has_image:
            out["configs"][name] = {"error": "no active image embedder"}
            continue
        p = table.precisions(weights, boosts, rrf_k)
        by_class = {cls: round(statistics.mean([x for x, q in zip(p, queries) if q["class"] == cls]), 4)
                    for cls in CLASSES if any(q["class"] == cls for q in queries)}
        out["configs"][name] = {"mean_p@10": round(statistics.mean(p), 4), "by_class": by_class}
        for x, q in zip(p, queries):
            q.setdefault("p@10", {})[name] = x
    for g, q in zip(gathered, queries):
        q["understood"] = [u.data() for u in g.understood]
    return out


def print_table(results: dict) -> None:
    sets = list(results)
    names = list(next(iter(results.values()))["configs"])
    print(f"{'config':>24} " + " ".join(f"{s:>26}" for s in sets))
    for name in names:
        cells = []
        for s in sets:
            r = results[s]["configs"][name]
            cells.append(f"{r['mean_p@10']:>26.3f}" if "mean_p@10" in r else f"{'-':>26}")
        print(f"{name:>24} " + " ".join(cells))
    for s in sets:
        r = results[s]["configs"].get("hybrid", {})
        if "by_class" in r:
            print(f"  {s} hybrid by class: " + ", ".join(f"{k} {v:.3f}" for k, v in r["by_class"].items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=40, help="queries per class and half")
    parser.add_argument("--halves", default="tune,eval")
    parser.add_argument("--merchant-synonyms", action="store_true",
                        help="also measure with the tune half's words stored as merchant synonyms (rolled back)")
    parser.add_argument("--write-set", choices=["tune", "eval"], help="only write that half's labelled set (JSONL)")
    parser.add_argument("--out-set", type=Path, help="where --write-set writes")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/query_understanding.json")
    args = parser.parse_args(argv)
    import django

    django.setup()
    from django.conf import settings
    from django.db import transaction

    from mmsearch.search import understanding, vectors
    from mmsearch.search.config import config

    products = load_products()
    if not products:
        parser.error(f"database {settings.DATABASES['default']['NAME']!r} has no active fashion products")
    if args.write_set:
        rows = build_set(products, args.write_set, args.per_class)
        out = args.out_set or ROOT / f"var/qu-{args.write_set}.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"wrote {len(rows)} {args.write_set} queries to {out}")
        return 0
    halves = [h.strip() for h in args.halves.split(",") if h.strip()]
    sets = {h: build_set(products, h, args.per_class) for h in halves}
    active = {alias: (m.model_key if (m := vectors.active_model(alias)) else None) for alias in ("embedder", "text_embedder")}
    print(f"{len(products)} active fashion products; active models: {active}", flush=True)
    understanding.reset()
    results = {}
    for h, queries in sets.items():
        results[h] = measure(queries, h)
    if args.merchant_synonyms:
        from catalog.models import SearchSynonym

        with transaction.atomic():
            SearchSynonym.objects.bulk_create(
                [SearchSynonym(phrase=p, field=f, value=v, note="bench: tune half") for p, f, v in merchant_rows("tune")],
                ignore_conflicts=True,
            )
            understanding.reset()
            for h, queries in sets.items():
                copy = [{**q, "p@10": {}} for q in queries]  # its own per-query numbers
                results[f"{h}+merchant(tune)"] = measure(copy, f"{h} with the tune half as merchant synonyms")
            transaction.set_rollback(True)
        understanding.reset()
    print_table(results)
    report = {
        "database": settings.DATABASES["default"]["NAME"], "products": len(products), "active_models": active,
        "weights": config()["WEIGHTS"], "boosts": config()["BOOSTS"], "understand": config()["UNDERSTAND"],
        "halves": {h: {"types": [f[0] for v, f in TYPE_WORDS if half_of(f[0]) == h],
                       "genders": [f[0] for v, f in GENDER_WORDS if half_of(f[0]) == h],
                       "colours": [f[0] for v, f in COLOUR_WORDS if half_of(f[0]) == h],
                       "templates": [t for t in TEMPLATES if half_of(t) == h]} for h in ("tune", "eval")},
        "results": results, "queries": {h: q for h, q in sets.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
