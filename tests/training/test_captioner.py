"""The captioner's model side: caption targets and the brand rule, the metrics on hand-computed examples, the
decoder's decoding methods, and train_captioner / evaluate_captioner end to end on a fixture catalog."""

from __future__ import annotations

import json
import math
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from django.core.management import CommandError, call_command
from django.test import override_settings

from mmsearch import plugins
from mmsearch.training.caption import metrics as CM
from mmsearch.training.caption.targets import CaptionTargets, brand_of, mentions, names, singular, words
from mmsearch.training.caption.vocab import BOS, EOS, PAD, Vocab


def product(title: str, **attributes):
    return SimpleNamespace(title=title, attributes=attributes)


# --- the brand rule and the targets ----------------------------------------------------------------------------
@pytest.mark.parametrize("title, attributes, brand", [
    # the run of words before the first word naming the product (an attribute value or a gender word)
    ("Mother Earth Women Aug Bagru Red Kurtas", {"gender": "Women", "colour": "Red", "article_type": "Kurtas"},
     ("mother", "earth")),
    ("Puma Men's Toe Crusher Black T-shirt", {"gender": "Men", "colour": "Black"}, ("puma",)),
    # a gender word stops the run even when it is not the product's gender attribute
    ("Levis Kids Girl's Diane Yellow Teens Kidswear", {"gender": "Women", "colour": "Yellow"}, ("levis",)),
    # glue words join brand names
    ("Gini and Jony Boys Printed White T-shirt", {"gender": "Boys", "colour": "White"}, ("gini", "and", "jony")),
    # a colour word that is not this product's colour is part of the brand
    ("Red Rose Women Grey Nightdress", {"gender": "Women", "colour": "Grey"}, ("red", "rose")),
    # a title that starts by naming the product has no brand
    ("Men Black Watch", {"gender": "Men", "colour": "Black"}, ()),
    # no word names the product: the first word
    ("ColorBar Cinnabar Blusher 11", {"colour": "Pink", "article_type": "Highlighter and Blush"}, ("colorbar",)),
    # a brand attribute wins
    ("Puma Men Black Shoes", {"brand": "Puma", "gender": "Men"}, ("puma",)),
])
def test_brand_rule(title, attributes, brand):
    assert brand_of(title, attributes) == brand


def test_words_and_plurals():
    assert words("Men's Navy-Blue T-Shirt & Socks") == ["men", "navyblue", "tshirt", "and", "socks"]
    assert [singular(w) for w in ("kurtas", "watches", "ties", "dresses", "scarves", "jeans", "men", "boys")] == \
        ["kurta", "watch", "tie", "dress", "scarf", "jean", "men", "boy"]


def test_targets_leave_every_brand_out_and_complete_the_facts():
    catalog = [
        product("Red Tape Men Brown Casual Shoes", gender="Men", colour="Brown", article_type="Casual Shoes"),
        product("Red Tape Men Red Shoes", gender="Men", colour="Red", article_type="Casual Shoes"),
        product("Puma Men Puma Logo Black T-shirt", gender="Men", colour="Black", article_type="Tshirts"),
        product("Hakashi Men Pink Cufflinks", gender="Men", colour="Steel", article_type="Cufflinks"),
        product("FOSSIL White Dial Watch ES3069", gender="Women", colour="White", article_type="Watches"),
        product("Lee Men Blue Jeans", gender="Men", colour="Blue", article_type="Jeans"),
    ]
    t = CaptionTargets.fit(catalog)
    got = [t.target(p.title, p.attributes) for p in catalog]
    assert got == [
        "men brown casual shoes",
        "men red casual shoes",  # "red tape" is a lexicon brand; "shoes" gets its missing qualifier
        "men logo black tshirt",  # the brand wherever it occurs
        "men pink steel cufflinks",  # the attribute colour before the article type
        "women white dial watch",  # gender in front; the model code dropped
        "men blue jeans",
    ]
    assert ("red", "tape") in t.brands and ("puma",) in t.brands
    assert t.hallucinated_brand("men black puma tshirt", "Lee Men Blue Jeans", {"gender": "Men"}) == ("puma",)
    assert t.hallucinated_brand("men blue jeans", "Lee Men Blue Jeans", {"gender": "Men"}) is None
    assert t.hallucinated_brand("lee men blue jeans", "Lee Men Blue Jeans", {"gender": "Men"}) is None  # its own


