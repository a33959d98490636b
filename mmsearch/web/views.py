"""Shopper pages: home, search results (text, photo, filters, facets, pages), product page."""

from __future__ import annotations

from collections import Counter

from django.conf import settings
from django.db.models import Count
from django.http import Http404, HttpRequest, HttpResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.cache import cache_control
from django.views.decorators.http import require_GET, require_POST

from catalog.models import Caption, Product, ProductTag
from mmsearch.plugins import model_settings
from mmsearch.search.engine import browse, search
from mmsearch.search.params import SearchError, SearchQuery, SearchUnavailable, parse_params
from mmsearch.web import photos, present

# How many similar products the product page shows.
SIMILAR_COUNT = 8


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    """Landing page: the search forms and the top-level categories to browse."""
    if request.GET.get("q") or request.GET.get("photo") or present.has_filters(request.GET):
        # Old links and forms that point at / with a query still land on the results.
        return redirect(f"{reverse('web-search')}?{request.GET.urlencode()}")
    rows = Product.objects.filter(active=True).values("category__path").annotate(n=Count("id"))
    top: Counter[str] = Counter()
    for row in rows:
        path = row["category__path"]
        if path:
            top[path.split("/", 1)[0]] += row["n"]
    categories = [
        {"name": name, "count": n, "url": f"{reverse('web-search')}?{_qs(category=name)}"}
        for name, n in sorted(top.items())
    ]
    return render(request, "web/home.html", {
        "product_count": sum(r["n"] for r in rows),
        "categories": categories,
    })


def _qs(**params: str) -> str:
    q = QueryDict(mutable=True)
    for key, value in params.items():
        q[key] = value
    return q.urlencode()


@require_GET
def search_page(request: HttpRequest) -> HttpResponse:
    """Results for a text query or a stored photo (or, with only filters, a browse), from the query string."""
    params = request.GET.copy()
    photo_key = params.pop("photo", [""])[-1]
    if "q" in params and not params.get("q", "").strip():
        params.pop("q")  # an empty box with filters set is browsing, not an error
    category = (params.get("category") or "").strip("/")
    context: dict = {
        "q": params.get("q", ""), "photo_key": photo_key, "params": request.GET,
        "category_name": category.rsplit("/", 1)[-1] if category else "",
    }
    if not (params.get("q", "").strip() or photo_key or present.has_filters(params)):
        return redirect("home")
    try:
        query = _parse_query(params, photo_key)
        if photo_key and query.text is not None:
            raise SearchError("Search with words or with a photo, not both at once.")
        only_filters = query.text is None and query.image is None and query.similar_to is None
        result = browse(query) if only_filters else search(query)
    except (SearchError, photos.PhotoError) as exc:
        context["error"] = _sentence(str(exc))
        # Valid but unanswerable now (no active model): a server-side condition, not the shopper's mistake.
        status = 503 if isinstance(exc, SearchUnavailable) else 400
        return render(request, "web/search.html", context, status=status)
    currency = next((h.currency for h in result.hits if h.currency), "")
    params_for_links = request.GET
    context.update(
        result=result,
        hits=[_hit_view(h) for h in result.hits],
        category_facet=present.category_facet(params_for_links, result.facets.get("category", [])),
        attribute_facets=present.attribute_facets(params_for_links, result.facets.get("attributes", {})),
        tag_facets=present.tag_facets(params_for_links, result.facets.get("tags", {})),
        price_facet=present.price_facet(params_for_links, result.facets.get("price", []), currency),
        active_filters=present.active_filters(params_for_links, currency),
        pagination=present.pagination(params_for_links, result.page, result.limit, result.total),
        clear_filters_url=_clear_filters_url(request.GET),
        understood=present.understood_chips(params_for_links, result.understood),
    )
    return render(request, "web/search.html", context)


def _parse_query(params: QueryDict, photo_key: str) -> SearchQuery:
    query = parse_params(params)
    if photo_key:
        query.image = photos.load(photo_key)
    return query


def _sentence(message: str) -> str:
    """End a message with a full stop (engine messages are fragments that may start with a parameter name)."""
    message = message.strip()
    return message if not message or message.endswith((".", "!", "?")) else message + "."


