"""Product filters, one implementation for the products API and for search: category subtree, price range,
accepted tags, attribute values. The parameter grammar (names, value lists, escapes) is the engine's
(mmsearch.search.params); values the catalog cannot apply raise its FilterError."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

import django_filters
from django.contrib.postgres.fields import ArrayField
from django.db.models import Func, Q, QuerySet, TextField, Value
from django.db.models.functions import Lower
from rest_framework.exceptions import ValidationError

from catalog.models import Caption, Category, Product, ProductTag
from mmsearch.search.params import ATTR_PREFIX, FilterError, price, split_values, tag_parts


def category_q(path: str, prefix: str = "category") -> Q:
    """Rows whose category is `path` or below it ("" as prefix: the categories themselves)."""
    path = path.strip().strip("/")
    field = f"{prefix}__path" if prefix else "path"
    return Q(**{field: path}) | Q(**{f"{field}__startswith": path + "/"})


def check_categories(paths: list[str]) -> None:
    """FilterError naming the first path that is not a category."""
    wanted = [p.strip().strip("/") for p in paths]
    known = set(Category.objects.filter(path__in=wanted).values_list("path", flat=True))
    missing = [p for p in wanted if p not in known]
    if missing:
        raise FilterError("category", f"unknown category {missing[0]!r}")


def filter_categories(queryset: QuerySet, paths: list[str], prefix: str = "category") -> QuerySet:
    """Rows (products, or rows whose `prefix` leads to a category) in any of these categories or below them.

    The subtrees' category ids are read first (the category table is small), so the rows' own category index
    answers the filter, and the planner can combine it with the other filters' indexes."""
    return queryset.filter(**{f"{prefix}__in": category_ids(paths)})


def category_ids(paths: list[str]) -> list[int]:
    """The ids of these categories and of every category below them."""
    q = Q()
    for path in paths:
        q |= category_q(path, "")
    return list(Category.objects.filter(q).order_by().values_list("id", flat=True))


def filter_tags(queryset: QuerySet, raw_values: list[str]) -> QuerySet:
    """Products carrying every accepted tag named ('group:slug' or 'slug'; commas separate tags)."""
    for raw in raw_values:
        for group, slug in tag_parts(raw):
            q = Q(tag__slug=slug, status=ProductTag.Status.ACCEPTED)
            if group:
                q &= Q(tag__group__slug=group)
            queryset = queryset.filter(pk__in=ProductTag.objects.filter(q).values("product_id"))
    return queryset


def attribute_term_list(name: str, values: list[str]) -> list[str]:
    """An attribute filter's values as the products' attribute_terms spell them (migration 0006's
    catalog_attribute_terms) before lowering: 'name\x1fvalue', and a number also as Postgres writes it."""
    terms = [f"{name}\x1f{value}" for value in values]
    terms += [f"{name}\x1f{n}" for n in map(_number_text, values) if n is not None]
    return list(dict.fromkeys(terms))


def attribute_terms(name: str, values: list[str]) -> Func:
    """ARRAY[lower(term), ...] of attribute_term_list: lowered by the database like the stored terms are."""
    return Func(*[Lower(Value(t)) for t in attribute_term_list(name, values)], function="ARRAY",
                template="%(function)s[%(expressions)s]", output_field=ArrayField(TextField()))


def _number_text(value: str) -> str | None:
    """A finite number as Postgres writes trim_scale(number) (2012.0 -> "2012", 0.50 -> "0.5"); else None."""
    try:
        number = Decimal(value.strip())
    except (InvalidOperation, ValueError):
        return None
    if not number.is_finite() or abs(number.adjusted()) > 308:  # beyond a float's range: no stored number
        return None
    if number == number.to_integral_value():
        return str(int(number))
    return format(number.normalize(), "f")