def test_ordinary_words_are_not_brands():
    # "Casual" heads a brand-less title once but describes products of other brands more often.
    catalog = [product("Casual Black Shirt", colour="Black", article_type="Shirts")]
    catalog += [product(f"B{i} Men Casual Blue Shirt", gender="Men", colour="Blue", article_type="Shirts")
                for i in range(3)]
    t = CaptionTargets.fit(catalog)
    assert ("casual",) not in t.brands and ("b0",) in t.brands
    assert t.brand_words(Counter({"casual": 3})) == {"b0", "b1", "b2"}


def test_mentions_allow_synonyms_and_plurals_but_nothing_coarser():
    assert mentions("men navy polo tshirt", "colour", "Navy Blue")
    assert mentions("men navy blue t-shirts", "article_type", "Tshirts")
    assert mentions("women printed sari", "article_type", "Sarees")
    assert mentions("women body mist", "article_type", "Perfume and Body Mist")
    assert mentions("a gray cap", "colour", "Grey")
    assert mentions("womens red kurta", "gender", "Women")
    assert not mentions("men black shoes", "article_type", "Casual Shoes")
    assert not mentions("men blue shirt", "colour", "Navy Blue")
    assert not mentions("women red kurta", "gender", "Men")
    assert ("navy",) in names("colour", "Navy Blue")


# --- metrics on hand-computed examples --------------------------------------------------------------------------
def test_bleu_and_rouge_by_hand():
    # candidate "a red cotton shirt for men" (6 words) against "a red shirt for men" (5 words):
    # clipped n-gram precisions 5/6, 3/5, 1/4, 0/3, no brevity penalty (the candidate is longer), so
    # BLEU-1 = 5/6, BLEU-2 = sqrt(5/6 * 3/5) = sqrt(1/2), BLEU-3 = (5/6 * 3/5 * 1/4) ** (1/3) = 1/2, BLEU-4 ~ 0.
    # ROUGE-L: LCS 5, P = 5/6, R = 1, F(beta=1.2) = (1 + 1.44) P R / (R + 1.44 P) = 2.4400 * 5/6 / 2.2.
    s = CM.text_scores(["A red cotton shirt, for men"], [["a red shirt for men"]])
    assert s["bleu1"] == pytest.approx(5 / 6, abs=1e-6)
    assert s["bleu2"] == pytest.approx(math.sqrt(0.5), abs=1e-6)
    assert s["bleu3"] == pytest.approx(0.5, abs=1e-6)
    assert s["bleu4"] < 1e-3
    assert s["rouge_l"] == pytest.approx(2.44 * (5 / 6) / 2.2, abs=1e-6)
    # a shorter candidate pays the brevity penalty exp(1 - 5/3): "red shirt men" has precisions 1, 0, ...
    short = CM.text_scores(["red shirt men"], [["a red shirt for men"]])
    assert short["bleu1"] == pytest.approx(math.exp(1 - 5 / 3), abs=1e-6)


def test_cider_d_of_exact_captions_is_ten():
    # Four words each, no word shared: every n-gram (n = 1..4) has the same idf, so CIDEr-D is 10 x cosine 1.
    refs = ["women red cotton kurta", "men blue denim jeans", "unisex black canvas backpack"]
    assert CM.text_scores(refs, [[r] for r in refs])["cider"] == pytest.approx(10.0, abs=1e-6)
    assert CM.text_scores(["a b c"] * 3, [[r] for r in refs])["cider"] == 0.0


def test_caption_metrics_count_mentions_and_brands():
    ps = [product("Puma Men Black T-shirt", gender="Men", colour="Black", article_type="Tshirts"),
          product("Lee Women Blue Jeans", gender="Women", colour="Blue", article_type="Jeans")]
    t = CaptionTargets.fit(ps)
    out = CM.caption_metrics(["men black tshirt", "puma women blue top"], [["men black tshirt"], ["women blue jeans"]],
                             ps, t)
    assert out["mentions"] == {"article_type": 0.5, "colour": 1.0, "gender": 1.0}
    assert out["brand_hallucination"] == 0.5


# --- vocabulary and decoder --------------------------------------------------------------------------------------
def test_vocab_round_trip():
    v = Vocab.build([["men", "blue", "shirt"], ["men", "red", "shirt"], ["men", "puma"]], min_count=1,
                    exclude={"puma"})
    assert v.words[4:] == ("men", "shirt", "blue", "red")
    ids = v.encode(["men", "green", "shirt"], max_len=8)
    assert ids == [BOS, v.ids["men"], v.ids["shirt"], EOS]  # unknown words left out
    assert v.decode(ids[1:] + [PAD]) == "men shirt"


def tiny_decoder(vocab_size=12, seed=0):
    from mmsearch.training.caption.model import CaptionConfig, Captioner

    torch.manual_seed(seed)
    cfg = CaptionConfig(vocab_size=vocab_size, block_size=8, grid_tokens=4, grid_dim=6, n_layer=1, n_head=2,
                        n_embd=16, dropout=0.0)
    return Captioner(cfg)


