"""Django system checks for settings.MMSEARCH_MODELS: every alias is validated at start-up, no weights loaded.

Registered from MmsearchConfig.ready(). For each alias: the role is known (E002), BACKEND is set (E003) and
importable (E004), it is a class with the role Protocol's methods (E005), OPTIONS bind to its __init__ (E006),
and the backend's own cheap option check passes (E007: values, local files). E001 flags a malformed entry;
W001 repeats an alias's WARNING (e.g. the HashingEmbedder fallback while no trained model exists).
"""

from __future__ import annotations

from django.core import checks

from mmsearch.plugins.registry import PluginError, resolve


@checks.register("mmsearch")
def check_models(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """One message per problem in settings.MMSEARCH_MODELS."""
    from mmsearch.plugins import model_settings

    models = model_settings()
    if not isinstance(models, dict):
        return [checks.Error(
            f"MMSEARCH_MODELS is a {type(models).__name__}, not a dict",
            hint="set MMSEARCH_MODELS = {'embedder': {'BACKEND': ..., 'OPTIONS': {...}}, ...}",
            id="mmsearch.E001",
        )]
    messages: list[checks.CheckMessage] = []
    for alias in models:
        messages.extend(check_alias(alias, models))
    return messages


def check_alias(alias: str, models: dict) -> list[checks.CheckMessage]:
    """The check messages for one alias."""
    messages: list[checks.CheckMessage] = []
    conf = models.get(alias)
    if isinstance(conf, dict) and conf.get("WARNING"):
        messages.append(checks.Warning(
            f"MMSEARCH_MODELS[{alias!r}]: {conf['WARNING']}",
            hint="see `manage.py plugins` and README 'Plugins'",
            id="mmsearch.W001",
        ))
    try:
        resolved = resolve(alias, models)
    except PluginError as exc:
        messages.append(checks.Error(exc.message, hint=exc.hint, id=exc.check_id))
        return messages
    check_options = getattr(resolved.cls, "check_options", None)
    if callable(check_options):
        try:
            problems = check_options(resolved.options)
        except Exception as exc:  # a third-party check must not take the whole start-up down
            problems = [f"its check_options() raised {exc!r}"]
        for problem in problems:
            messages.append(checks.Error(
                f"MMSEARCH_MODELS[{alias!r}] ({resolved.backend}) rejects its OPTIONS: {problem}",
                hint="fix that option (paths must exist on this machine; see README 'Plugins')",
                id="mmsearch.E007",
            ))
    return messages