def _clear_filters_url(params: QueryDict) -> str:
    q = QueryDict(mutable=True)
    for key in present.SEARCH_KEYS:
        values = [v for v in params.getlist(key) if v]
        if values:
            q.setlist(key, values)
    return f"{reverse('web-search')}?{q.urlencode()}"


def category_label(path: str | None) -> str:
    """'Fruit/Banana/Banana' -> 'Fruit › Banana' (a level named like its parent adds nothing)."""
    parts: list[str] = []
    for part in (path or "").split("/"):
        if part and (not parts or part.lower() != parts[-1].lower()):
            parts.append(part)
    return " › ".join(parts)


def _hit_view(hit) -> dict:
    return {
        "sku": hit.sku,
        "title": hit.title,
        "price": present.money(hit.price, hit.currency),
        "image_url": hit.image_url,
        "category": category_label(hit.category),
        "url": reverse("web-product", args=[hit.sku]),
    }


@require_POST
def photo_upload(request: HttpRequest) -> HttpResponse:
    """Store the shopper's photo and redirect to its results page (POST, then GET: reload and back work)."""
    upload = request.FILES.get("photo")
    context = {"q": "", "params": QueryDict()}
    if upload is None:
        context["error"] = "Choose a photo to search with (JPEG, PNG or WebP)."
        return render(request, "web/search.html", context, status=400)
    limit = settings.MMSEARCH_UPLOAD_MAX_BYTES
    if upload.size > limit:
        context["error"] = f"That photo is {upload.size:,} bytes; the limit is {limit:,}."
        return render(request, "web/search.html", context, status=400)
    try:
        key = photos.save(upload.read())
    except photos.PhotoError as exc:
        context["error"] = str(exc)
        return render(request, "web/search.html", context, status=400)
    return redirect(f"{reverse('web-search')}?{_qs(photo=key)}", permanent=False)


@require_GET
@cache_control(private=True, max_age=600)
def query_photo(request: HttpRequest, key: str) -> HttpResponse:
    """The shopper's own query photo, shown beside its results."""
    try:
        data = photos.open_bytes(key)
    except photos.PhotoError as exc:
        raise Http404(str(exc)) from exc
    return HttpResponse(data, content_type="image/jpeg")


@require_GET
def product_page(request: HttpRequest, sku: str) -> HttpResponse:
    """One product: images, price, attributes, accepted tags and captions, similar products, questions."""
    product = get_object_or_404(Product.objects.select_related("category"), sku=sku, active=True)
    images = list(product.images.all())
    tags = (
        ProductTag.objects.filter(product=product, status=ProductTag.Status.ACCEPTED)
        .select_related("tag__group").order_by("tag__group__name", "tag__name")
    )
    captions = list(
        Caption.objects.filter(product=product, status=Caption.Status.ACCEPTED)
        .order_by("image__position", "image_id", "id").values_list("text", flat=True)
    )
    breadcrumbs = []
    if product.category_id:
        parts = product.category.path.split("/")
        for depth in range(1, len(parts) + 1):
            path = "/".join(parts[:depth])
            crumb = {"name": parts[depth - 1], "url": f"{reverse('web-search')}?{_qs(category=path)}"}
            if breadcrumbs and breadcrumbs[-1]["name"].lower() == crumb["name"].lower():
                breadcrumbs[-1] = crumb  # 'Banana › Banana': one crumb, pointing at the deeper level
            else:
                breadcrumbs.append(crumb)
    similar, similar_error = [], ""
    try:
        result = search(SearchQuery(similar_to=product.sku, limit=SIMILAR_COUNT))
        similar = [_hit_view(h) for h in result.hits if h.sku != product.sku]
    except SearchError as exc:
        # A product with no vectors yet has no neighbours; say so instead of failing the page.
        similar_error = _sentence(str(exc))
    attributes = [
        {"name": present.label_for(str(k)), "value": v}
        for k, v in sorted(product.attributes.items()) if v not in ("", None)
    ] if isinstance(product.attributes, dict) else []
    return render(request, "web/product.html", {
        "product": product,
        "price": present.money(product.price, product.currency),
        "images": images,
        "attributes": attributes,
        "tags": tags,
        "captions": captions,
        "breadcrumbs": breadcrumbs,
        "similar": similar,
        "similar_error": similar_error,
        "qa_enabled": "answerer" in model_settings(),
    })
