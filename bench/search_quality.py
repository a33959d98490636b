"""Search quality on the fashion catalog: mean precision@10 of each search mode over shopper-style queries.

    MMSEARCH_DB_NAME=h5bench .venv/bin/python bench/search_quality.py [--queries 180] [--grocery]

The labelled set is generated from the catalog's own attributes: every (gender, colour, article_type) with at
least 10 active products is a candidate, rendered the way shoppers type (synonyms such as ladies/gents,
shades = sunglasses, joggers = track pants, tee = tshirts; singular/plural; several word orders). A hit is
relevant when its article type, colour and gender all match. The four phrasings of the search issue are
always included. Runs through mmsearch.search.engine.search with each mode's settings (the single signals and
`hybrid_no_understanding` with query understanding off); prints a table and writes
bench/results/search_quality.json. The shoppers'-words set with its held-out half is bench/query_understanding.py.

--grocery also measures search by photo: every photo of ../shared/datasets/grocery/photos-val.jsonl is
searched through the image path (check_image, the active embedder, the image index) and accuracy@1/@5 is
the share of photos whose product is first / in the top five.
"""

from __future__ import annotations

import argparse
import contextlib
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

GENDER_FORMS = {
    "Men": ["men", "mens", "men's", "gents"],
    "Women": ["women", "womens", "women's", "ladies"],
    "Boys": ["boys", "boy's"],
    "Girls": ["girls", "girl's"],
    "Unisex": ["unisex"],
}
COLOUR_FORMS = {
    "Navy Blue": ["navy", "navy blue"], "Grey": ["grey", "gray"], "Off White": ["off white", "off-white"],
    "Multi": ["multicolour", "multi colour"], "Grey Melange": ["grey melange"],
}
ARTICLE_FORMS = {
    "Sunglasses": ["sunglasses", "shades"], "Track Pants": ["track pants", "joggers"],
    "Tshirts": ["tshirts", "t-shirt", "tee", "tees"], "Casual Shoes": ["casual shoes", "sneakers"],
    "Sports Shoes": ["sports shoes", "running shoes"], "Flip Flops": ["flip flops", "flip-flop"],
    "Handbags": ["handbag", "handbags"], "Perfume and Body Mist": ["perfume", "body mist"],
    "Watches": ["watch", "watches"], "Heels": ["heels", "high heels"], "Bra": ["bra", "bras"],
    "Deodorant": ["deodorant", "deo"], "Clutches": ["clutch", "clutches"], "Briefs": ["briefs"],
    "Dresses": ["dress", "dresses"], "Sarees": ["saree", "sarees"], "Kurtas": ["kurta", "kurtas"],
    "Innerwear Vests": ["vest", "innerwear vests"], "Trunk": ["trunks"], "Jeans": ["jeans"],
    "Lipstick": ["lipstick", "lipsticks"], "Nail Polish": ["nail polish"], "Shorts": ["shorts"],
    "Leggings": ["leggings"], "Capris": ["capris"], "Socks": ["socks"], "Trousers": ["trousers", "pants"],
    "Caps": ["cap", "caps"], "Backpacks": ["backpack", "backpacks"],
}
TEMPLATES = ["{c} {a} for {g}", "{g} {c} {a}", "{a} for {g} in {c}", "{c} {a} {g}", "{g} {a} {c}"]
# The examples: (query, gender or None for any, colour, article type)
FIXED = [
    ("red kurta for women", "Women", "Red", "Kurtas"),
    ("ladies brown shades", "Women", "Brown", "Sunglasses"),
    ("men's white jacket", "Men", "White", "Jackets"),
    ("navy joggers", None, "Navy Blue", "Track Pants"),
]


def article_forms(article: str) -> list[str]:
    if article in ARTICLE_FORMS:
        return ARTICLE_FORMS[article]
    low = article.lower()
    singular = low[:-1] if low.endswith("s") and not low.endswith("ss") else low
    return sorted({low, singular})


def colour_forms(colour: str) -> list[str]:
    return COLOUR_FORMS.get(colour, [colour.lower()])


def load_products() -> dict[int, tuple]:
    """{product_id: (gender, colour, article_type)} of the active fashion products."""
    from django.apps import apps

    Product = apps.get_model("catalog.Product")
    rows = Product.objects.filter(active=True, sku__startswith="fashion-").values_list("id", "attributes")
    return {pid: (a.get("gender"), a.get("colour"), a.get("article_type")) for pid, a in rows}


