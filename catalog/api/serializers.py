from __future__ import annotations

import math

from django.db import transaction
from django.db.models import Max
from django.db.models.functions import Length
from django.utils.text import slugify
from rest_framework import serializers
from rest_framework.validators import UniqueValidator

from catalog.importer import ATTRIBUTE_TEXT_MAX, CATEGORY_NAME_MAX, CATEGORY_PATH_MAX, DESCRIPTION_MAX
from catalog.models import Caption, Category, Product, ProductImage, ProductTag, Tag, TagGroup, normalize_path
from mmsearch.validation import INT32_MAX, BadValue, clean_text, text_problem


class _UniqueText(UniqueValidator):
    """UniqueValidator that leaves text the database cannot compare (NUL, lone surrogates) to the field's own
    checks instead of sending it in a query."""

    def __call__(self, value, serializer_field):
        if isinstance(value, str) and text_problem(value, multiline=True):
            return
        super().__call__(value, serializer_field)


def _clean(value, **kwargs) -> str:
    """clean_text, with its complaint as this field's validation error (the field name is added by DRF)."""
    try:
        return clean_text(value, **kwargs)
    except BadValue as exc:
        raise serializers.ValidationError(exc.problem) from None


class CategorySerializer(serializers.ModelSerializer):
    parent = serializers.SlugRelatedField(slug_field="path", queryset=Category.objects.all(), allow_null=True, required=False)

    class Meta:
        model = Category
        fields = ["id", "name", "path", "parent"]
        read_only_fields = ["path"]

    def validate_name(self, value: str) -> str:
        if "/" in value:
            raise serializers.ValidationError("a category name may not contain '/'")
        return _clean(value, name="name", max_length=CATEGORY_NAME_MAX)

    def validate(self, attrs: dict) -> dict:
        name = attrs.get("name", getattr(self.instance, "name", ""))
        parent = attrs["parent"] if "parent" in attrs else getattr(self.instance, "parent", None)
        node = parent
        while self.instance is not None and node is not None:
            if node.pk == self.instance.pk:
                raise serializers.ValidationError({"parent": "a category cannot be moved below itself"})
            node = node.parent
        path = f"{parent.path}/{name}" if parent else name
        # The paths below a renamed or moved node grow with it; each must still fit the column.
        longest = len(path)
        if self.instance is not None:
            below = Category.objects.filter(path__startswith=self.instance.path + "/").aggregate(m=Max(Length("path")))["m"]
            if below:
                longest = max(longest, below - len(self.instance.path) + len(path))
        if longest > CATEGORY_PATH_MAX:
            raise serializers.ValidationError(
                {"name": f"the category path would be {longest} characters long; the limit is {CATEGORY_PATH_MAX}"}
            )
        clash = Category.objects.filter(path=path)
        if self.instance is not None:
            clash = clash.exclude(pk=self.instance.pk)
        if clash.exists():
            raise serializers.ValidationError({"name": f"category {path!r} already exists"})
        return attrs


class ProductImageSerializer(serializers.ModelSerializer):
    url = serializers.SerializerMethodField()

    class Meta:
        model = ProductImage
        fields = ["id", "url", "sha256", "width", "height", "position"]
        read_only_fields = fields

    def get_url(self, image: ProductImage) -> str:
        url = image.file.url
        request = self.context.get("request")
        return request.build_absolute_uri(url) if request else url


