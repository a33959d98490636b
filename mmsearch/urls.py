from django.conf import settings
from django.contrib import admin
from django.urls import include, path, register_converter
from django.views.static import serve
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from mmsearch import views
from mmsearch.search import api as search_api
from mmsearch.validation import SkuConverter

register_converter(SkuConverter, "sku")  # before the included URLconfs that use it

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("admin/", admin.site.urls),
    # Search routes come before the catalog router so /products/<sku>/similar is not taken as a product action.
    path("api/v1/search", search_api.SearchView.as_view(), name="search"),
    path("api/v1/search/image", search_api.ImageSearchView.as_view(), name="search-image"),
    path("api/v1/products/<sku:sku>/similar", search_api.SimilarView.as_view(), name="product-similar"),
    path("", include("qa.urls")),  # POST /api/v1/products/<sku>/ask and the product page's question box
    path("api/v1/", include("mmsearch.api")),  # index-jobs (staff only)
    path("api/v1/", include("catalog.api.urls")),
    path("api/v1/auth/token", views.ThrottledAuthToken.as_view(), name="api-token"),
    path("api/v1/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/v1/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    # Shopper pages: home ("/"), search results, photo search, product pages.
    path("", include("mmsearch.web.urls")),
]

if settings.SERVE_MEDIA:
    # Development and demo only; production serves MEDIA_ROOT from the web server or object storage.
    urlpatterns.append(path(f"{settings.MEDIA_URL.strip('/')}/<path:path>", serve, {"document_root": settings.MEDIA_ROOT}))
