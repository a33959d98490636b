"""Model plugins: settings-driven, built lazily once per process, checked against a Protocol per role.

    MMSEARCH_MODELS = {
        "embedder": {"BACKEND": "mmsearch.plugins.openclip.OpenClipEmbedder", "OPTIONS": {...}},
        ...
    }

`get_model(alias)` returns the built instance. An alias's role is its "ROLE" entry, or the alias itself when
it names a role (so a second embedder for a blue/green swap is {"ROLE": "embedder", "BACKEND": ...}).
BACKEND is a dotted path or the name of an entry point in the `mmsearch.plugins` group (see registry.py).
An optional "WARNING" entry is shown by `manage.py plugins` and the system checks (used for fallbacks).
"""

from __future__ import annotations

import threading
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from mmsearch.plugins.base import ROLE_PROTOCOLS
from mmsearch.plugins.registry import PluginError, missing_members, reset_discovery, resolve
from mmsearch.plugins.registry import alias_role as _alias_role

__all__ = ["PluginError", "alias_role", "build", "get_model", "model_settings", "reset"]

_lock = threading.Lock()
_instances: dict[str, Any] = {}


def model_settings() -> dict[str, dict]:
    """settings.MMSEARCH_MODELS, or {} when unset."""
    return getattr(settings, "MMSEARCH_MODELS", {}) or {}


def alias_role(alias: str) -> str:
    """The role of a configured alias (raises PluginError for unknown aliases and roles)."""
    return _alias_role(alias, model_settings())


def build(alias: str):
    """Construct the plugin for `alias` from BACKEND + OPTIONS (no caching; see get_model)."""
    r = resolve(alias, model_settings())
    try:
        instance = r.cls(**r.options)
    except TypeError as exc:
        raise PluginError(
            f"MMSEARCH_MODELS[{alias!r}]['OPTIONS'] do not fit {r.backend}: {exc}",
            hint="fix the option names and types (`manage.py check` lists the accepted options)",
            check_id="mmsearch.E006",
        ) from exc
    except (ValueError, OSError) as exc:
        # Built-in backends validate their options (values, local paths) in the constructor.
        raise PluginError(
            f"MMSEARCH_MODELS[{alias!r}] ({r.backend}) rejects its OPTIONS: {exc}",
            hint="fix the option value named above",
            check_id="mmsearch.E007",
        ) from exc
    protocol = ROLE_PROTOCOLS[r.role]
    missing = missing_members(instance, protocol)
    if missing:
        raise PluginError(
            f"{r.backend} (alias {alias!r}) is not a {r.role}: it lacks {', '.join(missing)}",
            hint=f"implement {protocol.__name__} or set the alias's ROLE to the role it has",
            check_id="mmsearch.E005",
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
    """Forget built instances (after a settings change, and in tests); a full reset re-scans entry points."""
    with _lock:
        if alias is None:
            _instances.clear()
            reset_discovery()
        else:
            _instances.pop(alias, None)


@receiver(setting_changed)
def _models_setting_changed(setting: str, **kwargs) -> None:
    # override_settings(MMSEARCH_MODELS=...) must not keep serving instances built from the old value.
    if setting == "MMSEARCH_MODELS":
        reset()
