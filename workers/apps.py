from django.apps import AppConfig


class WorkersConfig(AppConfig):
    name = "workers"
    verbose_name = "Embedding workers"

    def ready(self) -> None:
        from workers import signals  # noqa: F401  (connects the catalog_changed receiver)
