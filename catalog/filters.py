"""Product filters shared by the catalog API and search: category subtree, price range, attributes, tags."""

from __future__ import annotations

import math

import django_filters
from django.db.models import Q, QuerySet
from django.db.models.fields.json import KeyTextTransform, KeyTransform
from rest_framework.exceptions import ValidationError

from catalog.models import Category, Product, ProductTag

ATTR_PREFIX = "attr."


def category_q(path: str, prefix: str = "category") -> Q:
    """Rows whose category is `path` or below it."""
    path = path.strip().strip("/")
    return Q(**{f"{prefix}__path": path}) | Q(**{f"{prefix}__path__startswith": path + "/"})


def split_values(raw: str) -> list[str]:
    """'Red,Blue' -> ['Red', 'Blue'] ("any of"); a backslash escapes a comma or a backslash inside one value,
    so 'The Netherlands\\, ca 140g' is the single value 'The Netherlands, ca 140g'. Blank parts are dropped."""
    values, current, i = [], [], 0
    while i < len(raw):
        ch = raw[i]
        if ch == "\\" and i + 1 < len(raw) and raw[i + 1] in ",\\":
            current.append(raw[i + 1])
            i += 2
            continue
        if ch == ",":
            values.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    values.append("".join(current))
    return [v.strip() for v in values if v.strip()]


def escape_value(value: str) -> str:
    """One value as split_values reads it back unchanged (commas and backslashes escaped)."""
    return value.replace("\\", "\\\\").replace(",", "\\,")


def split_tag(value: str) -> Q:
    """'colour:red' (group:slug) or 'red' (slug in any group) -> a Q on ProductTag.tag."""
    group, _, slug = value.rpartition(":")
    q = Q(tag__slug=slug.strip())
    if group:
        q &= Q(tag__group__slug=group.strip())
    return q


class ProductFilterSet(django_filters.FilterSet):
    category = django_filters.CharFilter(method="filter_category", help_text="category path; includes subcategories")
    price_min = django_filters.NumberFilter(field_name="price", lookup_expr="gte")
    price_max = django_filters.NumberFilter(field_name="price", lookup_expr="lte")
    tag = django_filters.CharFilter(method="filter_tag", help_text="accepted tag, 'group:slug' or 'slug'; comma = all of")
    brand = django_filters.CharFilter(field_name="brand", lookup_expr="iexact")
    active = django_filters.BooleanFilter()
    sku = django_filters.CharFilter(method="filter_sku", help_text="comma-separated skus")
    ordering = django_filters.OrderingFilter(fields=("price", "title", "created_at", "updated_at", "sku"))

    class Meta:
        model = Product
        fields: list[str] = []

    def filter_category(self, queryset, name, value):
        if not Category.objects.filter(path=value.strip().strip("/")).exists():
            raise ValidationError({"category": f"unknown category {value!r}"})
        return queryset.filter(category_q(value))

    def filter_tag(self, queryset, name, value):
        for part in [v for v in value.split(",") if v.strip()]:
            queryset = queryset.filter(
                pk__in=ProductTag.objects.filter(split_tag(part), status=ProductTag.Status.ACCEPTED).values("product_id")
            )
        return queryset

    def filter_sku(self, queryset, name, value):
        return queryset.filter(sku__in=[s.strip() for s in value.split(",") if s.strip()])

    @property
    def qs(self):
        queryset = super().qs
        return filter_attributes(queryset, self.data)


def filter_attributes(queryset: QuerySet, params) -> QuerySet:
    """attr.NAME=VALUE (repeat or comma-separate for any of; backslash-escape a comma inside a value) on the
    attributes JSON; case-insensitive values."""
    for index, key in enumerate(k for k in params if k.startswith(ATTR_PREFIX)):
        name = key[len(ATTR_PREFIX):]
        if not name:
            raise ValidationError({key: "attribute name is empty; use attr.NAME=VALUE"})
        values = [v for raw in params.getlist(key) for v in split_values(raw)]
        if not values:
            raise ValidationError({key: "no value given"})
        # Key transforms take the name as a literal JSON key (never parsed as an ORM lookup path).
        text, raw = f"_attr{index}_text", f"_attr{index}_json"
        queryset = queryset.alias(**{text: KeyTextTransform(name, "attributes"), raw: KeyTransform(name, "attributes")})
        q = Q()
        for value in values:
            q |= Q(**{f"{text}__iexact": value})
            try:
                number = float(value)
            except ValueError:
                continue
            if math.isfinite(number):  # so 2012 also matches a stored 2012.0
                q |= Q(**{raw: number})
        queryset = queryset.filter(q)
    return queryset


def check_params(params, allowed: set[str]) -> None:
    """Refuse unknown query parameters, so a typo in a filter name is an error and not a silent no-op."""
    unknown = sorted(k for k in params if k not in allowed and not k.startswith(ATTR_PREFIX))
    if unknown:
        raise ValidationError(
            {"detail": f"unknown parameter(s): {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}, attr.NAME"}
        )
