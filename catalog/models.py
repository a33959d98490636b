"""Catalog: categories (a tree addressed by path), products, their images, and the tag vocabulary."""

from __future__ import annotations

from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVectorField
from django.core.validators import MinValueValidator
from django.db import models, transaction
from django.utils.text import slugify

PATH_SEPARATOR = "/"


def normalize_path(path: str) -> str:
    """'Apparel / Topwear/Tshirts/' -> 'Apparel/Topwear/Tshirts'; raises ValueError on an empty path."""
    parts = [p.strip() for p in str(path).split(PATH_SEPARATOR)]
    parts = [p for p in parts if p]
    if not parts:
        raise ValueError("category path is empty")
    return PATH_SEPARATOR.join(parts)


class CategoryManager(models.Manager):
    def get_or_create_path(self, path: str) -> "Category":
        """Return the category at `path`, creating it and any missing ancestors."""
        path = normalize_path(path)
        existing = self.filter(path=path).first()
        if existing:
            return existing
        parent = None
        parts = path.split(PATH_SEPARATOR)
        for depth in range(1, len(parts) + 1):
            sub = PATH_SEPARATOR.join(parts[:depth])
            parent, _ = self.get_or_create(path=sub, defaults={"name": parts[depth - 1], "parent": parent})
        return parent


class Category(models.Model):
    """A node in the category tree; `path` is the full name path, e.g. 'Apparel/Topwear/Tshirts'."""

    name = models.CharField(max_length=200)
    parent = models.ForeignKey("self", null=True, blank=True, related_name="children", on_delete=models.PROTECT)
    path = models.CharField(max_length=1000, unique=True, editable=False)

    objects = CategoryManager()

    class Meta:
        ordering = ["path"]
        verbose_name_plural = "categories"

    def __str__(self) -> str:
        return self.path

    def save(self, *args, **kwargs):
        if PATH_SEPARATOR in self.name or not self.name.strip():
            raise ValueError(f"category name {self.name!r} must be non-empty and may not contain {PATH_SEPARATOR!r}")
        if self.pk and self.parent_id:
            # A node may not move below itself: the paths below it would never settle.
            node = self.parent
            while node is not None:
                if node.pk == self.pk:
                    raise ValueError(f"category {self.path!r} cannot be moved below itself")
                node = node.parent
        self.path = f"{self.parent.path}{PATH_SEPARATOR}{self.name}" if self.parent_id else self.name
        # Atomic with the post_save handler that rewrites the paths below (catalog.signals.category_saved).
        with transaction.atomic():
            super().save(*args, **kwargs)

    @property
    def depth(self) -> int:
        return self.path.count(PATH_SEPARATOR)