def test_decoder_learns_captions_and_decodes_them():
    model = tiny_decoder()
    grids = torch.randn(2, 4, 6)
    captions = torch.tensor([[BOS, 4, 5, 6, EOS], [BOS, 7, 8, EOS, PAD]])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        _, loss = model(model.encode(grids), captions[:, :-1], captions[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    model.eval()
    memory = model.encode(grids)
    greedy, _ = model.greedy(memory)
    beam, scores = model.beam_search(memory, beam_size=3)
    for seqs in (greedy, beam):
        assert seqs[0, :5].tolist() == [BOS, 4, 5, 6, EOS]
        assert seqs[1, :4].tolist() == [BOS, 7, 8, EOS]
    assert bool((scores <= 0).all())
    one, _ = model.beam_search(memory, beam_size=1)
    assert torch.equal(one, greedy)
    a, _ = model.sample(memory, top_p=0.9, generator=torch.Generator().manual_seed(3))
    b, _ = model.sample(memory, top_p=0.9, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    # a nucleus this small keeps only the most likely word: sampling is greedy decoding
    c, _ = model.sample(memory, top_p=1e-6, generator=torch.Generator().manual_seed(4))
    assert torch.equal(c[:, :greedy.shape[1]], greedy[:, :c.shape[1]])


def test_banned_words_are_never_written():
    model = tiny_decoder().eval()
    memory = model.encode(torch.randn(3, 4, 6))
    banned = torch.arange(4, 10)
    seqs, _ = model.beam_search(memory, beam_size=2, banned=banned)
    assert not bool(torch.isin(seqs[:, 1:], banned).any())


# --- train_captioner / evaluate_captioner end to end ----------------------------------------------------------
COLOURS = {"Red": (220, 20, 20), "Green": (20, 200, 40), "Blue": (30, 40, 220)}
KINDS = {"Shirts": ("Shirt", (12, 16)), "Caps": ("Cap", (14, 14)), "Socks": ("Socks", (16, 12))}


@pytest.fixture
def shop(colour_catalog):
    """18 products: 3 colours x 3 kinds x 2 genders, titles starting with a brand."""
    c = colour_catalog
    rows = []
    for colour, rgb in COLOURS.items():
        for kind, (word, size) in KINDS.items():
            for gender, brand in (("Men", "Acme"), ("Women", "Bolt Co")):
                sku = f"{colour}-{word}-{gender}".lower()
                rows.append({"sku": sku, "title": f"{brand} {gender} {colour} {word}", "category": f"Apparel/{kind}",
                             "attributes": {"gender": gender, "colour": colour, "article_type": kind},
                             "images": [c.png(f"{sku}.png", rgb, size)]})
    return c.products("products.jsonl", rows)


def train(products, out, cache, *extra):
    call_command("train_captioner", "--data", str(products), "--out", str(out), "--preset", "tiny",
                 "--holdout", "0.3", "--cache-dir", str(cache), "--checkpoint-every", "0", "--no-progress", *extra)


def test_trained_captioner_loads_through_the_plugin(shop, tmp_path):
    out = tmp_path / "models" / "captioner"
    train(shop, out, tmp_path / "cache", "--epochs", "2", "--batch-size", "4")
    card = json.loads((out / "model_card.json").read_text())
    assert card["training"]["finished"] and card["training"]["epochs_done"] == 2
    assert card["architecture"]["trunk"]["image_size"] == 128 and card["architecture"]["trunk"]["grid"] == [16, 1280]
    assert card["data"]["held_out_products"] > 0 and (out / "heldout.jsonl").is_file()
    assert {"val_loss", "cider", "bleu4", "mentions_colour"} <= set(card["metrics"]["per_epoch"][-1])
    conf = {"BACKEND": "mmsearch.plugins.captioner.TrunkCaptioner", "OPTIONS": {"path": str(out), "beam_size": 2}}
    with override_settings(MMSEARCH_MODELS={"captioner": conf}):
        plugins.reset()
        captioner = plugins.get_model("captioner")
        from PIL import Image

        caps = captioner.caption([Image.new("RGB", (30, 40), (220, 20, 20)), Image.new("L", (9, 9), 90)])
    assert len(caps) == 2 and all(isinstance(c.text, str) and c.text for c in caps)
    assert caps[0].model_key == captioner.model_key and captioner.model_key.endswith(":beam2")
    # the grid the trunk computes is what training cached
    grids = captioner.grids([Image.new("RGB", (30, 40), (220, 20, 20))])
    assert grids.shape == (1, 16, 1286)
    assert captioner.caption_grids(grids)[0].text == caps[0].text


def test_training_is_deterministic_and_resumable(shop, tmp_path):
    cache = tmp_path / "cache"
    train(shop, tmp_path / "a", cache, "--epochs", "2", "--batch-size", "2")
    steps = json.loads((tmp_path / "a" / "model_card.json").read_text())["metrics"]["per_epoch"][0]["steps"]
    train(shop, tmp_path / "b", cache, "--epochs", "2", "--batch-size", "2", "--max-steps", str(steps + 1))
    assert not json.loads((tmp_path / "b" / "model_card.json").read_text())["training"]["finished"]
    train(shop, tmp_path / "b", cache, "--epochs", "2", "--batch-size", "2")  # resumes after epoch 1
    sha = [json.loads((tmp_path / d / "model_card.json").read_text())["weights"]["sha256"] for d in "ab"]
    assert sha[0] == sha[1]
    with pytest.raises(CommandError, match="different training run"):
        train(shop, tmp_path / "a", cache, "--epochs", "3", "--batch-size", "2")


def test_grid_cache_is_shared_and_sharded(shop, tmp_path):
    from mmsearch.training import data as D
    from mmsearch.training.trainer import grid_cache
    from mmsearch.training.model import ARCHS, build_trunk

    cache = tmp_path / "cache"
    train(shop, tmp_path / "a", cache, "--max-steps", "1")
    trunk = build_trunk(ARCHS["effl0-128"])
    grids = grid_cache(trunk, 128, cache)
    assert len(grids) == 18 and grids.folder.name.startswith("trunkgrid-")
    # the cached grid pools to the trunk's own pooled vector (what the embedder's feature cache holds)
    path = sorted((shop.parent / "images").iterdir())[0]
    key = f"{path.resolve()}|0|1.0|0"
    pixels = torch.from_numpy(np.array(D.squash(D.open_rgb(path), 128))).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        pooled = trunk((pixels - 0.5) / 0.5)[0].numpy()
    np.testing.assert_allclose(grids.rows([key])[0].astype(np.float32).mean(0), pooled, atol=2e-2)


def test_evaluate_captioner_reports_three_methods(shop, tmp_path):
    out = tmp_path / "cap"
    train(shop, out, tmp_path / "cache", "--epochs", "1", "--batch-size", "4")
    report_path = tmp_path / "eval.json"
    models = {"embedder": {"BACKEND": "tests.training.plugins.ColourEmbedder"}}
    with override_settings(MMSEARCH_MODELS=models):
        plugins.reset()
        call_command("evaluate_captioner", "--model", str(out), "--data", str(out / "heldout.jsonl"),
                     "--corpus", str(shop), "--embedder", "embedder", "--cache-dir", str(tmp_path / "cache"),
                     "--json", str(report_path), "--timing-images", "4", "--no-progress")
    report = json.loads(report_path.read_text())
    for name in ("captioner", "nearest_neighbour", "tag_template"):
        r = report[name]
        assert {"bleu4", "cider", "rouge_l", "mentions", "brand_hallucination", "ms_per_image"} <= set(r)
        assert set(r["mentions"]) == {"article_type", "colour", "gender"}
    # the colour embedder puts each image next to a product of its colour, and tags its colour
    assert report["nearest_neighbour"]["mentions"]["colour"] == 1.0
    assert report["tag_template"]["mentions"]["colour"] == 1.0
    assert report["tag_template"]["tagger"].startswith("zeroshot:")


def test_the_embedders_trunk_pass_leaves_the_grids_the_captioner_reads(shop, tmp_path):
    """One trunk pass per image: train_embedder with cached views keeps each image's view-0 grid, and a later
    train_captioner over the same images runs the trunk on none of them."""
    from mmsearch.training.model import ARCHS, build_trunk
    from mmsearch.training.trainer import grid_cache

    cache = tmp_path / "cache"
    call_command("train_embedder", "--data", str(shop), "--out", str(tmp_path / "emb"), "--preset", "tiny",
                 "--arch", "effl0-128", "--cached-views", "2", "--batch-size", "4", "--cache-dir", str(cache),
                 "--checkpoint-every", "0", "--no-progress")
    grids = grid_cache(build_trunk(ARCHS["effl0-128"]), 128, cache)
    assert len(grids) == 18
    shards = sorted(p.name for p in grids.folder.glob("*.npy"))
    train(shop, tmp_path / "cap", cache, "--max-steps", "1")
    assert sorted(p.name for p in grids.folder.glob("*.npy")) == shards  # nothing new was computed
