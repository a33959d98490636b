from django import forms
from django.contrib import admin, messages
from django.core.files.uploadedfile import UploadedFile
from django.db.models import Q
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


def thumbnail(product: Product | None, height: int = 48) -> str:
    """The product's first image, small (the review screens decide by looking)."""
    image = product.images.all()[0] if product is not None and product.images.all() else None
    if image is None or not image.file:
        return "-"
    return format_html('<img src="{}" alt="{}" style="max-height:{}px;max-width:{}px">', image.file.url, product.title,
                       height, height * 2)


class CategoryTreeFilter(admin.SimpleListFilter):
    """A category filter that stays usable with hundreds of categories: the top level, then the children of the
    chosen one (a tree walked one level at a time) instead of a flat list of every path."""

    title = "category"
    parameter_name = "category_path"
    field = "category__path"

    def lookups(self, request, model_admin):
        chosen = self.value()
        if not chosen:
            return [(c.path, c.name) for c in Category.objects.filter(parent=None).order_by("name")]
        parent = chosen.rpartition("/")[0]
        rows = [(parent, f"↑ {parent}")] if parent else []
        rows.append((chosen, f"▸ {chosen.rsplit('/', 1)[-1]}"))
        return rows + [(c.path, f"   {c.name}") for c in Category.objects.filter(parent__path=chosen).order_by("name")]

    def queryset(self, request, queryset):
        value = self.value()
        if not value:
            return queryset
        return queryset.filter(Q(**{self.field: value}) | Q(**{f"{self.field}__startswith": value + "/"}))


def _start_tag_job(modeladmin, request, **selection) -> None:
    from mmsearch.indexing import JobError, start_tag_job

    try:
        job = start_tag_job(**selection)
    except JobError as exc:
        modeladmin.message_user(request, str(exc), messages.ERROR)
        return
    modeladmin.message_user(
        request, format_html('Tag job {} started for {} products: <a href="/admin/mmsearch/indexjob/{}/change/">'
                             "progress</a>, then review the suggestions under Product tags.", job.pk, job.total, job.pk),
        messages.SUCCESS,
    )


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ["image", "sku", "title", "category", "brand", "price", "currency", "active", "updated_at"]
    list_display_links = ["sku", "title"]
    list_filter = ["active", "currency", CategoryTreeFilter]
    search_fields = ["sku", "title", "brand", "description"]
    readonly_fields = ["created_at", "updated_at"]
    autocomplete_fields = ["category"]
    inlines = [ProductImageInline, ProductTagInline]
    list_select_related = ["category"]
    actions = ["suggest_tags"]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("images")

    @admin.display(description="image")
    def image(self, product: Product) -> str:
        return thumbnail(product)

    @admin.action(description="Suggest tags (a tag job; select all to tag the whole catalog)")
    def suggest_tags(self, request, queryset):
        _start_tag_job(self, request, skus=list(queryset.values_list("sku", flat=True)))


@admin.register(Category)
class CategoryAdmin(admin.ModelAdmin):
    list_display = ["path", "name", "parent"]
    search_fields = ["path", "name"]
    autocomplete_fields = ["parent"]
    actions = ["suggest_tags"]

    @admin.action(description="Suggest tags for the products in these categories (and below)")
    def suggest_tags(self, request, queryset):
        _start_tag_job(self, request, filters={"category": list(queryset.values_list("path", flat=True))})


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


class TagGroupForm(forms.ModelForm):
    class Meta:
        model = TagGroup
        fields = ["name", "slug", "description", "templates"]
        help_texts = {"templates": "comma-separated, each with {tag} (and optionally {group}), e.g. a photo of a {tag} "
                                   "pattern; empty: the defaults"}

    def clean_templates(self):
        from catalog.vocabulary import template_problem

        templates = self.cleaned_data.get("templates") or []
        for template in templates:
            problem = template_problem(template)
            if problem:
                raise forms.ValidationError(problem)
        return templates


@admin.register(TagGroup)
class TagGroupAdmin(admin.ModelAdmin):
    form = TagGroupForm
    list_display = ["name", "slug", "templates", "version"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}

    @admin.display(description="vocabulary version")
    def version(self, group: TagGroup) -> str:
        from catalog.vocabulary import vocabulary

        found = vocabulary([group.slug])
        return found[0].version if found else "- (fewer than 2 tags)"


@admin.register(Tag)
class TagAdmin(admin.ModelAdmin):
    list_display = ["name", "group", "slug", "synonyms"]
    list_filter = ["group"]
    search_fields = ["name", "slug", "synonyms"]


@admin.action(description="Accept selected tags")
def accept_tags(modeladmin, request, queryset):
    from catalog.tags import set_status

    modeladmin.message_user(request, f"{set_status(queryset, ProductTag.Status.ACCEPTED)} tags accepted")


@admin.action(description="Reject selected tags")
def reject_tags(modeladmin, request, queryset):
    from catalog.tags import set_status

    modeladmin.message_user(request, f"{set_status(queryset, ProductTag.Status.REJECTED)} tags rejected")


class ConfidenceFilter(admin.SimpleListFilter):
    title = "confidence"
    parameter_name = "confidence"
    RANGES = {"0.95-1": (0.95, 1.01), "0.8-0.95": (0.8, 0.95), "0.5-0.8": (0.5, 0.8), "0-0.5": (0.0, 0.5)}

    def lookups(self, request, model_admin):
        return [(k, f"{k.replace('-', ' – ')}") for k in self.RANGES]

    def queryset(self, request, queryset):
        if self.value() not in self.RANGES:
            return queryset
        low, high = self.RANGES[self.value()]
        return queryset.filter(score__gte=low, score__lt=high)


class ProductCategoryFilter(CategoryTreeFilter):
    field = "product__category__path"


@admin.register(ProductTag)
class ProductTagAdmin(admin.ModelAdmin):
    """The review queue: each suggestion with its product's picture, title and confidence; a page of them is
    accepted or rejected in one action."""

    list_display = ["image", "product_title", "tag", "confidence", "status", "source", "model_key"]
    list_display_links = ["product_title"]
    list_filter = ["status", "source", "tag__group", ConfidenceFilter, ProductCategoryFilter, "model_key"]
    search_fields = ["product__sku", "product__title", "tag__name", "tag__slug"]
    raw_id_fields = ["product"]
    autocomplete_fields = ["tag"]
    actions = [accept_tags, reject_tags]
    list_per_page = 50
    ordering = ["-score", "id"]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("product", "tag__group").prefetch_related("product__images")

    @admin.display(description="image")
    def image(self, pt: ProductTag) -> str:
        return thumbnail(pt.product, 64)

    @admin.display(description="product", ordering="product__title")
    def product_title(self, pt: ProductTag) -> str:
        return f"{pt.product.title} ({pt.product.sku})"

    @admin.display(description="confidence", ordering="score")
    def confidence(self, pt: ProductTag) -> str:
        return "-" if pt.score is None else f"{pt.score:.2f}"


from catalog.models import SearchSynonym  # noqa: E402 - the merchant's search synonyms (query understanding)


@admin.register(SearchSynonym)
class SearchSynonymAdmin(admin.ModelAdmin):
    """Shoppers' words for the catalog's values ('jumper' → article type Sweaters). Search reads an edit at its
    next request: no restart, no reindex."""

    list_display = ["phrase", "field", "value", "active", "note", "updated_at"]
    list_editable = ["active"]
    list_filter = ["active", "field"]
    search_fields = ["phrase", "value", "note"]
    fields = ["phrase", "field", "value", "active", "note"]
    ordering = ["phrase"]
