from django.urls import path

from qa import api, views

urlpatterns = [
    path("api/v1/products/<sku:sku>/ask", api.AskView.as_view(), name="product-ask"),
    path("p/<sku:sku>/ask", views.AskPageView.as_view(), name="web-product-ask"),
]