def build_queries(products: dict[int, tuple], n: int, seed: int = 0) -> list[dict]:
    """The labelled query set: FIXED plus n - len(FIXED) attribute combinations rendered as shopper phrasings."""
    counts = Counter(products.values())
    combos = sorted(k for k, v in counts.items() if v >= 10 and k[0] in GENDER_FORMS and all(k))
    rng = random.Random(seed)
    rng.shuffle(combos)
    queries = []
    for text, gender, colour, article in FIXED:
        relevant = sum(1 for g, c, a in products.values() if (gender is None or g == gender) and c == colour and a == article)
        queries.append({"q": text, "gender": gender, "colour": colour, "article_type": article, "relevant": relevant})
    fixed_keys = {(g, c, a) for _, g, c, a in FIXED}
    for gender, colour, article in combos:
        if len(queries) >= n:
            break
        if (gender, colour, article) in fixed_keys:
            continue
        text = rng.choice(TEMPLATES).format(
            g=rng.choice(GENDER_FORMS[gender]), c=rng.choice(colour_forms(colour)), a=rng.choice(article_forms(article))
        )
        queries.append({"q": text, "gender": gender, "colour": colour, "article_type": article,
                        "relevant": counts[(gender, colour, article)]})
    return queries


def is_relevant(query: dict, attrs: tuple | None) -> bool:
    if attrs is None:
        return False
    gender, colour, article = attrs
    return (query["gender"] is None or gender == query["gender"]) and colour == query["colour"] and article == query["article_type"]


CONFIGS = {
    # name: (mode, weight overrides, query understanding); the single-signal rows show what each part reaches
    # alone, so they run without understanding (its list and boosts are a signal of their own).
    "lexical": ("lexical", {}, False),
    "text_vector": ("semantic", {"image_vector": 0.0}, False),
    "image_vector": ("semantic", {"text_vector": 0.0}, False),
    "semantic": ("semantic", {}, False),
    "hybrid_no_understanding": ("hybrid", {}, False),
    "hybrid": ("hybrid", {}, True),
    "hybrid_no_image": ("hybrid", {"image_vector": 0.0}, True),
}


def evaluate(queries: list[dict], products: dict[int, tuple], configs: list[str]) -> dict:
    from django.conf import settings
    from django.test import override_settings

    from mmsearch.search.config import config
    from mmsearch.search.engine import search
    from mmsearch.search.params import SearchError, SearchQuery

    base = getattr(settings, "MMSEARCH_SEARCH", {}) or {}
    out = {}
    for name in configs:
        mode, weights, understand = CONFIGS[name]
        effective = config()  # settings + the fitted weights file; the overrides go on top, the file off
        conf = {**base, "WEIGHTS_FILE": None, "WEIGHTS": {**effective["WEIGHTS"], **weights},
                "BOOSTS": effective["BOOSTS"], "UNDERSTAND": effective["UNDERSTAND"]}
        precisions, times = [], []
        try:
            with override_settings(MMSEARCH_SEARCH=conf):
                for q in queries:
                    t0 = time.perf_counter()
                    result = search(SearchQuery(text=q["q"], mode=mode, limit=10, understand=understand))
                    times.append((time.perf_counter() - t0) * 1000)
                    if name == "image_vector" and "image_vector" not in result.debug["signals"]:
                        raise SearchError("no active image embedder")
                    hits = [h.product_id for h in result.hits]
                    p = sum(is_relevant(q, products.get(pid)) for pid in hits) / 10
                    q.setdefault("p@10", {})[name] = p
                    precisions.append(p)
        except SearchError as exc:
            out[name] = {"error": str(exc)}
            print(f"{name:>13}: not measured ({exc})", flush=True)
            continue
        out[name] = {"mean_p@10": round(statistics.mean(precisions), 4), "queries": len(precisions),
                     "median_ms": round(statistics.median(times), 1)}
        print(f"{name:>13}: mean P@10 {out[name]['mean_p@10']:.3f} over {len(precisions)} queries "
              f"(median {out[name]['median_ms']:.0f} ms)", flush=True)
    return out


def grocery_accuracy(photos_file: Path) -> dict:
    """accuracy@1/@5 of search by photo over a photos-<split>.jsonl (through check_image and the image path)."""
    rows = [json.loads(line) for line in photos_file.read_text().splitlines() if line.strip()]
    top1 = top5 = 0
    times = []
    with grocery_index() as model_key:
        for row in rows:
            outcome = _photo(photos_file, row, times)
            if isinstance(outcome, dict):
                return outcome
            top1 += bool(outcome) and outcome[0] == row["sku"]
            top5 += row["sku"] in outcome
    n = len(rows)
    return {"photos": n, "model_key": model_key, "accuracy@1": round(top1 / n, 4), "accuracy@5": round(top5 / n, 4),
            "median_ms": round(statistics.median(times), 1)}


