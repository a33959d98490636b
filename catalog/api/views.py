from __future__ import annotations

from django.db.models import Prefetch
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response

from catalog.api.serializers import (
    BulkStatusSerializer,
    CaptionSerializer,
    CategorySerializer,
    ImageUploadSerializer,
    ProductImageSerializer,
    ProductSerializer,
    ProductTagSerializer,
    TagGroupSerializer,
    TagSerializer,
)
from catalog.filters import CaptionFilterSet, ProductFilterSet, ProductTagFilterSet, check_params
from mmsearch.images import ImageRejected, check_image, check_size
from catalog.models import Caption, Category, Product, ProductImage, ProductTag, Tag, TagGroup
from catalog.storage import add_image
from mmsearch.validation import BadValue, check_json_text, text_problem

COMMON_PARAMS = {"page", "page_size", "format"}


def check_request_text(request, url_kwargs: dict) -> None:
    """Refuse text the database cannot hold (NUL, control characters, lone surrogates) wherever it comes in:
    the URL (404: no row can have such a key), the query string and the body (400 naming the parameter)."""
    for name, value in url_kwargs.items():
        problem = isinstance(value, str) and text_problem(value)
        if problem:
            raise NotFound(f"not found: the {name} in the URL {problem}")
    for name, values in request.query_params.lists():
        problem = text_problem(name)
        if problem:
            raise ValidationError({"query": f"parameter name {name!r} {problem}"})
        for value in values:
            problem = text_problem(value)
            if problem:
                raise ValidationError({name: problem})
    data = request.data
    if hasattr(data, "lists"):  # a form: each name may repeat; files are not text
        items = [(name, v) for name, values in data.lists() for v in values if isinstance(v, str)]
    else:
        items = data.items() if isinstance(data, dict) else ()
    for name, value in items:
        problem = isinstance(name, str) and text_problem(name)
        if problem:
            raise ValidationError({"body": f"field name {name!r} {problem}"})
        try:
            check_json_text(value, name=name)
        except BadValue as exc:
            raise ValidationError({exc.name: exc.problem}) from None


class CleanTextMixin:
    """Run check_request_text after authentication and permissions (so anonymous writes still get 401/403)."""

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        check_request_text(request, kwargs)


class StrictParamsMixin(CleanTextMixin):
    """Reject query parameters the list endpoint does not know, and text the database cannot hold."""

    def filter_queryset(self, queryset):
        if self.action == "list":
            allowed = set(COMMON_PARAMS)
            fs = getattr(self, "filterset_class", None)
            if fs is not None:
                allowed |= set(fs.base_filters)
            allowed |= set(getattr(self, "extra_params", ()))
            check_params(self.request.query_params, allowed)
        return super().filter_queryset(queryset)


