"""The settings-driven handler: aliases, roles, BACKEND, OPTIONS, caching; errors name the alias and the fix."""

from __future__ import annotations

import numpy as np
import pytest
from django.test import override_settings

from mmsearch import plugins
from mmsearch.plugins import PluginError
from tests.plugins.dummy import DummyEmbedder

DUMMY = "tests.plugins.dummy.DummyEmbedder"


def error_for(models: dict, alias: str) -> PluginError:
    with override_settings(MMSEARCH_MODELS=models):
        with pytest.raises(PluginError) as info:
            plugins.get_model(alias)
    return info.value


def test_dummy_plugin_is_built_from_settings_once_per_process():
    before = DummyEmbedder.built
    with override_settings(MMSEARCH_MODELS={"embedder": {"BACKEND": DUMMY, "OPTIONS": {"dim": 6}}}):
        model = plugins.get_model("embedder")
        assert plugins.get_model("embedder") is model
        assert DummyEmbedder.built == before + 1
        assert model.model_key == "dummy:6:plain"
        assert model.embed_texts(["a", "b"]).shape == (2, 6)
        plugins.reset("embedder")
        assert plugins.get_model("embedder") is not model


def test_second_alias_of_a_role_for_blue_green():
    models = {
        "embedder": {"BACKEND": DUMMY},
        "embedder_next": {"ROLE": "embedder", "BACKEND": DUMMY, "OPTIONS": {"salt": "v2"}},
    }
    with override_settings(MMSEARCH_MODELS=models):
        assert plugins.alias_role("embedder_next") == "embedder"
        old, new = plugins.get_model("embedder"), plugins.get_model("embedder_next")
    assert old.model_key != new.model_key
    assert not np.allclose(old.embed_texts(["x"]), new.embed_texts(["x"]))


def test_missing_alias_lists_the_configured_ones():
    err = error_for({"embedder": {"BACKEND": DUMMY}}, "captioner")
    assert "'captioner'" in str(err) and "embedder" in str(err)
    assert err.check_id == "mmsearch.E001"


def test_bad_backend_path_names_alias_and_path():
    err = error_for({"embedder": {"BACKEND": "mmsearch.plugins.nope.NopeEmbedder"}}, "embedder")
    assert "'embedder'" in str(err) and "mmsearch.plugins.nope.NopeEmbedder" in str(err)
    assert "installed" in str(err)  # the fix
    assert err.check_id == "mmsearch.E004"


def test_backend_that_is_neither_a_path_nor_an_entry_point():
    err = error_for({"embedder": {"BACKEND": "no_such_plugin"}}, "embedder")
    assert "'no_such_plugin'" in str(err) and "entry point" in str(err)
    assert err.check_id == "mmsearch.E004"


def test_missing_backend():
    err = error_for({"embedder": {"OPTIONS": {}}}, "embedder")
    assert "no 'BACKEND'" in str(err) and err.check_id == "mmsearch.E003"


def test_wrong_role_names_the_missing_method():
    err = error_for({"embedder": {"BACKEND": "tests.plugins.dummy.DummyTextEmbedder"}}, "embedder")
    assert "'embedder'" in str(err) and "embed_images" in str(err)
    assert err.check_id == "mmsearch.E005"
    # the same class is a fine text_embedder
    with override_settings(MMSEARCH_MODELS={"text_embedder": {"BACKEND": "tests.plugins.dummy.DummyTextEmbedder"}}):
        assert plugins.get_model("text_embedder").embed_texts(["x"]).shape == (1, 4)


def test_backend_that_is_not_a_class():
    err = error_for({"embedder": {"BACKEND": "tests.plugins.dummy.not_a_class"}}, "embedder")
    assert "not a class" in str(err) and err.check_id == "mmsearch.E005"


def test_instance_without_model_key():
    err = error_for({"embedder": {"BACKEND": "tests.plugins.dummy.KeylessEmbedder"}}, "embedder")
    assert "model_key" in str(err) and err.check_id == "mmsearch.E005"


def test_unknown_role():
    err = error_for({"ranker": {"BACKEND": DUMMY}}, "ranker")
    assert "'ranker'" in str(err) and "ROLE" in str(err) and err.check_id == "mmsearch.E002"


def test_options_that_do_not_fit_the_constructor():
    err = error_for({"embedder": {"BACKEND": DUMMY, "OPTIONS": {"dims": 6}}}, "embedder")
    assert "'embedder'" in str(err) and "dims" in str(err)
    assert "accepts: dim, salt" in str(err)  # the fix: what it does accept
    assert err.check_id == "mmsearch.E006"


def test_option_values_the_backend_rejects():
    err = error_for({"embedder": {"BACKEND": DUMMY, "OPTIONS": {"dim": 1}}}, "embedder")
    assert "'embedder'" in str(err) and "dim=1" in str(err) and err.check_id == "mmsearch.E007"


def test_typo_in_an_alias_key_is_not_silently_ignored():
    err = error_for({"embedder": {"BACKEND": DUMMY, "OPTION": {"dim": 6}}}, "embedder")
    assert "'OPTION'" in str(err) and "OPTIONS" in str(err) and err.check_id == "mmsearch.E001"


def test_build_does_not_load_weights(tiny_models):
    folder = tiny_models.openclip_folder(0)
    conf = {"BACKEND": "mmsearch.plugins.openclip.OpenClipEmbedder", "OPTIONS": {"pretrained": str(folder)}}
    with override_settings(MMSEARCH_MODELS={"embedder": conf}):
        model = plugins.get_model("embedder")
    assert not model.loaded
    assert model.model_key.startswith("openclip:local:") and model.dim == 16
    assert not model.loaded  # identity and size come from files, not from the network
    model.embed_texts(["x"])
    assert model.loaded


def test_concurrent_first_use_builds_and_loads_once(tiny_models):
    """Worker and web threads racing on the first request get one instance with one set of weights."""
    from concurrent.futures import ThreadPoolExecutor

    from mmsearch.plugins.openclip import OpenClipEmbedder

    class CountingEmbedder(OpenClipEmbedder):
        loads = 0

        def _load(self):
            type(self).loads += 1
            super()._load()

    before = DummyEmbedder.built
    with override_settings(MMSEARCH_MODELS={"embedder": {"BACKEND": DUMMY}}):
        with ThreadPoolExecutor(8) as pool:
            instances = list(pool.map(lambda _: plugins.get_model("embedder"), range(16)))
    assert len({id(i) for i in instances}) == 1 and DummyEmbedder.built == before + 1

    model = CountingEmbedder(pretrained=str(tiny_models.openclip_folder(0)))
    with ThreadPoolExecutor(4) as pool:
        rows = list(pool.map(lambda text: model.embed_texts([text]), ["a", "b", "a", "b"]))
    assert CountingEmbedder.loads == 1
    np.testing.assert_allclose(rows[0], rows[2], atol=1e-6)
