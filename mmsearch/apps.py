from django.apps import AppConfig


class MmsearchConfig(AppConfig):
    name = "mmsearch"
    verbose_name = "Search engine"

    def ready(self) -> None:
        # Registers the MMSEARCH_MODELS system checks (light: no torch, no weights).
        from mmsearch.plugins import checks  # noqa: F401
