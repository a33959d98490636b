"""Search requests: the query object, its parameters and their grammar (shared with the products API).

    query = parse_params(request.GET)      # raises SearchError with a message naming the parameter

Filter names: category (a path; its subtree), price_min / price_max, tag ('group:slug' or 'slug'; comma =
all of) and attr.NAME (any of the values; a comma separates values, a backslash escapes a comma inside one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING

from mmsearch.adapter import get_catalog
from mmsearch.search.config import config
from mmsearch.validation import BadText, clean_text

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

MODES = ("hybrid", "semantic", "lexical")
FILTER_NAMES = ("category", "price_min", "price_max", "tag")
CONTROL_NAMES = ("q", "mode", "page", "limit", "similar_to", "format", "understand", "ignore")
ATTR_PREFIX = "attr."
BOOLEAN = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
# Longest accepted filter value, attribute name or sku (longer ones name nothing in the catalog anyway).
MAX_VALUE_CHARS = 500
# The database's numeric(12, 2) price column: larger bounds are refused rather than overflowing the query.
MAX_PRICE = Decimal("9999999999.99")


class SearchError(ValueError):
    """The query cannot be answered as asked; the message is shown to the user (HTTP 400)."""


class SearchUnavailable(SearchError):
    """The query is valid but the engine cannot answer it now (no active model for a vector search)."""


class FilterError(SearchError):
    """A filter value the catalog cannot apply; `param` names the parameter (e.g. 'category')."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = message


@dataclass
class SearchQuery:
    text: str | None = None
    image: "Image.Image | None" = None
    similar_to: str | None = None  # a product sku: "more like this"
    mode: str = "hybrid"
    # category, price_min, price_max, tag, attr.NAME -> values
    filters: dict[str, list[str]] = field(default_factory=dict)
    page: int = 1
    limit: int = 24
    # Query understanding (mmsearch.search.understanding): off for one request with understand=0; `ignore`
    # lists spans the shopper removed (as typed), which then boost nothing.
    understand: bool = True
    ignore: list[str] = field(default_factory=list)
    # The filters as parse_params checked them against the catalog, so search does not check them again
    # (a category lookup) unless they were changed since.
    checked_filters: tuple | None = field(default=None, repr=False, compare=False)

    def checked(self) -> bool:
        """Whether `filters` are exactly the ones parse_params checked."""
        return self.checked_filters is not None and self.checked_filters == _snapshot(self.filters)


def _snapshot(filters: dict[str, list[str]]) -> tuple:
    return tuple((k, tuple(v)) for k, v in filters.items())


def is_filter(name: str) -> bool:
    return name in FILTER_NAMES or name.startswith(ATTR_PREFIX)


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


def tag_parts(raw: str) -> list[tuple[str, str]]:
    """'colour:red,striped' -> [('colour', 'red'), ('', 'striped')]: (group slug or '', tag slug), all of them."""
    out = []
    for part in (v.strip() for v in raw.split(",")):
        if part:
            group, _, slug = part.rpartition(":")
            out.append((group.strip(), slug.strip()))
    return out


def text(value: object, name: str, max_length: int = MAX_VALUE_CHARS) -> str:
    """A text parameter, checked once here (no NUL or control characters, no lone surrogates, not too long)."""
    try:
        return clean_text(str(value), name=name, max_length=max_length, allow_empty=True)
    except BadText as exc:
        raise SearchError(str(exc)) from None


def whole_number(name: str, raw: str, low: int, high: int) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise SearchError(f"{name} must be a whole number, not {raw!r}") from None
    if not low <= value <= high:
        raise SearchError(f"{name} must be between {low} and {high}, not {value}")
    return value


def price(name: str, raw: str) -> Decimal:
    """A price bound: a finite, non-negative number within the price column's range."""
    try:
        value = Decimal(raw.strip())
    except InvalidOperation:
        raise SearchError(f"{name} must be a number, not {raw!r}") from None
    if not value.is_finite() or value < 0:
        raise SearchError(f"{name} must be a non-negative number, not {raw!r}")
    if value > MAX_PRICE:
        raise SearchError(f"{name} must be at most {MAX_PRICE}, not {raw!r}")
    return value


