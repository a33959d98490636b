"""A local model's model_key names what it computes (weights + config), not where its folder is."""

from __future__ import annotations

import json
import shutil

import pytest

from mmsearch.plugins.hfclip import HFClipEmbedder
from mmsearch.plugins.openclip import OpenClipEmbedder
from mmsearch.plugins.sentence import SentenceEmbedder

CASES = {
    "openclip": (lambda tm: tm.openclip_folder(0), "open_clip_config.json", lambda p: OpenClipEmbedder(pretrained=str(p))),
    "hfclip": (lambda tm: tm.hf_clip(0), "config.json", lambda p: HFClipEmbedder(str(p))),
    "sentence": (lambda tm: tm.sentence_folder(0), "config.json", lambda p: SentenceEmbedder(str(p))),
}


@pytest.mark.parametrize("backend", sorted(CASES))
def test_renamed_folder_keeps_its_key_and_an_edited_config_changes_it(backend, tiny_models, tmp_path):
    folder_of, config_name, build = CASES[backend]
    original = folder_of(tiny_models)
    renamed = shutil.copytree(original, tmp_path / "another-name")
    assert build(renamed).model_key == build(original).model_key
    # Reformatting a JSON config is not a change; changing a value is.
    config = json.loads((renamed / config_name).read_text())
    (renamed / config_name).write_text(json.dumps(config, indent=7))
    assert build(renamed).model_key == build(original).model_key
    config["mmsearch_test_edit"] = 1
    (renamed / config_name).write_text(json.dumps(config))
    assert build(renamed).model_key != build(original).model_key
    # The folder's earlier key (name + weights hash) is kept for re-keying stored vectors.
    assert build(original).legacy_model_keys[0].split(":")[1] == original.name
