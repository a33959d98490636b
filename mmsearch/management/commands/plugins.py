"""`manage.py plugins`: the configured model aliases and the installed third-party plugin entry points."""

from __future__ import annotations

import time

from django.core.management.base import BaseCommand

from mmsearch import plugins
from mmsearch.plugins.registry import ENTRY_POINT_GROUP, PluginError, discover, entry_point_distribution


class Command(BaseCommand):
    help = (
        "List settings.MMSEARCH_MODELS (alias, role, backend, model_key) and the backends installed through "
        f"the {ENTRY_POINT_GROUP!r} entry-point group. Weights are not loaded unless --load is given."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--load", action="store_true",
            help="also load each model and report its vector size and load time (slow for large models)",
        )

    def handle(self, *args, load: bool = False, **options) -> None:
        models = plugins.model_settings()
        plugins.reset()  # a fresh scan of entry points and fresh instances for what this command reports
        eps = discover()
        self.stdout.write(f"Configured models (settings.MMSEARCH_MODELS): {len(models)}")
        named = {}
        for alias, conf in models.items():
            backend = conf.get("BACKEND", "?") if isinstance(conf, dict) else "?"
            named.setdefault(backend, []).append(alias)
            self.stdout.write(f"  {alias}")
            try:
                role = plugins.alias_role(alias)
            except PluginError as exc:
                self.stdout.write(self.style.ERROR(f"    error: {exc}"))
                continue
            origin = f"entry point {eps[backend].value}" if backend in eps else "dotted path"
            self.stdout.write(f"    role:      {role}")
            self.stdout.write(f"    backend:   {backend} ({origin})")
            if conf.get("WARNING"):
                self.stdout.write(self.style.WARNING(f"    WARNING:   {conf['WARNING']}"))
            try:
                # Built-in constructors only store options, so this reads identities without loading weights.
                instance = plugins.build(alias)
                self.stdout.write(f"    model_key: {instance.model_key}")
                describe = getattr(instance, "describe", None)
                if callable(describe):
                    for key, value in describe().items():
                        self.stdout.write(f"    {key + ':':<10} {value}")
                if load:
                    started = time.perf_counter()
                    dim = instance.dim
                    vector = instance.embed_texts(["a test query"])
                    self.stdout.write(
                        f"    loaded:    dim {dim}, output {vector.shape[1]}, "
                        f"{time.perf_counter() - started:.1f}s to load and embed one text"
                    )
            except Exception as exc:  # report every alias, not just the first broken one
                self.stdout.write(self.style.ERROR(f"    error: {exc}"))
        self.stdout.write(f"Entry points (group {ENTRY_POINT_GROUP!r}): {len(eps)}")
        if not eps:
            self.stdout.write("  none installed")
        for name, ep in sorted(eps.items()):
            used = named.get(name)
            state = f"configured as {', '.join(used)}" if used else "installed, not configured (not loaded)"
            self.stdout.write(f"  {name} = {ep.value}  [{entry_point_distribution(ep)}] {state}")