def filter_attributes(queryset: QuerySet, attrs: dict[str, list[str]]) -> QuerySet:
    """{'attr.NAME': [raw values]}: any of the values (comma-separated or repeated; a backslash escapes a comma
    inside a value), case-insensitive; a number also matches the same number stored as a JSON number (2012 and
    2012.0). One overlap test per attribute on the GIN-indexed attribute_terms."""
    for key, raws in attrs.items():
        name = key[len(ATTR_PREFIX):]
        if not name:
            raise FilterError(key, "attribute name is empty; use attr.NAME=VALUE")
        values = [v for raw in raws for v in split_values(raw)]
        if not values:
            raise FilterError(key, "no value given")
        queryset = queryset.filter(attribute_terms__overlap=attribute_terms(name, values))
    return queryset


def apply_filters(queryset: QuerySet, filters: dict[str, list[str]]) -> QuerySet:
    """All of {category, price_min, price_max, tag, attr.NAME: [values]} (the search engine's filters)."""
    if "category" in filters:
        queryset = filter_categories(queryset, filters["category"])
    if "price_min" in filters:
        queryset = queryset.filter(price__gte=price("price_min", filters["price_min"][0]))
    if "price_max" in filters:
        queryset = queryset.filter(price__lte=price("price_max", filters["price_max"][0]))
    if "tag" in filters:
        queryset = filter_tags(queryset, filters["tag"])
    return filter_attributes(queryset, {k: v for k, v in filters.items() if k.startswith(ATTR_PREFIX)})


def _drf(exc: FilterError) -> ValidationError:
    return ValidationError({exc.param: exc.message})


def _known_category(queryset: QuerySet, value: str, prefix: str) -> QuerySet:
    """The products API's category parameter: an unknown path is a 400, not an empty page."""
    try:
        check_categories([value])
    except FilterError as exc:
        raise _drf(exc) from None
    return filter_categories(queryset, [value], prefix)


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
        return _known_category(queryset, value, "category")

    def filter_tag(self, queryset, name, value):
        return filter_tags(queryset, [value])

    def filter_sku(self, queryset, name, value):
        return queryset.filter(sku__in=[s.strip() for s in value.split(",") if s.strip()])

    @property
    def qs(self):
        attrs = {k: self.data.getlist(k) for k in self.data if k.startswith(ATTR_PREFIX)}
        try:
            return filter_attributes(super().qs, attrs)
        except FilterError as exc:
            raise _drf(exc) from None


class ReviewFilterSet(django_filters.FilterSet):
    """What every review queue (product tags, captions) filters on: score range, product category, product sku."""

    min_score = django_filters.NumberFilter(field_name="score", lookup_expr="gte")
    max_score = django_filters.NumberFilter(field_name="score", lookup_expr="lte")
    category = django_filters.CharFilter(method="filter_category", help_text="the product's category path or below")
    product__sku = django_filters.CharFilter()

    def filter_category(self, queryset, name, value):
        return _known_category(queryset, value, "product__category")


class CaptionFilterSet(ReviewFilterSet):
    """The caption review queue's filters: status, model, edited, score range, product category and sku."""

    class Meta:
        model = Caption
        fields = ["status", "model_key", "edited"]


class ProductTagFilterSet(ReviewFilterSet):
    """The review queue's filters: status, source, model, group and tag, confidence range, product category."""

    group = django_filters.CharFilter(field_name="tag__group__slug", help_text="tag group slug, e.g. colour")
    tag = django_filters.CharFilter(method="filter_tag", help_text="'group:slug' or 'slug'")

    class Meta:
        model = ProductTag
        fields = ["status", "source", "model_key"]

    def filter_tag(self, queryset, name, value):
        q = Q()
        for group, slug in tag_parts(value):
            q |= Q(tag__slug=slug, **({"tag__group__slug": group} if group else {}))
        return queryset.filter(q)


def check_params(params, allowed: set[str]) -> None:
    """Refuse unknown query parameters, so a typo in a filter name is an error and not a silent no-op."""
    unknown = sorted(k for k in params if k not in allowed and not k.startswith(ATTR_PREFIX))
    if unknown:
        raise ValidationError(
            {"detail": f"unknown parameter(s): {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}, attr.NAME"}
        )
