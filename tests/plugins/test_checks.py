"""System checks for MMSEARCH_MODELS: every problem reported at start-up, naming alias, path and fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from mmsearch.plugins.checks import check_models

ROOT = Path(__file__).resolve().parents[2]
DUMMY = "tests.plugins.dummy.DummyEmbedder"
OPENCLIP = "mmsearch.plugins.openclip.OpenClipEmbedder"


def messages_for(models) -> dict[str, list[str]]:
    with override_settings(MMSEARCH_MODELS=models):
        found: dict[str, list[str]] = {}
        for message in check_models():
            found.setdefault(message.id, []).append(f"{message.msg} | {message.hint}")
    return found


def test_a_valid_configuration_passes(tiny_models):
    models = {
        "embedder": {"BACKEND": OPENCLIP, "OPTIONS": {"pretrained": f"local-dir:{tiny_models.openclip_folder(0)}"}},
        "text_embedder": {"BACKEND": "mmsearch.plugins.sentence.SentenceEmbedder"},
        "embedder_next": {"ROLE": "embedder", "BACKEND": DUMMY, "OPTIONS": {"dim": 4}},
    }
    assert messages_for(models) == {}


def test_every_broken_alias_is_reported_with_its_id():
    found = messages_for({
        "embedder": {"BACKEND": "mmsearch.plugins.nope.Nope"},
        "text_embedder": {"BACKEND": DUMMY, "OPTIONS": {"dims": 3}},
        "captioner": {"BACKEND": DUMMY},
        "ranker": {"BACKEND": DUMMY},
        "tagger": {"OPTIONS": {}},
        "answerer": {"BACKEND": DUMMY, "OPTION": {}},
        "embedder_b": {"ROLE": "embedder", "BACKEND": DUMMY, "OPTIONS": {"dim": 0}},
        "embedder_c": {"ROLE": "embedder", "BACKEND": "mmsearch.plugins.hashing.HashingEmbedder",
                       "OPTIONS": {"dim": 2}},
    })
    assert "'embedder'" in found["mmsearch.E004"][0] and "mmsearch.plugins.nope.Nope" in found["mmsearch.E004"][0]
    assert "'text_embedder'" in found["mmsearch.E006"][0] and "accepts: dim, salt" in found["mmsearch.E006"][0]
    assert "'captioner'" in found["mmsearch.E005"][0] and "caption" in found["mmsearch.E005"][0]
    assert "'ranker'" in found["mmsearch.E002"][0]
    assert "'tagger'" in found["mmsearch.E003"][0]
    assert "'OPTION'" in found["mmsearch.E001"][0]
    assert "'embedder_b'" in found["mmsearch.E007"][0] and "dim=0" in found["mmsearch.E007"][0]
    assert "'embedder_c'" in found["mmsearch.E007"][1] and "dim=2" in found["mmsearch.E007"][1]


def test_missing_local_weights_are_reported_without_loading_anything(tmp_path):
    missing = tmp_path / "no-such-model"
    found = messages_for({"embedder": {"BACKEND": OPENCLIP, "OPTIONS": {"pretrained": f"local-dir:{missing}"}}})
    (message,) = found["mmsearch.E007"]
    assert "'embedder'" in message and str(missing) in message and OPENCLIP in message


def test_folder_without_weights_is_reported(tmp_path):
    folder = tmp_path / "half-written"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"embed_dim": 4}}))
    (message,) = messages_for({"embedder": {"BACKEND": OPENCLIP, "OPTIONS": {"pretrained": str(folder)}}})[
        "mmsearch.E007"]
    assert "open_clip_model.safetensors" in message


def test_bad_option_values_of_builtin_backends():
    found = messages_for({
        "embedder": {"BACKEND": OPENCLIP, "OPTIONS": {"pretrained": "laion2b_s34b_b79k", "device": "gpu"}},
        "text_embedder": {"BACKEND": "mmsearch.plugins.sentence.SentenceEmbedder", "OPTIONS": {"precision": "int3"}},
    })
    assert any("device='gpu'" in m for m in found["mmsearch.E007"])
    assert any("precision='int3'" in m for m in found["mmsearch.E007"])


def test_random_weights_are_refused():
    (message,) = messages_for({"embedder": {"BACKEND": OPENCLIP, "OPTIONS": {"model": "ViT-B-32"}}})["mmsearch.E007"]
    assert "pretrained is not set" in message and "local-dir:" in message


def test_warning_entry_becomes_a_system_check_warning():
    found = messages_for({"embedder": {"BACKEND": DUMMY, "WARNING": "a stand-in, not a learned model"}})
    assert list(found) == ["mmsearch.W001"] and "a stand-in" in found["mmsearch.W001"][0]


def test_manage_py_check_fails_on_errors():
    with override_settings(MMSEARCH_MODELS={"embedder": {"BACKEND": "mmsearch.plugins.nope.Nope"}}):
        with pytest.raises(SystemCheckError, match=r"mmsearch\.E004"):
            call_command("check")


def run_fresh(env_extra: dict) -> dict:
    """Start-up in a fresh interpreter: default settings, system checks, which heavy modules got imported."""
    code = (
        "import json, sys, django; django.setup()\n"
        "from django.conf import settings\n"
        "from django.core.checks import run_checks\n"
        "ids = [m.id for m in run_checks()]\n"
        "heavy = [m for m in ('torch', 'open_clip', 'transformers', 'sentence_transformers') if m in sys.modules]\n"
        "print(json.dumps({'ids': ids, 'heavy': heavy, 'models': settings.MMSEARCH_MODELS}))\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "mmsearch.settings", **env_extra}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_default_settings_use_the_trained_model_folder_without_loading_it(tiny_models):
    folder = tiny_models.openclip_folder(0)
    result = run_fresh({"MMSEARCH_EMBEDDER_PATH": str(folder)})
    embedder = result["models"]["embedder"]
    assert embedder["BACKEND"] == OPENCLIP and embedder["OPTIONS"]["pretrained"] == f"local-dir:{folder}"
    assert result["models"]["text_embedder"]["BACKEND"] == "mmsearch.plugins.sentence.SentenceEmbedder"
    assert not [i for i in result["ids"] if i.startswith("mmsearch.")]
    assert result["heavy"] == []  # start-up and checks import no torch, open_clip or transformers


def test_default_settings_fall_back_to_hashing_only_without_a_folder(tmp_path):
    result = run_fresh({"MMSEARCH_EMBEDDER_PATH": str(tmp_path / "not-trained-yet")})
    embedder = result["models"]["embedder"]
    assert embedder["BACKEND"] == "mmsearch.plugins.hashing.HashingEmbedder"
    assert "not-trained-yet" in embedder["WARNING"] and "train_embedder" in embedder["WARNING"]
    assert "mmsearch.W001" in result["ids"]
