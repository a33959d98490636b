from django import forms
from django.contrib import admin, messages
from django.core.files.uploadedfile import UploadedFile
from django.db.models import Q
from django.utils.html import format_html

from mmsearch.images import ImageRejected, check_image, check_size
from catalog.storage import write_image_file
from catalog.models import Caption, Category, Product, ProductImage, ProductTag, ReviewStatus, Tag, TagGroup


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


def thumbnail(product: Product | None, height: int = 48, image: ProductImage | None = None) -> str:
    """`image` (default: the product's first image), small (the review screens decide by looking)."""
    if image is None:
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


def _start_product_job(modeladmin, request, what: str, **selection) -> None:
    """Start a tag job (what="tags") or a caption job (what="captions") for the selection, saying where to follow
    it and where to review what it suggests."""
    from mmsearch.indexing import JobError, start_caption_job, start_tag_job

    start, noun, review = {
        "tags": (start_tag_job, "Tag", "Product tags"),
        "captions": (start_caption_job, "Caption", "Captions"),
    }[what]
    try:
        job = start(**selection)
    except JobError as exc:
        modeladmin.message_user(request, str(exc), messages.ERROR)
        return
    modeladmin.message_user(
        request, format_html('{} job {} started for {} products: <a href="/admin/mmsearch/indexjob/{}/change/">'
                             "progress</a>, then review the suggestions under {}.", noun, job.pk, job.total, job.pk,
                             review),
        messages.SUCCESS,
    )




@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ["image", "sku", "title", "category", "brand", "price", "currency", "active", "updated_at"]
    list_display_links = ["sku", "title"]
    list_filter = ["active", "currency", CategoryTreeFilter]
    search_fields = ["sku", "title", "brand", "description"]
    readonly_fields = ["created_at", "updated_at", "captions"]
    autocomplete_fields = ["category"]
    inlines = [ProductImageInline, ProductTagInline]
    list_select_related = ["category"]
    actions = ["suggest_tags", "suggest_captions"]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("images")

    @admin.display(description="image")
    def image(self, product: Product) -> str:
        return thumbnail(product)

    @admin.display(description="captions")
    def captions(self, product: Product) -> str:
        """The product's captions with their status, and a link to review them (Captions)."""
        from django.utils.html import format_html_join

        rows = product.captions.order_by("image__position", "id").values_list("text", "status") if product.pk else []
        if not rows:
            return "-"
        return format_html(
            '<ul style="margin:0;padding-left:1em">{}</ul><a href="/admin/catalog/caption/?q={}">'
            "review</a>", format_html_join("", "<li>{} ({})</li>", rows), product.sku,
        )

    @admin.action(description="Suggest tags (a tag job; select all to tag the whole catalog)")
    def suggest_tags(self, request, queryset):
        _start_product_job(self, request, "tags", skus=list(queryset.values_list("sku", flat=True)))

    @admin.action(description="Suggest captions (a caption job; select all to caption the whole catalog)")
    def suggest_captions(self, request, queryset):
        _start_product_job(self, request, "captions", skus=list(queryset.values_list("sku", flat=True)))


@admin.register(Category)
class CategoryAdmin(admin.ModelAdmin):
    list_display = ["path", "name", "parent"]
    search_fields = ["path", "name"]
    autocomplete_fields = ["parent"]
    actions = ["suggest_tags", "suggest_captions"]

    @admin.action(description="Suggest tags for the products in these categories (and below)")
    def suggest_tags(self, request, queryset):
        _start_product_job(self, request, "tags", filters={"category": list(queryset.values_list("path", flat=True))})

    @admin.action(description="Suggest captions for the products in these categories (and below)")
    def suggest_captions(self, request, queryset):
        _start_product_job(self, request, "captions",
                           filters={"category": list(queryset.values_list("path", flat=True))})


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


def review_action(status: str, noun: str):
    """An admin action that accepts or rejects the selected suggestions (tags or captions) in one update."""

    def act(modeladmin, request, queryset):
        from catalog.review import set_status

        modeladmin.message_user(request, f"{set_status(queryset, status)} {noun} {status}")

    verb = "Accept" if status == ReviewStatus.ACCEPTED else "Reject"
    act.__name__ = f"{verb.lower()}_{noun}"
    return admin.action(description=f"{verb} selected {noun}")(act)


accept_tags, reject_tags = review_action(ReviewStatus.ACCEPTED, "tags"), review_action(ReviewStatus.REJECTED, "tags")


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


class CaptionScoreFilter(ConfidenceFilter):
    """Caption scores are image-text cosine similarities (-1..1), not probabilities: their own ranges."""

    title = "score"
    parameter_name = "score"
    RANGES = {"0.3-1": (0.3, 1.01), "0.2-0.3": (0.2, 0.3), "0.1-0.2": (0.1, 0.2), "-1-0.1": (-1.01, 0.1)}


class CaptionForm(forms.ModelForm):
    class Meta:
        model = Caption
        fields = ["text", "status"]

    def clean_text(self):
        from catalog.captions import clean_caption
        from mmsearch.validation import BadText

        try:
            return clean_caption(self.cleaned_data.get("text"))
        except BadText as exc:
            raise forms.ValidationError(exc.problem) from None


@admin.register(Caption)
class CaptionAdmin(admin.ModelAdmin):
    """The caption review list: each caption beside its image, the embedder's score, and the text editable in the
    list (saving an edit accepts the caption as edited); a page of them is accepted or rejected in one action."""

    form = CaptionForm
    list_display = ["image", "product_title", "text", "score_shown", "status", "edited", "model_key"]
    list_display_links = ["product_title"]
    list_editable = ["text"]
    list_filter = ["status", "edited", CaptionScoreFilter, ProductCategoryFilter, "model_key"]
    search_fields = ["product__sku", "product__title", "text"]
    raw_id_fields = ["product", "image"]
    readonly_fields = ["product", "image", "model_key", "score", "edited", "created_at", "updated_at"]
    actions = [review_action(ReviewStatus.ACCEPTED, "captions"), review_action(ReviewStatus.REJECTED, "captions")]
    list_per_page = 50
    ordering = ["-score", "id"]

    def has_add_permission(self, request):
        return False  # captions come from caption jobs (Products or Categories: "Suggest captions")

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("product", "image")

    def save_model(self, request, obj, form, change):
        if change and "text" in form.changed_data:
            from catalog.captions import edit

            edit(obj, obj.text)  # a person's words: accepted, marked edited
            return
        super().save_model(request, obj, form, change)

    @admin.display(description="image")
    def image(self, caption: Caption) -> str:
        return thumbnail(caption.product, 64, caption.image)

    @admin.display(description="product", ordering="product__title")
    def product_title(self, caption: Caption) -> str:
        return f"{caption.product.title} ({caption.product.sku})"

    @admin.display(description="score", ordering="score")
    def score_shown(self, caption: Caption) -> str:
        return "-" if caption.score is None else f"{caption.score:.3f}"


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
