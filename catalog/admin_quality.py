"""The data-quality report in the admin: products whose text does not match their images, worst first.

Rows are MatchScore rows (`manage.py match_report ... --store`); a reviewer looks at the image, the title, the
score and the caption the captioner proposes, and acts on a selection: mark reviewed, accept the proposed
caption as the title, or deactivate the products (catalog.quality holds the operations)."""

from __future__ import annotations

from django.contrib import admin, messages
from django.utils.html import format_html

from catalog import quality
from catalog.admin import ProductCategoryFilter, thumbnail
from catalog.models import MatchScore


@admin.register(MatchScore)
class MatchScoreAdmin(admin.ModelAdmin):
    list_display = ["image", "product_title", "category", "match", "caption", "reviewed", "on_sale", "model_key"]
    list_display_links = ["product_title"]
    list_filter = ["reviewed", ProductCategoryFilter, "product__active", "model_key"]
    search_fields = ["product__sku", "product__title", "caption"]
    ordering = ["score", "id"]
    list_per_page = 50
    actions = ["mark_reviewed", "accept_caption", "deactivate"]
    fields = ["product", "score", "model_key", "caption", "caption_model_key", "reviewed", "previous_title",
              "created_at", "updated_at"]
    readonly_fields = ["product", "score", "model_key", "caption", "caption_model_key", "previous_title", "created_at",
                       "updated_at"]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("product__category").prefetch_related("product__images")

    def has_add_permission(self, request) -> bool:
        return False  # scores come from `manage.py match_report --store`

    @admin.display(description="image")
    def image(self, ms: MatchScore) -> str:
        return thumbnail(ms.product, 64)

    @admin.display(description="product", ordering="product__title")
    def product_title(self, ms: MatchScore) -> str:
        return format_html("{}<br><small>{}</small>", ms.product.title, ms.product.sku)

    @admin.display(description="category", ordering="product__category__path")
    def category(self, ms: MatchScore) -> str:
        return ms.product.category.path if ms.product.category_id else "-"

    @admin.display(description="score (low = mismatch)", ordering="score")
    def match(self, ms: MatchScore) -> str:
        return f"{ms.score:.3f}"

    @admin.display(description="on sale", boolean=True, ordering="product__active")
    def on_sale(self, ms: MatchScore) -> bool:
        return ms.product.active

    @admin.action(description="Mark reviewed")
    def mark_reviewed(self, request, queryset):
        self.message_user(request, f"{quality.mark_reviewed(queryset)} scores marked reviewed")

    @admin.action(description="Accept the proposed caption as the title")
    def accept_caption(self, request, queryset):
        changed = quality.accept_caption(queryset)
        level = messages.SUCCESS if changed else messages.WARNING
        self.message_user(request, f"{changed} products retitled with their proposed caption "
                                   "(rows without a caption are left alone)", level)

    @admin.action(description="Deactivate the products (off sale)")
    def deactivate(self, request, queryset):
        self.message_user(request, f"{quality.deactivate(queryset)} products deactivated")
