"""Third-party backends through the `mmsearch.plugins` entry-point group: listed always, run only when named.

A fake installed distribution is written as a real dist-info folder on sys.path, so discovery goes through
importlib.metadata exactly as for a pip-installed package.
"""

from __future__ import annotations

import sys
import textwrap
from io import StringIO

import pytest
from django.core.management import call_command
from django.test import override_settings

from mmsearch import plugins
from mmsearch.plugins.checks import check_models
from mmsearch.plugins.registry import discover

MODULE = "fake_mmsearch_vendor"


@pytest.fixture
def fake_distribution(tmp_path, monkeypatch):
    """Install 'fake-mmsearch-vendor 1.2' (two entry points, one broken) on sys.path for one test."""
    (tmp_path / f"{MODULE}.py").write_text(textwrap.dedent('''
        import numpy as np

        class VendorEmbedder:
            def __init__(self, dim=4):
                self.dim = dim
                self.model_key = f"vendor:{dim}"

            def embed_texts(self, texts):
                rows = np.ones((len(texts), self.dim), np.float32)
                return rows / np.sqrt(self.dim)

            def embed_images(self, images):
                return self.embed_texts(["x"] * len(images))
    '''))
    (tmp_path / f"{MODULE}_broken.py").write_text("raise RuntimeError('vendor bug at import')\n")
    dist_info = tmp_path / "fake_mmsearch_vendor-1.2.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-mmsearch-vendor\nVersion: 1.2\n")
    (dist_info / "entry_points.txt").write_text(
        "[mmsearch.plugins]\n"
        f"vendorclip = {MODULE}:VendorEmbedder\n"
        f"brokenclip = {MODULE}_broken:Nothing\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in (MODULE, f"{MODULE}_broken"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    plugins.reset()  # re-scan entry points with the new distribution visible
    yield
    plugins.reset()  # runs before monkeypatch restores sys.path: the next scan no longer sees it


def test_discovered_but_not_imported(fake_distribution):
    found = discover()
    assert found["vendorclip"].value == f"{MODULE}:VendorEmbedder"
    assert found["vendorclip"].dist.metadata["Name"] == "fake-mmsearch-vendor"
    assert MODULE not in sys.modules


def test_runs_only_when_settings_name_it(fake_distribution):
    with override_settings(MMSEARCH_MODELS={"embedder": {"BACKEND": "mmsearch.plugins.hashing.HashingEmbedder"}}):
        plugins.get_model("embedder")
        assert check_models() == []
    assert MODULE not in sys.modules
    with override_settings(MMSEARCH_MODELS={"embedder": {"BACKEND": "vendorclip", "OPTIONS": {"dim": 9}}}):
        assert check_models() == []
        model = plugins.get_model("embedder")
    assert MODULE in sys.modules
    assert model.model_key == "vendor:9" and model.embed_texts(["a"]).shape == (1, 9)


def test_broken_entry_point_names_alias_package_and_error(fake_distribution):
    with override_settings(MMSEARCH_MODELS={"embedder": {"BACKEND": "brokenclip"}}):
        with pytest.raises(plugins.PluginError) as info:
            plugins.get_model("embedder")
        (message,) = check_models()
    for text in ("'embedder'", "brokenclip", "fake-mmsearch-vendor 1.2", "vendor bug at import"):
        assert text in str(info.value)
    assert message.id == "mmsearch.E004" and "vendor bug at import" in message.msg


def test_manage_py_plugins_lists_aliases_and_entry_points(fake_distribution):
    models = {
        "embedder": {"BACKEND": "vendorclip", "OPTIONS": {"dim": 5}},
        "text_embedder": {"BACKEND": "mmsearch.plugins.hashing.HashingEmbedder", "OPTIONS": {"dim": 16},
                          "WARNING": "a stand-in, not a learned model"},
        "captioner": {"BACKEND": "mmsearch.plugins.nope.Nope"},
    }
    out = StringIO()
    with override_settings(MMSEARCH_MODELS=models):
        call_command("plugins", stdout=out, skip_checks=True)
    text = out.getvalue()
    assert "embedder" in text and "backend:   vendorclip (entry point fake_mmsearch_vendor:VendorEmbedder)" in text
    assert "model_key: vendor:5" in text
    assert "model_key: hashing:16:0" in text and "WARNING:   a stand-in, not a learned model" in text
    assert "error:" in text and "mmsearch.plugins.nope.Nope" in text  # one broken alias does not hide the rest
    assert "vendorclip = fake_mmsearch_vendor:VendorEmbedder  [fake-mmsearch-vendor 1.2] configured as embedder" in text
    assert ("brokenclip = fake_mmsearch_vendor_broken:Nothing  [fake-mmsearch-vendor 1.2] "
            "installed, not configured") in text


def test_manage_py_plugins_load_reports_sizes():
    out = StringIO()
    models = {"embedder": {"BACKEND": "mmsearch.plugins.hashing.HashingEmbedder", "OPTIONS": {"dim": 16}}}
    with override_settings(MMSEARCH_MODELS=models):
        call_command("plugins", "--load", stdout=out, skip_checks=True)
    assert "loaded:    dim 16, output 16" in out.getvalue()
