from django.apps import AppConfig


class MmsearchConfig(AppConfig):
    name = "mmsearch"
    verbose_name = "Search engine"

    def ready(self) -> None:
        # Registers the MMSEARCH_MODELS and photo-view system checks (light: no torch, no weights), and the
        # catalog_changed receiver that queues embedding work.
        from django.core import checks

        from mmsearch import indexing  # noqa: F401
        from mmsearch.plugins import checks as plugin_checks  # noqa: F401
        from mmsearch.search import config

        checks.register(config.check_settings, "mmsearch")
