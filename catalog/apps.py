from django.apps import AppConfig


class CatalogConfig(AppConfig):
    name = "catalog"
    verbose_name = "Catalog"

    def ready(self) -> None:
        from catalog import signals  # noqa: F401  (connects the search-vector and indexing hooks)
        from catalog import admin_quality  # noqa: F401  (the data-quality report; it builds on catalog.admin)