class ProductSerializer(serializers.ModelSerializer):
    category = serializers.CharField(
        source="category.path", allow_null=True, required=False,
        help_text="category path such as 'Apparel/Topwear/Tshirts'; missing levels are created",
    )
    images = ProductImageSerializer(many=True, read_only=True)
    tags = serializers.SerializerMethodField()

    class Meta:
        model = Product
        fields = [
            "sku", "title", "description", "brand", "price", "currency", "attributes", "category", "active",
            "images", "tags", "created_at", "updated_at",
        ]
        read_only_fields = ["created_at", "updated_at"]
        extra_kwargs = {"sku": {"validators": [_UniqueText(queryset=Product.objects.all())]}}

    def get_tags(self, product: Product) -> list[str]:
        return sorted(
            f"{pt.tag.group.slug}:{pt.tag.slug}" for pt in product.product_tags.all() if pt.status == ProductTag.Status.ACCEPTED
        )

    def validate_attributes(self, value):
        if not isinstance(value, dict):
            raise serializers.ValidationError("must be an object of name -> string or number")
        for key, item in value.items():
            problem = text_problem(key)
            if problem:
                raise serializers.ValidationError(f"attribute name {key!r} {problem}")
            if not key.strip() or len(key) > CATEGORY_NAME_MAX:
                raise serializers.ValidationError(f"attribute name {key!r} must have 1 to {CATEGORY_NAME_MAX} characters")
            if isinstance(item, bool) or not isinstance(item, (str, int, float)):
                raise serializers.ValidationError(f"attribute '{key}' must be a string or a number")
            if isinstance(item, float) and not math.isfinite(item):
                raise serializers.ValidationError(f"attribute '{key}' must be a finite number")
            if isinstance(item, str):
                problem = text_problem(item, multiline=True)
                if problem:
                    raise serializers.ValidationError(f"attribute '{key}' {problem}")
                if len(item) > ATTRIBUTE_TEXT_MAX:
                    raise serializers.ValidationError(f"attribute '{key}' is longer than {ATTRIBUTE_TEXT_MAX} characters")
        return value

    def validate_title(self, value: str) -> str:
        return _clean(value, name="title", max_length=500)

    def validate_brand(self, value: str) -> str:
        return _clean(value, name="brand", max_length=200, allow_empty=True)

    def validate_description(self, value: str) -> str:
        return _clean(value, name="description", max_length=DESCRIPTION_MAX, allow_empty=True, multiline=True)

    def validate_category(self, value):
        if value is None:
            return None
        value = _clean(value, name="category", allow_empty=True)
        if not value:
            return None
        try:
            path = normalize_path(value)
        except ValueError as exc:
            raise serializers.ValidationError(str(exc)) from None
        for level in path.split("/"):
            if len(level) > CATEGORY_NAME_MAX:
                raise serializers.ValidationError(
                    f"the level {level[:40]!r}... is {len(level)} characters long; the limit is {CATEGORY_NAME_MAX} a level"
                )
        if len(path) > CATEGORY_PATH_MAX:
            raise serializers.ValidationError(f"the path is {len(path)} characters long; the limit is {CATEGORY_PATH_MAX}")
        return path

    def validate_currency(self, value: str) -> str:
        value = (value or "").strip().upper()
        if value and (len(value) != 3 or not value.isascii() or not value.isalpha()):
            raise serializers.ValidationError("use a 3-letter ISO 4217 code such as EUR")
        return value

    def validate_sku(self, value: str) -> str:
        value = _clean(value, name="sku", max_length=128)
        if self.instance is not None and value != self.instance.sku:
            raise serializers.ValidationError("the sku of an existing product cannot change")
        return value

    def _category(self, validated: dict):
        if "category" not in validated:
            return
        path = (validated.pop("category") or {}).get("path")
        try:
            validated["category"] = Category.objects.get_or_create_path(path) if path else None
        except ValueError as exc:
            raise serializers.ValidationError({"category": str(exc)})

    @transaction.atomic
    def create(self, validated):
        self._category(validated)
        return super().create(validated)

    @transaction.atomic
    def update(self, instance, validated):
        self._category(validated)
        return super().update(instance, validated)


class ImageUploadSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="JPEG, PNG or WebP")
    position = serializers.IntegerField(min_value=0, max_value=INT32_MAX, required=False)


def _derived_slug(serializer: serializers.ModelSerializer, attrs: dict, clash) -> str:
    """The given slug, the instance's, or one made from the name; refused when `clash(slug)` finds another row."""
    instance = serializer.instance
    slug = attrs.get("slug") or (instance.slug if instance else "") or slugify(attrs.get("name", ""))
    if not slug:
        raise serializers.ValidationError({"slug": "give a slug: none can be made from this name"})
    others = clash(slug)
    if instance is not None:
        others = others.exclude(pk=instance.pk)
    if others.exists():
        raise serializers.ValidationError({"slug": f"{slug!r} is already used"})
    return slug


