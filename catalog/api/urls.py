from rest_framework.routers import DefaultRouter

from catalog.api import quality, views

router = DefaultRouter()
# Both /products/sku and /products/sku/ work (DRF's constructor only knows "/" or ""), so scripts that drop
# the slash are not redirected, and a POST without it does not fail.
router.trailing_slash = "/?"
router.register("products", views.ProductViewSet, basename="product")
router.register("categories", views.CategoryViewSet, basename="category")
router.register("tag-groups", views.TagGroupViewSet, basename="taggroup")
router.register("tags", views.TagViewSet, basename="tag")
router.register("product-tags", views.ProductTagViewSet, basename="producttag")
router.register("match-scores", quality.MatchScoreViewSet, basename="matchscore")  # the data-quality report
router.register("captions", views.CaptionViewSet, basename="caption")

urlpatterns = router.urls
