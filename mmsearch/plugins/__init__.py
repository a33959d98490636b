"""Model plugins: settings-driven, built lazily once per process, checked against a Protocol per role.

    MMSEARCH_MODELS = {
        "embedder": {"BACKEND": "mmsearch.plugins.openclip.OpenClipEmbedder", "OPTIONS": {...}},
        ...
    }

`get_model(alias)` returns the built instance. An alias's role is its "ROLE" entry, or the alias itself when
it names a role (so a second embedder for a blue/green swap is {"ROLE": "embedder", "BACKEND": ...}).
"""

from __future__ import annotations

import threading
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from mmsearch.plugins.base import ROLE_PROTOCOLS


class PluginError(ImproperlyConfigured):
    """A model alias is missing, misconfigured or does not satisfy its role's Protocol."""


_lock = threading.Lock()
_instances: dict[str, Any] = {}


def model_settings() -> dict[str, dict]:
    return getattr(settings, "MMSEARCH_MODELS", {}) or {}


def alias_role(alias: str) -> str:
    conf = model_settings().get(alias)
    if conf is None:
        raise PluginError(
            f"MMSEARCH_MODELS has no alias {alias!r}; configured aliases: {', '.join(sorted(model_settings())) or 'none'}"
        )
    role = conf.get("ROLE", alias)
    if role not in ROLE_PROTOCOLS:
        raise PluginError(
            f"MMSEARCH_MODELS[{alias!r}] has role {role!r}; set 'ROLE' to one of {', '.join(ROLE_PROTOCOLS)}"
        )
    return role


def build(alias: str):
    """Construct the plugin for `alias` from BACKEND + OPTIONS (no caching; see get_model)."""
    role = alias_role(alias)
    conf = model_settings()[alias]
    backend = conf.get("BACKEND")
    if not backend:
        raise PluginError(f"MMSEARCH_MODELS[{alias!r}] has no 'BACKEND'; give a dotted path to a {role} class")
    try:
        cls = import_string(backend)
    except ImportError as exc:
        raise PluginError(
            f"MMSEARCH_MODELS[{alias!r}]['BACKEND'] = {backend!r} cannot be imported ({exc}); "
            "check the dotted path and that its package is installed"
        ) from exc
    try:
        instance = cls(**(conf.get("OPTIONS") or {}))
    except TypeError as exc:
        raise PluginError(f"MMSEARCH_MODELS[{alias!r}]['OPTIONS'] do not fit {backend}: {exc}") from exc
    protocol = ROLE_PROTOCOLS[role]
    if not isinstance(instance, protocol):
        missing = [
            name for name in ("model_key", *[m for m in dir(protocol) if not m.startswith("_")])
            if not hasattr(instance, name)
        ]
        raise PluginError(
            f"{backend} (alias {alias!r}) is not a {role}: it lacks {', '.join(sorted(set(missing)))}"
        )
    return instance


def get_model(alias: str):
    """The process-wide instance for `alias`, built on first use."""
    instance = _instances.get(alias)
    if instance is None:
        with _lock:
            instance = _instances.get(alias)
            if instance is None:
                instance = _instances[alias] = build(alias)
    return instance


def reset(alias: str | None = None) -> None:
    """Forget built instances (after a settings change, and in tests)."""
    with _lock:
        if alias is None:
            _instances.clear()
        else:
            _instances.pop(alias, None)
