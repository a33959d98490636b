from django.apps import AppConfig


class MmsearchConfig(AppConfig):
    name = "mmsearch"
    verbose_name = "Search engine"