@extend_schema(parameters=[OpenApiParameter("attr.NAME", str, description="attribute filter, e.g. attr.colour=Red")])
class ProductViewSet(StrictParamsMixin, viewsets.ModelViewSet):
    """Products, addressed by sku. Reads are public; writes need a staff user."""

    serializer_class = ProductSerializer
    filterset_class = ProductFilterSet
    lookup_field = "sku"
    lookup_value_regex = "[^/]+"

    def get_queryset(self):
        return Product.objects.select_related("category").prefetch_related(
            "images", Prefetch("product_tags", queryset=ProductTag.objects.select_related("tag__group"))
        )

    @extend_schema(request={"multipart/form-data": ImageUploadSerializer}, responses={201: ProductImageSerializer})
    @action(detail=True, methods=["post"], url_path="images", parser_classes=[MultiPartParser, FormParser])
    def upload_image(self, request, sku=None):
        """Attach an image (JPEG/PNG/WebP); identical bytes already on the product are not stored twice."""
        product = self.get_object()
        form = ImageUploadSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        upload = form.validated_data["file"]
        try:
            check_size(upload.size)  # before reading, so an over-large upload is never held in memory
            checked = check_image(upload.read())
        except ImageRejected as exc:
            raise ValidationError({"file": str(exc)})
        image, created = add_image(product, checked, form.validated_data.get("position"))
        data = ProductImageSerializer(image, context={"request": request}).data
        return Response(data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    @action(detail=True, methods=["delete"], url_path=r"images/(?P<image_id>\d+)")
    def delete_image(self, request, sku=None, image_id=None):
        """Detach one image from the product (the file stays while other products use the same bytes)."""
        product = self.get_object()
        deleted, _ = ProductImage.objects.filter(product=product, pk=image_id).delete()
        if not deleted:
            return Response({"detail": f"product {sku} has no image {image_id}"}, status=status.HTTP_404_NOT_FOUND)
        return Response(status=status.HTTP_204_NO_CONTENT)


class CategoryViewSet(StrictParamsMixin, viewsets.ModelViewSet):
    serializer_class = CategorySerializer
    queryset = Category.objects.select_related("parent")
    filterset_fields = ["parent"]
    extra_params = {"parent"}


class TagGroupViewSet(StrictParamsMixin, viewsets.ModelViewSet):
    serializer_class = TagGroupSerializer
    queryset = TagGroup.objects.all()
    lookup_field = "slug"


class TagViewSet(StrictParamsMixin, viewsets.ModelViewSet):
    serializer_class = TagSerializer
    queryset = Tag.objects.select_related("group")
    filterset_fields = ["group__slug"]
    extra_params = {"group__slug"}


class BulkReviewMixin:
    """POST .../bulk {"ids": [...], "status": "accepted" | "rejected"}: decide on many suggestions in one update
    (catalog.review.set_status), for every review queue (product tags, captions)."""

    @extend_schema(request=BulkStatusSerializer, responses={200: BulkStatusSerializer})
    @action(detail=False, methods=["post"], url_path="bulk")
    def bulk(self, request):
        """Accept or reject many suggestions at once: {"ids": [...], "status": "accepted" | "rejected"}."""
        from catalog.review import set_status

        params = BulkStatusSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        ids = params.validated_data["ids"]
        changed = set_status(self.get_queryset().model.objects.filter(pk__in=ids), params.validated_data["status"])
        return Response({**params.validated_data, "changed": changed})


class ProductTagViewSet(BulkReviewMixin, StrictParamsMixin, viewsets.ModelViewSet):
    """Tags on products, manual or suggested by a model; accepting or rejecting one is a PATCH of status."""

    serializer_class = ProductTagSerializer
    queryset = ProductTag.objects.select_related("product", "tag__group").order_by("id")
    filterset_class = ProductTagFilterSet


class CaptionViewSet(BulkReviewMixin, StrictParamsMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin,
                     mixins.UpdateModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet):
    """Captions of product images written by caption jobs (POST /api/v1/index-jobs/ with kind=captions). Reads are
    public; deciding needs a staff user: PATCH {"text": ...} edits (accepted, marked edited), PATCH {"status": ...},
    POST .../accept, .../reject, or many at once with .../bulk. Only accepted captions feed search."""

    serializer_class = CaptionSerializer
    queryset = Caption.objects.select_related("product", "image").order_by("id")
    filterset_class = CaptionFilterSet

    def _decide(self, status_value: str) -> Response:
        from catalog.review import set_status

        caption = self.get_object()
        set_status(Caption.objects.filter(pk=caption.pk), status_value)
        caption.refresh_from_db()
        return Response(self.get_serializer(caption).data)

    @extend_schema(request=None, responses={200: CaptionSerializer})
    @action(detail=True, methods=["post"])
    def accept(self, request, pk=None):
        """Accept the model's text as it is."""
        return self._decide(Caption.Status.ACCEPTED)

    @extend_schema(request=None, responses={200: CaptionSerializer})
    @action(detail=True, methods=["post"])
    def reject(self, request, pk=None):
        """Reject the caption (remembered: this model does not suggest it again for this image)."""
        return self._decide(Caption.Status.REJECTED)