class Product(models.Model):
    sku = models.CharField(max_length=128, unique=True)
    title = models.CharField(max_length=500)
    description = models.TextField(blank=True, default="")
    brand = models.CharField(max_length=200, blank=True, default="")
    price = models.DecimalField(
        max_digits=12, decimal_places=2, null=True, blank=True, validators=[MinValueValidator(0)]
    )
    currency = models.CharField(max_length=3, blank=True, default="")
    attributes = models.JSONField(default=dict, blank=True)
    category = models.ForeignKey(Category, null=True, blank=True, related_name="products", on_delete=models.PROTECT)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # Weighted full-text vector over title (A), category, accepted tags and accepted captions (B), brand and
    # attributes (C), description (D); maintained by catalog.search_text.refresh_search_vectors().
    search_vector = SearchVectorField(null=True, editable=False)
    # The attributes as "name\x1fvalue" terms, lower case (catalog.filters.attribute_terms spells a
    # filter's terms the same way), computed by the database (migration 0006) and GIN-indexed for attribute filters.
    attribute_terms = models.GeneratedField(
        expression=models.Func(models.F("attributes"), function="catalog_attribute_terms"),
        output_field=ArrayField(models.TextField()),
        db_persist=True,
    )

    class Meta:
        ordering = ["id"]
        indexes = [
            GinIndex(fields=["search_vector"], name="product_search_vector_gin"),
            GinIndex(fields=["attributes"], name="product_attributes_gin"),
            GinIndex(fields=["attribute_terms"], name="product_attribute_terms_gin"),
            # Trigram index for typo-tolerant title matching (pg_trgm).
            GinIndex(fields=["title"], name="product_title_trgm", opclasses=["gin_trgm_ops"]),
            models.Index(fields=["price"], name="product_price_idx"),
            models.Index(fields=["category", "active"], name="product_category_active_idx"),
        ]
        constraints = [
            models.CheckConstraint(condition=models.Q(price__gte=0) | models.Q(price__isnull=True), name="product_price_non_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.sku}: {self.title}"


class ProductImage(models.Model):
    product = models.ForeignKey(Product, related_name="images", on_delete=models.CASCADE)
    # Stored by content (catalog.storage.image_name: images/ab/abcd....jpg), never through upload_to.
    file = models.ImageField(max_length=300)
    sha256 = models.CharField(max_length=64, db_index=True)
    width = models.PositiveIntegerField(default=0)
    height = models.PositiveIntegerField(default=0)
    position = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["product_id", "position", "id"]
        constraints = [models.UniqueConstraint(fields=["product", "sha256"], name="image_unique_bytes_per_product")]

    def __str__(self) -> str:
        return f"{self.product_id}#{self.position} {self.sha256[:12]}"


class TagGroup(models.Model):
    """A facet of the vocabulary, such as colour or pattern."""

    name = models.CharField(max_length=100, unique=True)
    slug = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True, default="")
    # How the tagger words a tag of this group: "{tag}" is the tag's name or a synonym, "{group}" the group's
    # name, e.g. "a photo of a {tag} pattern". Empty: mmsearch.plugins.base.DEFAULT_TAG_TEMPLATES.
    templates = ArrayField(models.CharField(max_length=200), default=list, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs):
        self.slug = self.slug or slugify(self.name)
        super().save(*args, **kwargs)


class Tag(models.Model):
    group = models.ForeignKey(TagGroup, related_name="tags", on_delete=models.CASCADE)
    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=100)
    synonyms = ArrayField(models.CharField(max_length=100), default=list, blank=True)

    class Meta:
        ordering = ["group__name", "name"]
        constraints = [models.UniqueConstraint(fields=["group", "slug"], name="tag_unique_slug_per_group")]

    def __str__(self) -> str:
        return f"{self.group.slug}:{self.name}"

    def save(self, *args, **kwargs):
        self.slug = self.slug or slugify(self.name)
        super().save(*args, **kwargs)


class ReviewStatus(models.TextChoices):
    """Where a model's suggestion (a tag or a caption) stands: only accepted ones feed search."""

    SUGGESTED = "suggested"
    ACCEPTED = "accepted"
    REJECTED = "rejected"


class ProductTag(models.Model):
    class Source(models.TextChoices):
        MANUAL = "manual"
        MODEL = "model"

    Status = ReviewStatus

    product = models.ForeignKey(Product, related_name="product_tags", on_delete=models.CASCADE)
    tag = models.ForeignKey(Tag, related_name="product_tags", on_delete=models.CASCADE)
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.MANUAL)
    score = models.FloatField(null=True, blank=True)
    # Which model suggested the tag ('' for manual tags).
    model_key = models.CharField(max_length=200, blank=True, default="")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.ACCEPTED)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["product_id", "tag_id"]
        constraints = [
            models.UniqueConstraint(fields=["product", "tag", "model_key"], name="producttag_unique_per_model"),
        ]
        indexes = [models.Index(fields=["tag", "status"], name="producttag_tag_status_idx")]

    def __str__(self) -> str:
        return f"{self.product_id} {self.tag} ({self.status})"