def check_text(value: str) -> str:
    """Strip and validate a text query (not empty, not over MAX_QUERY_CHARS, no control characters)."""
    limit = config()["MAX_QUERY_CHARS"]
    value = " ".join(text(value, "q", max_length=100 * limit).split())
    if not value:
        raise SearchError("the query is empty; type what you are looking for")
    if len(value) > limit:
        raise SearchError(f"the query is {len(value)} characters long; the limit is {limit}")
    return value


def check_filter_syntax(filters: dict[str, list[str]]) -> dict[str, list[str]]:
    """Validate filter names and values as values (not against the catalog); returns them cleaned."""
    out: dict[str, list[str]] = {}
    for key, values in filters.items():
        name = text(key, "parameter name")
        if not is_filter(name):
            raise SearchError(f"unknown filter {name!r}; use {', '.join(FILTER_NAMES)} or attr.NAME")
        if name.startswith(ATTR_PREFIX) and not name[len(ATTR_PREFIX):]:
            raise SearchError(f"{name}: attribute name is empty; use attr.NAME=VALUE")
        cleaned = [v for v in (text(raw, name).strip() for raw in values) if v]
        if not cleaned:
            raise SearchError(f"filter {name} has no value")
        if name in ("price_min", "price_max"):
            if len(cleaned) != 1:
                raise SearchError(f"{name} takes one value")
            price(name, cleaned[0])
        out[name] = cleaned
    if "price_min" in out and "price_max" in out and price("price_min", out["price_min"][0]) > price(
        "price_max", out["price_max"][0]
    ):
        raise SearchError("price_min is above price_max")
    return out


def check_filters(filters: dict[str, list[str]]) -> dict[str, list[str]]:
    """Validate filters as values and against the catalog (an unknown category ...); returns them cleaned."""
    filters = check_filter_syntax(filters)
    get_catalog().check_filters(filters)
    return filters


def _getlist(params, key: str) -> list[str]:
    if hasattr(params, "getlist"):
        return [str(v) for v in params.getlist(key)]
    value = params[key]
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def parse_params(params) -> SearchQuery:
    """Build a SearchQuery from request parameters (QueryDict or dict); raises SearchError on bad input."""
    conf = config()
    names = [text(k, "parameter name") for k in params]
    unknown = sorted(k for k in names if k not in CONTROL_NAMES and not is_filter(k))
    if unknown:
        raise SearchError(
            f"unknown parameter(s): {', '.join(unknown)}; allowed: {', '.join(CONTROL_NAMES + FILTER_NAMES)}, attr.NAME"
        )
    query = SearchQuery(limit=conf["DEFAULT_LIMIT"])
    if "q" in params:
        query.text = check_text(_getlist(params, "q")[-1])
    if "similar_to" in params:
        query.similar_to = text(_getlist(params, "similar_to")[-1], "similar_to").strip() or None
    if "mode" in params:
        mode = text(_getlist(params, "mode")[-1], "mode").strip().lower()
        if mode not in MODES:
            raise SearchError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        query.mode = mode
    if "page" in params:
        query.page = whole_number("page", _getlist(params, "page")[-1], 1, conf["MAX_PAGE"])
    if "limit" in params:
        query.limit = whole_number("limit", _getlist(params, "limit")[-1], 1, conf["MAX_LIMIT"])
    if "understand" in params:
        raw = text(_getlist(params, "understand")[-1], "understand").strip().lower()
        if raw not in BOOLEAN:
            raise SearchError(f"understand must be 1 or 0, not {raw!r}")
        query.understand = BOOLEAN[raw]
    if "ignore" in params:
        query.ignore = [v for raw in _getlist(params, "ignore") for v in split_values(text(raw, "ignore"))]
        if len(query.ignore) > 20:
            raise SearchError("ignore takes at most 20 spans")
    query.filters = check_filters({k: _getlist(params, k) for k in params if is_filter(k)})
    query.checked_filters = _snapshot(query.filters)
    return query
