"""The data-quality report in the REST API (staff only): /api/v1/match-scores, worst match first, and bulk
actions on a selection (catalog.quality)."""

from __future__ import annotations

import django_filters
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import IsAdminUser
from rest_framework.response import Response

from catalog import quality
from catalog.api.views import StrictParamsMixin
from catalog.filters import _known_category
from catalog.models import MatchScore


class MatchScoreFilterSet(django_filters.FilterSet):
    category = django_filters.CharFilter(method="filter_category", help_text="the product's category path or below")
    max_score = django_filters.NumberFilter(field_name="score", lookup_expr="lte")
    active = django_filters.BooleanFilter(field_name="product__active")

    class Meta:
        model = MatchScore
        fields = ["reviewed", "model_key"]

    def filter_category(self, queryset, name, value):
        return _known_category(queryset, value, "product__category")


class MatchScoreSerializer(serializers.ModelSerializer):
    sku = serializers.CharField(source="product.sku", read_only=True)
    title = serializers.CharField(source="product.title", read_only=True)
    category = serializers.CharField(source="product.category.path", read_only=True, default=None)
    active = serializers.BooleanField(source="product.active", read_only=True)
    image = serializers.SerializerMethodField()

    class Meta:
        model = MatchScore
        fields = ["id", "sku", "title", "category", "image", "score", "model_key", "caption", "caption_model_key",
                  "reviewed", "active", "previous_title", "updated_at"]
        read_only_fields = fields

    def get_image(self, ms: MatchScore) -> str | None:
        images = ms.product.images.all()
        if not images:
            return None
        request = self.context.get("request")
        url = images[0].file.url
        return request.build_absolute_uri(url) if request is not None else url


class MatchActionSerializer(serializers.Serializer):
    ids = serializers.ListField(child=serializers.IntegerField(min_value=1, max_value=2**63 - 1), min_length=1,
                                max_length=10_000)
    action = serializers.ChoiceField(choices=quality.ACTIONS)
    changed = serializers.IntegerField(read_only=True)


class MatchScoreViewSet(StrictParamsMixin, viewsets.ReadOnlyModelViewSet):
    """Products whose text may not match their images, lowest score (worst match) first. Staff only."""

    permission_classes = [IsAdminUser]
    serializer_class = MatchScoreSerializer
    filterset_class = MatchScoreFilterSet
    queryset = (MatchScore.objects.select_related("product__category").prefetch_related("product__images")
                .order_by("score", "id"))

    @extend_schema(request=MatchActionSerializer, responses={200: MatchActionSerializer})
    @action(detail=False, methods=["post"], url_path="bulk")
    def bulk(self, request):
        """{"ids": [...], "action": "mark_reviewed" | "accept_caption" | "deactivate"}: how many rows changed."""
        params = MatchActionSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        selection = MatchScore.objects.filter(pk__in=params.validated_data["ids"])
        changed = quality.apply_action(params.validated_data["action"], selection)
        return Response({**params.validated_data, "changed": changed})
