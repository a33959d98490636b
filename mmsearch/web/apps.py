from django.apps import AppConfig


class WebConfig(AppConfig):
    name = "mmsearch.web"
    label = "mmsearch_web"
    verbose_name = "Shopper web pages"
