"""Search API: GET /api/v1/search, POST /api/v1/search/image, GET /api/v1/products/<sku>/similar."""

from __future__ import annotations

import io

from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.authentication import TokenAuthentication
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from mmsearch.search.engine import SearchResult, search
from mmsearch.search.params import SearchError, SearchQuery, SearchUnavailable, parse_params

_PARAMS = [
    OpenApiParameter("mode", str, enum=["hybrid", "semantic", "lexical"], description="default hybrid"),
    OpenApiParameter("page", int), OpenApiParameter("limit", int, description="results per page (max MMSEARCH_SEARCH['MAX_LIMIT'])"),
    OpenApiParameter("category", str, description="category path; includes subcategories"),
    OpenApiParameter("price_min", float), OpenApiParameter("price_max", float),
    OpenApiParameter("tag", str, description="accepted tag, 'group:slug' or 'slug'"),
    OpenApiParameter("attr.NAME", str, description="attribute filter, e.g. attr.colour=Red"),
    OpenApiParameter("understand", str, enum=["1", "0"], description="query understanding (default 1)"),
    OpenApiParameter("ignore", str, description="spans of q to leave un-understood (comma-separated, as typed)"),
]


def shows_debug(request: Request | None) -> bool:
    """The `debug` block is for staff tokens, or for everyone when settings.MMSEARCH_SEARCH_DEBUG is on."""
    from django.conf import settings

    if getattr(settings, "MMSEARCH_SEARCH_DEBUG", False):
        return True
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_authenticated and user.is_staff)


def result_data(result: SearchResult, request: Request | None = None) -> dict:
    """The JSON shape of a SearchResult (prices as strings, image URLs absolute when a request is given)."""
    def url(u: str | None) -> str | None:
        return request.build_absolute_uri(u) if (u and request is not None) else u

    data = {
        "mode": result.mode,
        "total": result.total,
        "page": result.page,
        "limit": result.limit,
        "took_ms": result.took_ms,
        "results": [
            {
                "product_id": h.product_id, "sku": h.sku, "title": h.title,
                "price": None if h.price is None else str(h.price), "currency": h.currency,
                "image_url": url(h.image_url), "category": h.category,
                "score": h.score, "parts": h.parts, "model_key": h.model_key,
            }
            for h in result.hits
        ],
        "facets": result.facets,
        # What query understanding read in the words: each span, the filter and value it names, how sure it is
        # (calibrated), and whether it boosted the results (applied: false once removed or set as a filter).
        "understood": [u.data() for u in result.understood],
    }
    if shows_debug(request):
        data["debug"] = result.debug
    return data


def _error(exc: SearchError) -> Response:
    code = status.HTTP_503_SERVICE_UNAVAILABLE if isinstance(exc, SearchUnavailable) else status.HTTP_400_BAD_REQUEST
    return Response({"detail": str(exc)}, status=code)


class _SearchView(APIView):
    # Public, read-only searching: no session (so no CSRF) and no staff check; a staff token adds `debug`.
    permission_classes = [AllowAny]
    authentication_classes = [TokenAuthentication]
    throttle_scope = "search"

    def run(self, request: Request, query_fn) -> Response:
        try:
            query = query_fn()
            return Response(result_data(search(query), request))
        except SearchError as exc:
            return _error(exc)


class SearchView(_SearchView):
    @extend_schema(parameters=[OpenApiParameter("q", str, required=True), *_PARAMS], responses={200: dict})
    def get(self, request: Request) -> Response:
        """Text search (hybrid by default) with filters and facets."""
        def build() -> SearchQuery:
            query = parse_params(request.query_params)
            if query.text is None:
                raise SearchError("the query is empty; pass q=...")
            if query.similar_to is not None:
                raise SearchError("similar_to is not a text-search parameter; use /api/v1/products/<sku>/similar")
            return query
        return self.run(request, build)


class ImageSearchView(_SearchView):
    parser_classes = [MultiPartParser, FormParser]
    throttle_scope = "photo_search"

    @extend_schema(
        request={"multipart/form-data": inline_serializer("ImageSearch", {"image": serializers.ImageField()})},
        parameters=_PARAMS, responses={200: dict},
    )
    def post(self, request: Request) -> Response:
        """Search by a shopper's photo (multipart field `image`); filters as query or form parameters."""
        from django.http import QueryDict

        from mmsearch.images import ImageRejected, check_image

        def build() -> SearchQuery:
            upload = request.FILES.get("image")
            if upload is None:
                raise SearchError("upload a photo in the multipart field 'image'")
            params = QueryDict(mutable=True)
            for source in (request.query_params, request.data):
                for key in source:
                    if key != "image":
                        params.setlist(key, source.getlist(key))
            if "q" in params:
                raise SearchError("a photo search takes no q; use GET /api/v1/search for text")
            query = parse_params(params)
            # Read at most one byte over the limit, so a huge upload is refused without loading it whole.
            from django.conf import settings

            data = upload.read(settings.MMSEARCH_UPLOAD_MAX_BYTES + 1)
            try:
                checked = check_image(data)
            except ImageRejected as exc:
                raise SearchError(f"image: {exc}") from None
            from PIL import Image

            query.image = Image.open(io.BytesIO(checked.data)).convert("RGB")
            return query
        return self.run(request, build)


class SimilarView(_SearchView):
    throttle_scope = "similar"
    @extend_schema(parameters=_PARAMS, responses={200: dict})
    def get(self, request: Request, sku: str) -> Response:
        """Products like this one (its image and text vectors), with filters."""
        from mmsearch.adapter import get_catalog

        if get_catalog().product_ref(sku) is None:
            return Response({"detail": f"no product with sku {sku!r}"}, status=status.HTTP_404_NOT_FOUND)

        def build() -> SearchQuery:
            if "q" in request.query_params or "similar_to" in request.query_params:
                raise SearchError("similar search takes filters, page and limit only")
            query = parse_params(request.query_params)
            query.similar_to = sku
            return query
        return self.run(request, build)
