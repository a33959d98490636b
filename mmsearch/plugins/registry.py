"""Resolving an alias's BACKEND to a class and checking it statically (no instance, no weights).

BACKEND is the name of an entry point in the `mmsearch.plugins` group (third-party packages) or a dotted
path. Entry points are only listed by `discover()`; one is imported only when a setting names it.
The checks here are shared by the handler (mmsearch.plugins.build) and the Django system checks, so a
misconfiguration reads the same at start-up and at first use.
"""

from __future__ import annotations

import inspect
import threading
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from mmsearch.plugins.base import ROLE_PROTOCOLS

ENTRY_POINT_GROUP = "mmsearch.plugins"
# Keys an alias's settings entry may have; anything else is most likely a typo ("OPTION") that would
# silently drop options.
ALIAS_KEYS = ("BACKEND", "OPTIONS", "ROLE", "WARNING")


class PluginError(ImproperlyConfigured):
    """A model alias is missing, misconfigured or does not satisfy its role's Protocol."""

    def __init__(self, message: str, *, hint: str | None = None, check_id: str = "mmsearch.E000"):
        super().__init__(f"{message}. {hint}" if hint else message)
        self.message = message
        self.hint = hint
        self.check_id = check_id


_discovery_lock = threading.Lock()
_discovered: dict[str, metadata.EntryPoint] | None = None


def discover() -> dict[str, metadata.EntryPoint]:
    """Entry points of the `mmsearch.plugins` group by name (listed, not imported); cached per process."""
    global _discovered
    with _discovery_lock:
        if _discovered is None:
            _discovered = {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
        return dict(_discovered)


def reset_discovery() -> None:
    """Forget the discovered entry points (after installing a package, and in tests)."""
    global _discovered
    with _discovery_lock:
        _discovered = None


def entry_point_distribution(ep: metadata.EntryPoint) -> str:
    """'name version' of the distribution that declares `ep`, or '?' when unknown."""
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "?"
    return f"{dist.metadata['Name']} {dist.version}"


def import_backend(alias: str, backend: str) -> Any:
    """The object BACKEND names: an entry point of the plugin group first, else a dotted path."""
    ep = discover().get(backend)
    if ep is not None:
        try:
            return ep.load()
        except Exception as exc:  # a broken third-party package can fail in any way on import
            raise PluginError(
                f"MMSEARCH_MODELS[{alias!r}]['BACKEND'] = {backend!r} is the entry point {ep.value!r} "
                f"({entry_point_distribution(ep)}), which fails to load: {exc!r}",
                hint="reinstall or upgrade that package, or name another backend",
                check_id="mmsearch.E004",
            ) from exc
    if "." not in backend:
        known = ", ".join(sorted(discover())) or "none installed"
        raise PluginError(
            f"MMSEARCH_MODELS[{alias!r}]['BACKEND'] = {backend!r} is neither a dotted path nor an entry point "
            f"of the {ENTRY_POINT_GROUP!r} group (installed: {known})",
            hint="give a dotted path such as 'mmsearch.plugins.openclip.OpenClipEmbedder' or install the package "
            "that provides the entry point",
            check_id="mmsearch.E004",
        )
    try:
        return import_string(backend)
    except ImportError as exc:
        raise PluginError(
            f"MMSEARCH_MODELS[{alias!r}]['BACKEND'] = {backend!r} cannot be imported ({exc})",
            hint="check the dotted path and that its package is installed (`manage.py plugins` lists backends)",
            check_id="mmsearch.E004",
        ) from exc


def protocol_members(protocol: type) -> tuple[list[str], list[str]]:
    """(methods, data attributes) a Protocol requires; data attributes may be set per instance."""
    methods, attrs = [], []
    for klass in protocol.__mro__:
        if klass is object or klass.__name__ in ("Protocol", "Generic"):
            continue
        for name, value in vars(klass).items():
            if name.startswith("_"):
                continue
            (methods if inspect.isfunction(value) else attrs).append(name)
        attrs.extend(n for n in getattr(klass, "__annotations__", {}) if not n.startswith("_"))
    return sorted(set(methods)), sorted(set(attrs) - set(methods))


def missing_members(obj: Any, protocol: type) -> list[str]:
    """The Protocol members `obj` lacks, found without evaluating properties.

    isinstance() against a runtime Protocol calls hasattr() on Python 3.11, which would run lazy properties
    such as `dim` and load a model's weights just to check it.
    """
    methods, attrs = protocol_members(protocol)
    missing = []
    for name in methods:
        try:
            value = inspect.getattr_static(obj, name)
        except AttributeError:
            missing.append(name)
            continue
        if not callable(value) and not isinstance(value, (staticmethod, classmethod)):
            missing.append(name)
    for name in attrs:
        try:
            inspect.getattr_static(obj, name)
        except AttributeError:
            missing.append(name)
    return sorted(missing)


@dataclass(frozen=True)
class Resolved:
    alias: str
    role: str
    backend: str
    cls: type
    options: dict


def alias_role(alias: str, models: dict) -> str:
    """The role of `alias`: its 'ROLE' entry, or the alias itself when it names a role."""
    conf = models.get(alias)
    if conf is None:
        raise PluginError(
            f"MMSEARCH_MODELS has no alias {alias!r}; configured aliases: {', '.join(sorted(models)) or 'none'}",
            hint=f"add MMSEARCH_MODELS[{alias!r}] = {{'BACKEND': ..., 'OPTIONS': {{...}}}} to the settings",
            check_id="mmsearch.E001",
        )
    if not isinstance(conf, dict):
        raise PluginError(
            f"MMSEARCH_MODELS[{alias!r}] is a {type(conf).__name__}, not a dict",
            hint="write it as {'BACKEND': 'dotted.path.Class', 'OPTIONS': {...}}",
            check_id="mmsearch.E001",
        )
    unknown = sorted(set(conf) - set(ALIAS_KEYS))
    if unknown:
        raise PluginError(
            f"MMSEARCH_MODELS[{alias!r}] has unknown key(s) {', '.join(map(repr, unknown))}",
            hint=f"allowed keys are {', '.join(ALIAS_KEYS)}",
            check_id="mmsearch.E001",
        )
    role = conf.get("ROLE", alias)
    if role not in ROLE_PROTOCOLS:
        raise PluginError(
            f"MMSEARCH_MODELS[{alias!r}] has role {role!r}",
            hint=f"set 'ROLE' to one of {', '.join(ROLE_PROTOCOLS)} (the alias names the role when ROLE is absent)",
            check_id="mmsearch.E002",
        )
    return role


def check_options_fit(alias: str, backend: str, cls: type, options: dict) -> None:
    """Raise PluginError when OPTIONS do not bind to the backend's __init__ signature."""
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):  # some C-implemented classes have no introspectable signature
        return
    try:
        signature.bind(**options)
    except TypeError as exc:
        accepted = ", ".join(
            name for name, p in signature.parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        )
        raise PluginError(
            f"MMSEARCH_MODELS[{alias!r}]['OPTIONS'] do not fit {backend}: {exc}",
            hint=f"{cls.__name__} accepts: {accepted or 'no options'}",
            check_id="mmsearch.E006",
        ) from exc


