from django.urls import path

from mmsearch.web import views

urlpatterns = [
    path("", views.home, name="home"),
    path("search", views.search_page, name="web-search"),
    path("search/photo", views.photo_upload, name="web-photo-search"),
    path("search/photo/<str:key>.jpg", views.query_photo, name="web-query-photo"),
    path("p/<sku:sku>", views.product_page, name="web-product"),
]
