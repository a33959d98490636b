from django import forms
from django.contrib import admin
from django.core.files.uploadedfile import UploadedFile
from django.utils.html import format_html

from mmsearch.images import ImageRejected, check_image, check_size
from catalog.storage import write_image_file
from catalog.models import Category, Product, ProductImage, ProductTag, Tag, TagGroup


class ProductImageForm(forms.ModelForm):
    """Runs an uploaded file through the same checks as the API and stores it by content (sha256)."""

    # A plain file field: mmsearch.images.check_image is the one judge of what is an acceptable image.
    file = forms.FileField(help_text="JPEG, PNG or WebP")

    class Meta:
        model = ProductImage
        fields = ["file", "position"]

    def clean_file(self):
        upload = self.cleaned_data.get("file")
        self._checked = None
        if isinstance(upload, UploadedFile):  # a new upload, not the file already stored
            try:
                check_size(upload.size)
                self._checked = check_image(upload.read())
            except ImageRejected as exc:
                raise forms.ValidationError(str(exc)) from exc
        return upload

    def clean(self):
        cleaned = super().clean()
        checked = getattr(self, "_checked", None)
        product_id = self.instance.product_id
        if checked and product_id and (
            ProductImage.objects.filter(product_id=product_id, sha256=checked.sha256).exclude(pk=self.instance.pk).exists()
        ):
            raise forms.ValidationError({"file": "the product already has this image"})
        return cleaned

    def save(self, commit=True):
        checked = getattr(self, "_checked", None)
        if checked:
            self.instance.sha256, self.instance.width, self.instance.height = checked.sha256, checked.width, checked.height
            # A stored name (not the raw upload), so the model's save does not write the file a second time.
            self.instance.file = write_image_file(checked)
        return super().save(commit)


class ProductImageInline(admin.TabularInline):
    model = ProductImage
    form = ProductImageForm
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
    form = ProductImageForm
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