class TagGroupSerializer(serializers.ModelSerializer):
    slug = serializers.SlugField(max_length=100, required=False)

    class Meta:
        model = TagGroup
        fields = ["id", "name", "slug", "description"]

    def validate(self, attrs: dict) -> dict:
        attrs["slug"] = _derived_slug(self, attrs, lambda slug: TagGroup.objects.filter(slug=slug))
        return attrs


class TagSerializer(serializers.ModelSerializer):
    group = serializers.SlugRelatedField(slug_field="slug", queryset=TagGroup.objects.all())
    slug = serializers.SlugField(max_length=100, required=False)

    class Meta:
        model = Tag
        fields = ["id", "group", "name", "slug", "synonyms"]
        # The (group, slug) check runs in validate(), after a missing slug is derived from the name.
        validators: list = []

    def validate(self, attrs: dict) -> dict:
        group = attrs.get("group") or self.instance.group
        attrs["slug"] = _derived_slug(self, attrs, lambda slug: Tag.objects.filter(group=group, slug=slug))
        return attrs


class BulkStatusSerializer(serializers.Serializer):
    ids = serializers.ListField(child=serializers.IntegerField(min_value=1, max_value=2**63 - 1), min_length=1, max_length=10_000)
    status = serializers.ChoiceField(choices=["accepted", "rejected"])
    changed = serializers.IntegerField(read_only=True)


class ProductTagSerializer(serializers.ModelSerializer):
    product = serializers.SlugRelatedField(slug_field="sku", queryset=Product.objects.all())
    tag = serializers.PrimaryKeyRelatedField(queryset=Tag.objects.all())
    group = serializers.CharField(source="tag.group.slug", read_only=True)
    tag_name = serializers.CharField(source="tag.name", read_only=True)

    class Meta:
        model = ProductTag
        fields = ["id", "product", "tag", "group", "tag_name", "source", "score", "model_key", "status", "created_at",
                  "updated_at"]
        read_only_fields = ["created_at", "updated_at"]


class CaptionSerializer(serializers.ModelSerializer):
    """A caption for review: PATCH {"text": ...} is a person's edit (accepted, marked edited, model_key kept);
    PATCH {"status": "accepted" | "rejected"} decides on the model's text."""

    product = serializers.SlugRelatedField(slug_field="sku", read_only=True)
    image_url = serializers.SerializerMethodField()
    status = serializers.ChoiceField(choices=["accepted", "rejected"], required=False,
                                     help_text="suggested until a person decides")

    class Meta:
        model = Caption
        fields = ["id", "product", "image", "image_url", "text", "model_key", "score", "status", "edited",
                  "created_at", "updated_at"]
        read_only_fields = ["image", "model_key", "score", "edited", "created_at", "updated_at"]

    def get_image_url(self, caption: Caption) -> str | None:
        if not caption.image.file:
            return None
        request = self.context.get("request")
        return request.build_absolute_uri(caption.image.file.url) if request else caption.image.file.url

    def to_representation(self, caption: Caption) -> dict:
        data = super().to_representation(caption)
        data["status"] = caption.status  # "suggested" too, though a client may only set the other two
        return data

    def validate_text(self, value: str) -> str:
        from catalog.captions import clean_caption

        try:
            return clean_caption(value)
        except BadValue as exc:
            raise serializers.ValidationError(exc.problem) from None

    def validate(self, attrs: dict) -> dict:
        if not attrs:
            raise serializers.ValidationError("give text (an edit) or status (accepted or rejected)")
        if "text" in attrs and attrs.get("status") == Caption.Status.REJECTED:
            raise serializers.ValidationError({"status": "an edited caption is accepted; reject it without text"})
        return attrs

    def update(self, caption: Caption, validated: dict) -> Caption:
        from catalog.captions import edit

        if "text" in validated and (validated["text"] != caption.text or caption.status != Caption.Status.ACCEPTED):
            return edit(caption, validated["text"])
        if "status" in validated and validated["status"] != caption.status:
            caption.status = validated["status"]
            caption.save()
        return caption