class Caption(models.Model):
    """A captioner's sentence about one product image. Accepted captions join the product's full-text vector and
    its embedded text; an admin's edit accepts the edited text (model_key kept, `edited` set); a rejected caption
    is remembered, so the same model_key never suggests it for that image again."""

    Status = ReviewStatus

    product = models.ForeignKey(Product, related_name="captions", on_delete=models.CASCADE)
    image = models.ForeignKey(ProductImage, related_name="captions", on_delete=models.CASCADE)
    text = models.CharField(max_length=500)
    # Which model wrote it (the captioner's model_key, decoding included).
    model_key = models.CharField(max_length=200)
    # The embedder's image-text similarity of the caption and its image (cosine, -1..1); a ranking signal.
    score = models.FloatField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=ReviewStatus.choices, default=ReviewStatus.SUGGESTED)
    edited = models.BooleanField(default=False, help_text="a person changed the model's text")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["product_id", "image_id", "id"]
        constraints = [models.UniqueConstraint(fields=["image", "model_key"], name="caption_unique_per_model")]
        indexes = [
            models.Index(fields=["product", "status"], name="caption_product_status_idx"),
            models.Index(fields=["status", "score"], name="caption_status_score_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.product_id}: {self.text} ({self.status})"


from django.db.models.fields.json import KeyTextTransform  # noqa: E402 - used by SearchSynonym only
from django.db.models.functions import Lower, Upper  # noqa: E402


class SearchSynonym(models.Model):
    """A merchant's word for something the catalog names: search reads `phrase` in a shopper's query as `value`
    of `field` (e.g. 'jumper' as attr.article_type = Sweaters), a soft boost like the catalog's own words
    (mmsearch.search.understanding). Edits are seen by the next search, without a restart."""

    phrase = models.CharField(max_length=100, help_text="what shoppers type, e.g. 'jumper' or 'ladies'")
    field = models.CharField(
        max_length=110, help_text="what it names: attr.NAME (e.g. attr.colour), category, or tag"
    )
    value = models.CharField(
        max_length=500, help_text="the attribute value (e.g. Sweaters), category path (Apparel/Topwear) or tag (group:slug)"
    )
    active = models.BooleanField(default=True)
    note = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["phrase", "field", "value"]
        constraints = [
            models.UniqueConstraint(Lower("phrase"), "field", "value", name="searchsynonym_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.phrase} → {self.field}={self.value}"

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        from mmsearch.validation import BadText, clean_text

        errors = {}
        try:
            self.phrase = " ".join(clean_text(self.phrase, name="phrase", max_length=100).lower().split())
        except BadText as exc:
            errors["phrase"] = str(exc)
        self.field, self.value = (self.field or "").strip(), (self.value or "").strip()
        if self.field == "category":
            if not Category.objects.filter(path=self.value.strip("/")).exists():
                errors["value"] = f"no category {self.value!r}"
            self.value = self.value.strip("/")
        elif self.field == "tag":
            group, _, slug = self.value.rpartition(":")
            tags = Tag.objects.filter(slug=slug) if not group else Tag.objects.filter(slug=slug, group__slug=group)
            if not tags.exists():
                errors["value"] = f"no tag {self.value!r} (use group:slug)"
        elif self.field.startswith("attr.") and self.field[5:]:
            name = self.field[5:]
            found = (
                Product.objects.filter(active=True).annotate(_v=Upper(KeyTextTransform(name, "attributes")))
                .filter(_v=self.value.upper()).values_list("attributes", flat=True).first()
            )
            if found is None:
                errors["value"] = f"no active product has {name} = {self.value!r}"
            else:  # the catalog's spelling, so the synonym names exactly that value
                self.value = str(found.get(name, self.value))
        else:
            errors["field"] = "use attr.NAME (e.g. attr.colour), category or tag"
        if errors:
            raise ValidationError(errors)


class MatchScore(models.Model):
    """How well a product's text matches its images, by one model (the data-quality report): `score` is higher
    for a better match (mmsearch.training.matching), `caption` what the captioner proposes instead. Written by
    `manage.py match_report --store`; reviewed by a person in the admin or the staff API."""

    product = models.ForeignKey(Product, related_name="match_scores", on_delete=models.CASCADE)
    score = models.FloatField()
    model_key = models.CharField(max_length=300)
    caption = models.TextField(blank=True, default="")
    caption_model_key = models.CharField(max_length=300, blank=True, default="")
    reviewed = models.BooleanField(default=False)
    # The title the product had before a person accepted the proposed caption in its place ('' otherwise).
    previous_title = models.CharField(max_length=500, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["score", "id"]
        constraints = [models.UniqueConstraint(fields=["product", "model_key"], name="matchscore_unique_per_model")]
        indexes = [models.Index(fields=["model_key", "reviewed", "score"], name="matchscore_queue_idx")]

    def __str__(self) -> str:
        return f"{self.product_id} {self.score:.3f} ({self.model_key})"
