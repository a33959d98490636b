from django.contrib import admin
from django.utils.html import format_html

from catalog.models import Category, Product, ProductImage, ProductTag, Tag, TagGroup


class ProductImageInline(admin.TabularInline):
    model = ProductImage
    extra = 0
    fields = ["preview", "file", "position", "width", "height", "sha256"]
    readonly_fields = ["preview", "width", "height", "sha256"]

    @admin.display(description="image")
    def preview(self, image: ProductImage):
        return format_html('<img src="{}" alt="" style="max-height:80px">', image.file.url) if image.file else ""


class ProductTagInline(admin.TabularInline):
    model = ProductTag
    extra = 0
    autocomplete_fields = ["tag"]
    fields = ["tag", "source", "status", "score", "model_key"]


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ["sku", "title", "category", "brand", "price", "currency", "active", "updated_at"]
    list_filter = ["active", "currency", ("category", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["sku", "title", "brand", "description"]
    readonly_fields = ["created_at", "updated_at"]
    autocomplete_fields = ["category"]
    inlines = [ProductImageInline, ProductTagInline]
    list_select_related = ["category"]


@admin.register(Category)
class CategoryAdmin(admin.ModelAdmin):
    list_display = ["path", "name", "parent"]
    search_fields = ["path", "name"]
    autocomplete_fields = ["parent"]


@admin.register(ProductImage)
class ProductImageAdmin(admin.ModelAdmin):
    list_display = ["id", "product", "position", "width", "height", "sha256"]
    search_fields = ["product__sku", "sha256"]
    raw_id_fields = ["product"]
    readonly_fields = ["sha256", "width", "height"]

    def has_add_permission(self, request):
        # Images are added through the product page or the API, which validate the bytes.
        return False


@admin.register(TagGroup)
class TagGroupAdmin(admin.ModelAdmin):
    list_display = ["name", "slug"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}


@admin.register(Tag)
class TagAdmin(admin.ModelAdmin):
    list_display = ["name", "group", "slug", "synonyms"]
    list_filter = ["group"]
    search_fields = ["name", "slug", "synonyms"]


@admin.action(description="Accept selected tags")
def accept_tags(modeladmin, request, queryset):
    for pt in queryset:
        pt.status = ProductTag.Status.ACCEPTED
        pt.save(update_fields=["status", "updated_at"])


@admin.action(description="Reject selected tags")
def reject_tags(modeladmin, request, queryset):
    for pt in queryset:
        pt.status = ProductTag.Status.REJECTED
        pt.save(update_fields=["status", "updated_at"])


@admin.register(ProductTag)
class ProductTagAdmin(admin.ModelAdmin):
    list_display = ["product", "tag", "source", "status", "score", "model_key", "updated_at"]
    list_filter = ["status", "source", "tag__group", "model_key"]
    search_fields = ["product__sku", "product__title", "tag__name"]
    raw_id_fields = ["product"]
    autocomplete_fields = ["tag"]
    actions = [accept_tags, reject_tags]
