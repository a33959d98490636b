"""Tagger calibration: temperature scaling, ECE, auto-accept thresholds and adapters on constructed examples with
known answers, and `manage.py calibrate_tagger` + `evaluate --calibration` end to end (ColourEmbedder)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings

from mmsearch import plugins
from mmsearch.plugins import zeroshot as Z
from mmsearch.plugins.base import VocabGroup, VocabTag
from mmsearch.training import calibration as C
from mmsearch.training import data as D
from mmsearch.training import evaluation as E

COLOUR = "tests.training.plugins.ColourEmbedder"


def sample(logits: np.ndarray, rng) -> np.ndarray:
    """One label per row drawn from softmax(logits)."""
    p = Z.softmax(logits)
    return (p.cumsum(axis=1) > rng.random((len(p), 1))).argmax(axis=1)


# ---- temperature scaling -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [0.4, 2.5, 6.0])
def test_the_fitted_temperature_recovers_the_scale_of_known_logits(k):
    # Labels drawn from softmax(t): the true distribution. Logits k * t are miscalibrated by exactly k, so
    # temperature scaling (softmax(logits / T)) must find T = k.
    rng = np.random.default_rng(0)
    true = rng.normal(0, 2.0, (20_000, 6))
    y = sample(true, rng)
    t = C.fit_temperature(k * true, y)
    assert t == pytest.approx(k, rel=0.03)
    # It is the minimiser of the NLL, to the bisection's precision.
    assert C.nll(k * true, y, t) <= min(C.nll(k * true, y, t * 1.01), C.nll(k * true, y, t / 1.01))
    # And it repairs the calibration: ECE of the true distribution is sampling noise only.
    before, _ = C.ece(Z.softmax(k * true), y)
    after, _ = C.ece(Z.softmax(k * true / t), y)
    assert after < 0.015
    if k > 2:
        assert before > 0.1  # overconfident by k


def test_temperature_edge_cases():
    z = np.array([[5.0, 0.0], [0.0, 5.0]])
    assert C.fit_temperature(z, np.array([0, 1])) == C.TEMPERATURE_RANGE[0]  # always right: as sharp as allowed
    assert C.fit_temperature(z, np.array([1, 0])) == C.TEMPERATURE_RANGE[1]  # always wrong: as flat as allowed
    with pytest.raises(ValueError):
        C.fit_temperature(z, np.array([0, -1]))


def test_ece_uses_15_equal_width_bins_by_hand():
    # confidences 0.5 (bin 7: 0.4667-0.5333) right, 0.9 x 2 (bin 13: 0.8667-0.9333) one right, 1.0 (bin 14) wrong.
    probs = np.array([[0.5, 0.5], [0.9, 0.1], [0.1, 0.9], [1.0, 0.0]])
    labels = np.array([0, 0, 0, 1])
    e, table = C.ece(probs, labels)
    assert len(table) == 15
    assert e == pytest.approx(0.25 * 0.5 + 0.5 * abs(0.5 - 0.9) + 0.25 * 1.0)
    assert [b["count"] for b in table if b["count"]] == [1, 2, 1]


# ---- auto-accept -----------------------------------------------------------------------------------------------------
def test_auto_accept_picks_the_lowest_score_that_reaches_the_precision():
    # Top-1 scores (descending) and whether each is right:
    #   0.99 y, 0.98 y, 0.97 y, 0.96 n, 0.95 y, 0.94 y, 0.93 y, 0.92 y, 0.91 n, 0.90 n
    # precision of the prefixes: 1, 1, 1, .75, .8, .833, .857, .875, .778, .7
    conf = np.array([0.99, 0.98, 0.97, 0.96, 0.95, 0.94, 0.93, 0.92, 0.91, 0.90])
    right = np.array([1, 1, 1, 0, 1, 1, 1, 1, 0, 0], dtype=bool)
    probs = np.stack([conf, 1 - conf], axis=1)
    labels = np.where(right, 0, 1)
    a = C.auto_accept(probs, labels, 0.85, min_accepted=1)
    assert a == {"threshold": 0.92, "precision": pytest.approx(7 / 8), "coverage": 0.8, "accepted": 8}
    a = C.auto_accept(probs, labels, 0.95, min_accepted=1)
    assert (a["threshold"], a["coverage"], a["precision"]) == (0.97, 0.3, 1.0)
    assert C.auto_accept(probs, labels, 0.95, min_accepted=4)["threshold"] is None  # too few accepted to trust
    # Equal scores are accepted together: a cut never separates them.
    tied = np.array([[0.9, 0.1], [0.9, 0.1], [0.8, 0.2]])
    a = C.auto_accept(tied, np.array([0, 1, 0]), 0.6, min_accepted=1)
    assert a["accepted"] in (3,) and a["threshold"] == 0.8 and a["precision"] == pytest.approx(2 / 3)
    assert C.auto_accept(tied, np.array([1, 1, 1]), 0.5, min_accepted=1)["threshold"] is None
    measured = C.measure_threshold(probs, labels, 0.92)
    assert measured == {"threshold": 0.92, "precision": pytest.approx(7 / 8), "coverage": 0.8, "accepted": 8}


def test_auto_accept_by_a_wilson_lower_bound_keeps_a_margin_that_shrinks_with_the_sample():
    # The Wilson bound of 9/10 at 95 % (one-sided) is well below 0.9; of 900/1000 it is close to it.
    low = C.wilson_lower(np.array([9, 900, 1000]), np.array([10, 1000, 1000]), 0.95)
    assert low[0] == pytest.approx(0.6523, abs=1e-3) and 0.88 < low[1] < 0.9 and 0.99 < low[2] < 1.0
    # 4,000 scores: the top ones always right, then right 80 % of the time. The point estimate reaches 0.90 at
    # a lower score (a larger prefix: about 2,000) than its lower bound does.
    rng = np.random.default_rng(0)
    conf = np.sort(rng.uniform(0.5, 1.0, 4000))[::-1]
    right = np.r_[np.ones(1000, bool), rng.random(3000) < 0.8]
    probs = np.stack([conf, 1 - conf], axis=1)
    labels = np.where(right, 0, 1)
    point = C.auto_accept(probs, labels, 0.9, min_accepted=1)
    bound = C.auto_accept(probs, labels, 0.9, min_accepted=1, confidence=0.95)
    assert point["precision"] >= 0.9 and "lower_bound" not in point
    assert bound["lower_bound"] >= 0.9 and bound["precision"] > point["precision"]
    assert bound["threshold"] > point["threshold"] and bound["coverage"] < point["coverage"]
    # The same scores as 500 images with 8 questions each: the bound counts images, so its margin widens, and
    # each accepted prefix's bound equals Wilson's over the images in it at that precision.
    images = np.arange(4000) // 8
    clustered = C.auto_accept(probs, labels, 0.9, min_accepted=1, confidence=0.95, clusters=images)
    assert clustered["threshold"] > bound["threshold"] and clustered["coverage"] < bound["coverage"]
    k = clustered["accepted"]
    expected = C.wilson_lower(clustered["precision"] * len(set(images[:k])), len(set(images[:k])), 0.95)
    assert clustered["lower_bound"] == pytest.approx(float(expected), abs=1e-4) and expected >= 0.9
    # one cluster per item is the unclustered bound
    assert C.auto_accept(probs, labels, 0.9, min_accepted=1, confidence=0.95, clusters=np.arange(4000)) == bound


# ---- adapter -----------------------------------------------------------------------------------------------------
def rotated_problem(n=1200, seed=0):
    """3 classes on the unit circle of a 3-d space; the prompts point 35 degrees off the class centres, so
    zero-shot confuses neighbours and a probe can learn the true directions."""
    rng = np.random.default_rng(seed)
    centres = np.array([[np.cos(a), np.sin(a), 0.0] for a in (0, 2 * np.pi / 3, 4 * np.pi / 3)])
    off = np.radians(35)
    prompts = np.array([[np.cos(a + off), np.sin(a + off), 0.3] for a in (0, 2 * np.pi / 3, 4 * np.pi / 3)])
    y = rng.integers(0, 3, n)
    x = centres[y] + rng.normal(0, 0.35, (n, 3))
    return Z.unit_rows(x), y, Z.unit_rows(prompts)


def test_a_strongly_decayed_adapter_is_the_zero_shot_tagger():
    x, y, prompts = rotated_problem()
    w, b, _ = C.fit_adapter(x, y, prompts, weight_decay=1e6)
    np.testing.assert_allclose(w, prompts, atol=1e-3)
    np.testing.assert_allclose(Z.adapter_logits(x, prompts, np.zeros(3)), Z.zero_shot_logits(x, prompts))


def test_the_adapter_beats_zero_shot_where_the_prompts_are_off():
    x, y, prompts = rotated_problem()
    inner = np.arange(len(y)) % 5 == 0
    choice = C.choose_adapter(x[:900], y[:900], inner[:900], prompts)
    assert choice.weight is not None and choice.weight_decay in C.ADAPTER_DECAYS
    zero = C.accuracy(Z.zero_shot_logits(x[900:], prompts), y[900:])
    adapted = C.accuracy(Z.adapter_logits(x[900:], choice.weight, choice.bias), y[900:])
    assert adapted > zero + 0.1
    few = C.choose_adapter(x[:50], y[:50], inner[:50], prompts, min_examples=100)
    assert few.weight is None and "fewer than 100" in few.note


def test_fit_group_reports_side_by_side_and_keeps_rows_without_labels_out():
    x, y, prompts = rotated_problem(2000)
    group = VocabGroup("shade", "shade", tuple(VocabTag(s, s) for s in ("a", "b", "c")))
    y = y.copy()
    y[::17] = -1  # no value
    cal = np.arange(len(y)) % 3 == 0
    fit = C.fit_group(group, prompts, x[~cal], y[~cal], (np.arange(len(y)) % 5 == 0)[~cal], x[cal], y[cal],
                      target_precision=0.9)
    e = fit.entry
    assert e["examples"]["calibration"] == int((y[cal] >= 0).sum())
    assert e["adapter"] is not None and e["adapted"]["accuracy"] > e["zero_shot"]["accuracy"]
    assert e["ece_after"] == e["adapted"]["ece_calibrated"] and e["ece_before"] == e["zero_shot"]["ece"]
    assert e["version"] == group.version and e["tags"] == [["a", "a", []], ["b", "b", []], ["c", "c", []]]
    assert e["threshold"] is not None and e["precision"] >= 0.9
    assert {p["target"] for p in e["operating_points"]} >= {0.9, 0.95}
    assert set(fit.arrays) == {"shade.weight", "shade.bias"}
    short = C.fit_group(group, prompts, x, y, np.zeros(len(y), bool), x[:10], y[:10])
    assert isinstance(short, str) and "not calibrated" in short


# ---- neighbour cache -------------------------------------------------------------------------------------------
def test_neighbour_votes_and_logits_on_a_known_example():
    # Two keys 60 degrees apart, tags 0 and 1; an image on key 0: its votes are 1 : exp(-beta (1 - cos 60)).
    keys = np.array([[1.0, 0.0], [0.5, np.sqrt(3) / 2]], np.float32)
    cache = Z.Neighbours(keys, np.array([0, 1]), beta=10.0, alpha=2.0)
    share = cache.votes(keys[:1], tags=3)
    far = np.exp(-10.0 * 0.5)
    np.testing.assert_allclose(share, [[1 / (1 + far), far / (1 + far), 0.0]], rtol=1e-6)
    logits = np.array([[1.0, 2.0, 3.0]])
    log_p = logits - np.log(np.exp(logits).sum())
    expected = log_p + 2.0 * np.log(share + Z.NEIGHBOUR_EPS)
    np.testing.assert_allclose(cache.logits(keys[:1], logits), expected, rtol=1e-9)
    # A key without a tag of the group (-1) does not vote.
    silent = Z.Neighbours(keys, np.array([0, -1]), beta=10.0, alpha=2.0)
    np.testing.assert_allclose(silent.votes(keys[1:], tags=2), [[1.0, 0.0]])


def test_neighbours_are_chosen_where_they_help_and_left_out_where_they_do_not():
    x, y, prompts = rotated_problem(3000)
    keys, key_y = x[:2000], y[:2000]  # labelled catalog images the calibration does not score
    fit_x, fit_y, test_x, test_y = x[2000:2500], y[2000:2500], x[2500:], y[2500:]
    choice = C.choose_neighbours(fit_x, fit_y, Z.zero_shot_logits(fit_x, prompts), keys, key_y)
    assert choice.neighbours is not None and choice.neighbours.beta in C.NEIGHBOUR_BETAS
    zero = C.accuracy(Z.zero_shot_logits(test_x, prompts), test_y)
    voted = C.accuracy(choice.neighbours.logits(test_x, Z.zero_shot_logits(test_x, prompts)), test_y)
    assert voted > zero + 0.05  # on rows neither the keys nor the choice saw
    # Keys with shuffled labels carry no information: no cache is kept.
    shuffled = np.random.default_rng(3).permutation(key_y)
    none = C.choose_neighbours(fit_x, fit_y, Z.zero_shot_logits(fit_x, prompts), keys, shuffled)
    assert none.neighbours is None and "none beat" in none.note and none.scores["without"] == pytest.approx(
        C.accuracy(Z.zero_shot_logits(fit_x, prompts), fit_y))


def test_a_neighbour_cache_round_trips_through_the_calibration_file(tmp_path):
    x, y, prompts = rotated_problem(3000)
    group = VocabGroup("shade", "shade", tuple(VocabTag(s, s) for s in ("a", "b", "c")))
    keys = x[:2000].astype(np.float16).astype(np.float32)
    key_y = y[:2000].copy()
    key_y[::7] = -1  # keys without this group's tag
    rest_x, rest_y = x[2000:], y[2000:]
    cal = np.arange(len(rest_y)) % 2 == 0
    fit = C.fit_group(group, prompts, rest_x[~cal], rest_y[~cal], np.zeros((~cal).sum(), bool), rest_x[cal],
                      rest_y[cal], adapters=False, neighbours=(keys, key_y))
    e = fit.entry
    assert e["neighbours"]["voting_keys"] == int((key_y >= 0).sum()) and e["adapter"] is None
    assert e["adapted"]["accuracy"] > e["zero_shot"]["accuracy"]
    assert set(fit.arrays) == {C.NEIGHBOUR_KEYS, "shade.neighbour_labels"}
    path = tmp_path / "tagger.json"
    C.write_calibration(path, "k", [fit])
    loaded = Z.TaggerCalibration.load(path).groups["shade"]
    assert loaded.adapted and loaded.needs_prompts
    assert (loaded.neighbours.beta, loaded.neighbours.alpha) == (e["neighbours"]["beta"], e["neighbours"]["alpha"])
    served = loaded.probabilities(rest_x[cal], prompts)
    assert C.accuracy(served, rest_y[cal]) == pytest.approx(e["adapted"]["accuracy"])
    with pytest.raises(ValueError, match="prompt vectors are needed"):
        loaded.logits(rest_x[cal], None)
    # A file whose cache does not fit its keys is refused with one line.
    raw = json.loads(path.read_text())
    raw["groups"]["shade"]["neighbours"]["labels"] = C.NEIGHBOUR_KEYS
    path.write_text(json.dumps(raw))
    with pytest.raises(Z.CalibrationError, match="neighbour cache of 'shade' does not fit") as exc:
        Z.TaggerCalibration.load(path)
    assert "\n" not in str(exc.value)


# ---- one prompt implementation ---------------------------------------------------------------------------------
def test_evaluation_prompts_are_the_tagger_prompts_and_the_old_numbers():
    import torch

    from mmsearch.plugins.hashing import HashingEmbedder

    emb = HashingEmbedder(dim=32)
    for key, values in [("colour", ["Red", "Navy Blue", "Black"]), ("article_type", ["Tshirts", "Kurtas"]),
                        ("year", ["2011", "2012"]), ("category", ["Apparel", "Footwear"])]:
        group = E.facet_group(key, values)
        assert Z.prompt_texts(group) == [D.facet_texts(key, v) for v in values]
        old = E.value_prompts(torch.from_numpy(emb.embed_texts([t for v in values for t in D.facet_texts(key, v)])),
                              len(values)).numpy()
        np.testing.assert_allclose(E.prompt_embeddings(emb, key, values), old, atol=1e-6)
    # The vocabulary the tagger is calibrated on words its prompts as facet_texts does.
    products = [D.Product(str(i), "t", "", {"article_type": v, "colour": c}, ())
                for i, (v, c) in enumerate([("Tshirts", "Red"), ("Kurtas", "Navy Blue"), ("Tshirts", "Black")])]
    for group in Z.vocabulary_from_products(products, ["article_type", "colour"]):
        assert Z.prompt_texts(group) == [D.facet_texts(group.slug, t.name) for t in group.tags]


# ---- the command --------------------------------------------------------------------------------------------------
@pytest.fixture
def colour_models():
    plugins.reset()
    with override_settings(MMSEARCH_MODELS={"embedder": {"BACKEND": COLOUR, "OPTIONS": {}}}):
        yield
    plugins.reset()


TRUE_TEMPERATURE = 20.0


@pytest.fixture
def noisy_catalog(colour_catalog):
    """900 products whose colour labels are drawn from softmax(zero-shot logits / 20) of their own image (a
    mixture of two primaries): the ColourEmbedder's zero-shot scores are overconfident by exactly 20, so the
    fitted temperature must come out near 20. Gender is unrelated to the image (50/50)."""
    c = colour_catalog
    rng = np.random.default_rng(1)
    names = ["Red", "Green", "Blue"]
    rows, held = [], []
    for i in range(900):
        main, other = i % 3, (i % 3 + 1 + int(rng.integers(0, 2))) % 3
        mix = float(rng.uniform(0.15, 0.5))
        rgb = np.full(3, 30.0)
        rgb[main] += 225 * (1 - mix)
        rgb[other] += 225 * mix
        rgb = np.round(rgb).astype(int)
        logits = Z.zero_shot_logits(Z.unit_rows(rgb[None].astype(np.float32)), np.eye(3, dtype=np.float32))
        label = names[int(sample(logits / TRUE_TEMPERATURE, rng)[0])]
        row = {"sku": f"p{i}", "title": f"{label} shirt {i}", "category": "Apparel/Shirts",
               "attributes": {"colour": label, "gender": "Men" if rng.random() < 0.5 else "Women"},
               "images": [c.png(f"{i}.png", tuple(int(v) for v in rgb), size=(4, 4))]}
        (held if i % 10 == 0 else rows).append(row)
    return c.products("products.jsonl", rows + held), c.products("held.jsonl", held)


def test_calibrate_tagger_end_to_end(colour_models, noisy_catalog, tmp_path):
    data, held = noisy_catalog
    out = tmp_path / "model" / "tagger.json"
    report = tmp_path / "report.json"
    call_command("calibrate_tagger", "--data", str(data), "--exclude", str(held), "--out", str(out),
                 "--plots", str(tmp_path / "plots"), "--json", str(report), "--cache-dir", str(tmp_path / "cache"),
                 "--no-adapters", "--no-progress")
    raw = json.loads(out.read_text())
    assert raw["embedder_model_key"] == "test-colour:v1" and raw["format"] == Z.CALIBRATION_FORMAT
    assert set(raw["groups"]) == {"colour", "gender"}  # the default groups present in the data
    products = [p for p in D.load_products(data) if int(p.sku[1:]) % 10]
    vocab = {g.slug: g for g in Z.vocabulary_from_products(products, ["colour", "gender"])}
    colour = raw["groups"]["colour"]
    assert colour["version"] == vocab["colour"].version
    n_cal = sum(D.in_share(f"tagger-calibration|{p.sku}", 0.3) for p in products)
    assert colour["examples"]["calibration"] == n_cal and colour["examples"]["fit"] == len(products) - n_cal
    # Zero-shot is overconfident by 20: the temperature fitted on the calibration part finds it.
    assert colour["adapter"] is None and "adapters off" in colour["adapter_note"]
    assert 0.75 * TRUE_TEMPERATURE < colour["temperature"] < 1.25 * TRUE_TEMPERATURE
    assert colour["ece_before"] > 0.1 and colour["ece_after"] < colour["ece_before"] / 2
    assert colour["threshold"] is None or colour["precision"] >= 0.95
    assert raw["groups"]["gender"]["temperature"] == 1.0  # equal prompts: uniform whatever T
    assert (tmp_path / "plots" / "reliability.png").is_file()
    assert json.loads(report.read_text())["groups"]["colour"]["reliability"]["after"]
    # The same data again gives the same version (no timestamp in it); the image vectors come from the cache.
    first = raw["version"]
    call_command("calibrate_tagger", "--data", str(data), "--exclude", str(held), "--out", str(out),
                 "--cache-dir", str(tmp_path / "cache"), "--no-adapters", "--no-progress")
    assert json.loads(out.read_text())["version"] == first
    assert len(json.loads(next((tmp_path / "cache").glob("imagevec-*.json")).read_text())) == 810
    # With adapters (the default), the file says per group whether one was fitted, and why.
    call_command("calibrate_tagger", "--data", str(data), "--exclude", str(held), "--out", str(out),
                 "--cache-dir", str(tmp_path / "cache"), "--min-examples", "50", "--no-progress")
    with_adapters = json.loads(out.read_text())
    assert with_adapters["groups"]["colour"]["adapter_note"].startswith(("adapter:", "zero-shot:"))
    assert with_adapters["groups"]["gender"]["adapter"] is None  # nothing to learn from a 3-d colour vector
    if with_adapters["groups"]["colour"]["adapter"] is None:
        assert not (out.parent / "tagger.npz").exists()
    call_command("calibrate_tagger", "--data", str(data), "--exclude", str(held), "--out", str(out),
                 "--cache-dir", str(tmp_path / "cache"), "--no-adapters", "--no-progress")
    assert not (out.parent / "tagger.npz").exists()
    # A neighbour cache from another catalog file: its products outside --data and --exclude vote.
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    part = data.with_name("part.jsonl")
    part.write_text("".join(json.dumps(r) + "\n" for r in rows[:300]))
    call_command("calibrate_tagger", "--data", str(part), "--exclude", str(held), "--neighbours", str(data),
                 "--out", str(tmp_path / "nb" / "tagger.json"), "--cache-dir", str(tmp_path / "cache"),
                 "--no-adapters", "--no-progress")
    nb = json.loads((tmp_path / "nb" / "tagger.json").read_text())
    assert nb["neighbours"]["products"] == len({r["sku"] for r in rows[300:]} - {f"p{i}" for i in range(0, 900, 10)})
    for entry in nb["groups"].values():
        assert entry["neighbour_note"].startswith(("neighbour cache:", "no neighbour cache:"))
        assert (entry["neighbours"] is None) == entry["neighbour_note"].startswith("no ")

    # --flip: the file says so (another version) and the mirror images' vectors are cached beside the others; a
    # mean colour is its mirror's, so the fit is the same. evaluate scores the tagger's products the same way.
    flip_out = tmp_path / "flip" / "tagger.json"
    call_command("calibrate_tagger", "--data", str(part), "--exclude", str(held), "--neighbours", str(data),
                 "--out", str(flip_out), "--cache-dir", str(tmp_path / "cache"), "--no-adapters", "--no-progress",
                 "--flip")
    flipped = json.loads(flip_out.read_text())
    assert flipped["flip"] is True and flipped["version"] != nb["version"] and nb["flip"] is False
    mirror_cache = next((tmp_path / "cache").glob("imagevecflip-*.json"))
    held_skus = {f"p{i}" for i in range(0, 900, 10)}
    part_labelled = len([r for r in rows[:300] if r["sku"] not in held_skus])
    mirrors = part_labelled + nb["neighbours"]["products"]  # the calibration products' and the keys'
    assert len(json.loads(mirror_cache.read_text())) == mirrors
    for slug, entry in flipped["groups"].items():
        assert entry["temperature"] == pytest.approx(nb["groups"][slug]["temperature"])
    call_command("evaluate", "--data", str(held), "--calibration", str(flip_out), "--json", str(tmp_path / "f.json"),
                 "--cache-dir", str(tmp_path / "cache"), "--no-progress")
    assert len(json.loads(mirror_cache.read_text())) == mirrors + 90  # the evaluated products' mirrors
    flip_task = json.loads((tmp_path / "f.json").read_text())["zero_shot"]["colour"]["tagger"]

    # evaluate with that calibration: calibrated numbers beside the zero-shot ones.
    ev = tmp_path / "eval.json"
    call_command("evaluate", "--data", str(held), "--calibration", str(out), "--json", str(ev), "--no-progress",
                 "--plots", str(tmp_path / "eval-plots"))
    rep = json.loads(ev.read_text())
    assert rep["calibration"]["version"] == first
    task = rep["zero_shot"]["colour"]
    assert task["ece_calibrated"] is not None and set(task["auto_accept"]) >= {"threshold", "precision", "coverage"}
    assert task["tagger"]["images"] == 90 and task["tagger"]["temperature"] == pytest.approx(colour["temperature"])
    assert ("adapted_accuracy" in task) == (colour["adapter"] is not None)
    call_command("evaluate", "--data", str(held), "--calibration", str(tmp_path / "nb" / "tagger.json"), "--json",
                 str(tmp_path / "nb.json"), "--cache-dir", str(tmp_path / "cache"), "--no-progress")
    nb_task = json.loads((tmp_path / "nb.json").read_text())["zero_shot"]["colour"]["tagger"]
    assert flip_task["accuracy"] == pytest.approx(nb_task["accuracy"])  # a mean colour is its mirror's

    # The tagger plugin serves what the file says.
    settings_models = {"embedder": {"BACKEND": COLOUR, "OPTIONS": {}},
                       "tagger": {"BACKEND": "mmsearch.plugins.zeroshot.ZeroShotTagger",
                                  "OPTIONS": {"calibration": str(out)}}}
    with override_settings(MMSEARCH_MODELS=settings_models):
        plugins.reset()
        tagger = plugins.get_model("tagger")
        assert tagger.model_key == f"zeroshot:test-colour:v1:{first}"
        x = np.array([[0.9, 0.3, 0.3], [0.2, 0.2, 0.95]], np.float32)
        probs, calibrated = tagger.score_vectors(x, vocab["colour"])
        assert calibrated
        cal = Z.TaggerCalibration.load(out).groups["colour"]
        prompts = Z.prompt_vectors(plugins.get_model("embedder"), vocab["colour"])
        np.testing.assert_allclose(probs, cal.probabilities(Z.unit_rows(x), prompts), rtol=1e-6)
        assert tagger.threshold(vocab["colour"]) == colour["threshold"]
    plugins.reset()


def test_calibrate_tagger_bad_input_is_one_line_command_error(colour_models, noisy_catalog, tmp_path):
    data, held = noisy_catalog
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"sku": "a"}\n{nope\n')
    out = ["--out", str(tmp_path / "t.json"), "--no-progress"]
    cases = [
        (["--data", str(tmp_path / "missing.jsonl"), *out], "no such file"),
        (["--data", str(data), "--exclude", str(bad), *out], "bad JSON"),
        (["--data", str(data), "--groups", "material", *out], "no product of --data"),
        (["--data", str(data), "--target-precision", "1.5", *out], "between 0 and 1"),
        (["--data", str(data), "--no-progress"], "--out is needed"),
        (["--data", str(data), "--model", "nope", *out], "neither an alias"),
        (["--data", str(data), "--exclude", str(data), *out], "no products left"),
        (["--data", str(data), "--neighbours", str(data), *out], "--neighbours: no labelled product left"),
    ]
    for args, message in cases:
        with pytest.raises(CommandError) as exc:
            call_command("calibrate_tagger", *args)
        assert message in str(exc.value)
        assert "\n" not in str(exc.value)


def test_products_the_embedder_trained_on_are_counted_from_its_model_card(noisy_catalog, tmp_path):
    from mmsearch.management.commands.calibrate_tagger import seen_by_embedder

    data, held = noisy_catalog
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "heldout.jsonl").write_text(held.read_text())
    skus = {f"p{i}" for i in range(900)}
    assert seen_by_embedder(folder, [data], skus) == set()  # no card: nothing known
    (folder / "model_card.json").write_text(json.dumps({"data": {"files": [str(data)], "held_out_file": "heldout.jsonl"}}))
    seen = seen_by_embedder(folder, [data], skus)
    assert len(seen) == 810 and "p0" not in seen and "p1" in seen
    assert seen_by_embedder(folder, [held], skus) == set()  # a file the embedder never read