@contextlib.contextmanager
def grocery_index():
    """Embed the grocery catalogue images with the configured embedder (the pipeline's task body, run here)
    and make that key active for the measurement; the previously active key is restored afterwards."""
    from django.apps import apps

    from mmsearch.plugins import get_model
    from mmsearch.search import vectors
    from workers.pipeline import run_images

    plugin = get_model("embedder")
    Image = apps.get_model("catalog.ProductImage")
    ids = list(Image.objects.filter(product__sku__startswith="grocery-").values_list("id", flat=True))
    run_images("embedder", plugin.model_key, ids)
    vectors.ensure_index("image", plugin.model_key, plugin.dim)
    before = vectors.active_model("embedder")
    vectors.activate("embedder", plugin.model_key, plugin.dim)
    try:
        yield plugin.model_key
    finally:
        if before is None:
            vectors.ActiveModel.objects.filter(alias="embedder").delete()
        else:
            vectors.activate("embedder", before.model_key, before.dim)


def _photo(photos_file: Path, row: dict, times: list[float]):
    """The skus found for one photo (top five), or an error dict."""
    import io

    from PIL import Image

    from mmsearch.images import check_image
    from mmsearch.search.engine import search
    from mmsearch.search.params import SearchError, SearchQuery

    checked = check_image((photos_file.parent / row["image"]).read_bytes())
    t0 = time.perf_counter()
    try:
        result = search(SearchQuery(image=Image.open(io.BytesIO(checked.data)),
                                    filters={"category": ["Fruit", "Vegetables", "Packages"]}, limit=5))
    except SearchError as exc:
        return {"error": str(exc)}
    times.append((time.perf_counter() - t0) * 1000)
    return [h.sku for h in result.hits]


def restrict_to_embedded() -> tuple[int, int]:
    """Make exactly the fashion products with a vector of the active text_embedder the active ones.

    For a copy database whose indexing is still under way: every mode is then measured on the same, fully
    indexed sub-catalog. Returns (active, inactive)."""
    from django.apps import apps
    from django.conf import settings
    from django.db import connection

    from mmsearch.search import vectors

    if settings.DATABASES["default"]["NAME"] == "mmsearch":
        raise SystemExit("--only-embedded changes which products are active; use it on a copy database, not 'mmsearch'")
    active = vectors.active_model("text_embedder")
    if active is None:
        raise SystemExit("--only-embedded needs an active text_embedder (manage.py activate_model text_embedder)")
    table = apps.get_model("catalog.Product")._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} p SET active = EXISTS (SELECT 1 FROM {vectors.TABLES['product']} e "
            "WHERE e.product_id = p.id AND e.model_key = %s) WHERE p.sku LIKE 'fashion-%%'",
            [active.model_key],
        )
        cursor.execute(f"SELECT active, count(*) FROM {table} WHERE sku LIKE 'fashion-%%' GROUP BY active")
        counts = dict(cursor.fetchall())
    return counts.get(True, 0), counts.get(False, 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=180, help="size of the labelled set (at least 150)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {', '.join(CONFIGS)}")
    parser.add_argument("--grocery", action="store_true", help="also measure search by photo on the grocery val photos")
    parser.add_argument("--photos", type=Path, default=ROOT.parent / "shared/datasets/grocery/photos-val.jsonl")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/search_quality.json")
    parser.add_argument("--only-embedded", action="store_true",
                        help="(copy databases only) measure on the fashion products that have a text vector")
    args = parser.parse_args(argv)
    import django

    django.setup()
    from django.conf import settings

    from mmsearch.search import vectors
    from mmsearch.search.config import config

    if args.only_embedded:
        kept, left = restrict_to_embedded()
        print(f"--only-embedded: {kept} fashion products with a text vector are active, {left} without are not", flush=True)

    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown config(s) {', '.join(sorted(unknown))}")
    products = load_products()
    if not products:
        parser.error(f"database {settings.DATABASES['default']['NAME']!r} has no active fashion products; import ../shared/datasets/fashion first")
    queries = build_queries(products, args.queries)
    active = {alias: (m.model_key if (m := vectors.active_model(alias)) else None) for alias in ("embedder", "text_embedder")}
    print(f"{len(products)} active fashion products, {len(queries)} queries; active models: {active}", flush=True)
    report = {
        "database": settings.DATABASES["default"]["NAME"], "products": len(products), "active_models": active,
        "only_embedded": args.only_embedded,
        "weights": config()["WEIGHTS"], "boosts": config()["BOOSTS"],
        "results": evaluate(queries, products, configs), "queries": queries,
    }
    if args.grocery:
        report["grocery_photos"] = grocery_accuracy(args.photos)
        print(f"grocery photo search: {report['grocery_photos']}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