def resolve(alias: str, models: dict) -> Resolved:
    """Check `alias` without instantiating it: role, BACKEND importable, class of that role, OPTIONS fit."""
    role = alias_role(alias, models)
    conf = models[alias]
    backend = conf.get("BACKEND")
    if not backend or not isinstance(backend, str):
        raise PluginError(
            f"MMSEARCH_MODELS[{alias!r}] has no 'BACKEND'",
            hint=f"give a dotted path to a {role} class or an entry-point name of the {ENTRY_POINT_GROUP!r} group",
            check_id="mmsearch.E003",
        )
    cls = import_backend(alias, backend)
    protocol = ROLE_PROTOCOLS[role]
    if not inspect.isclass(cls):
        raise PluginError(
            f"MMSEARCH_MODELS[{alias!r}]['BACKEND'] = {backend!r} is a {type(cls).__name__}, not a class",
            hint=f"point BACKEND at a class implementing {protocol.__name__}",
            check_id="mmsearch.E005",
        )
    methods, _ = protocol_members(protocol)
    missing = [name for name in methods if not callable(getattr(cls, name, None))]
    if missing:
        raise PluginError(
            f"{backend} (alias {alias!r}) is not a {role}: it lacks {', '.join(missing)}",
            hint=f"implement {protocol.__name__} ({', '.join(methods)}) or set the alias's ROLE to the role it has",
            check_id="mmsearch.E005",
        )
    options = conf.get("OPTIONS") or {}
    if not isinstance(options, dict):
        raise PluginError(
            f"MMSEARCH_MODELS[{alias!r}]['OPTIONS'] is a {type(options).__name__}, not a dict",
            hint="write OPTIONS as a dict of keyword arguments for the backend's constructor",
            check_id="mmsearch.E006",
        )
    check_options_fit(alias, backend, cls, options)
    return Resolved(alias=alias, role=role, backend=backend, cls=cls, options=dict(options))
