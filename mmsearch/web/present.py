"""Turn an engine SearchResult and the query string into what the templates show: facet links, active
filters, pagination. Every link is a plain GET URL, so the pages work without JavaScript."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from django.http import QueryDict

from mmsearch.search.params import ATTR_PREFIX, escape_value, is_filter, split_values

# Query-string keys that describe the search but are not filters.
SEARCH_KEYS = ("q", "mode", "photo", "limit", "ignore", "understand")
CURRENCY_SYMBOLS = {"EUR": "€", "USD": "$", "GBP": "£", "INR": "₹", "JPY": "¥"}


def url_with(params: QueryDict, *, set_: dict[str, str | None] | None = None, toggle: tuple[str, str] | None = None,
             keep_page: bool = False) -> str:
    """'?…' for `params` with keys set (None removes) and/or one value toggled; a filter change resets the page."""
    q = params.copy()
    for key, value in (set_ or {}).items():
        if value is None:
            q.pop(key, None)
        else:
            q.setlist(key, [value])
    if toggle:
        key, value = toggle
        values = q.getlist(key)
        q.setlist(key, [v for v in values if v != value] if value in values else [*values, value])
        if not q.getlist(key):
            q.pop(key, None)
    if not keep_page:
        q.pop("page", None)
    encoded = q.urlencode()
    return f"?{encoded}" if encoded else "?"


def has_filters(params: QueryDict) -> bool:
    return any(is_filter(k) and any(v.strip() for v in params.getlist(k)) for k in params)


def label_for(name: str) -> str:
    """'article_type' -> 'Article type'."""
    text = name.replace("_", " ").strip()
    return text[:1].upper() + text[1:]


def money(amount, currency: str = "") -> str:
    """'€12.50', '12.50 SEK'; '' when there is no price."""
    if amount in (None, ""):
        return ""
    try:
        value = Decimal(str(amount))
    except InvalidOperation:
        return str(amount)
    text = f"{value:,.2f}"
    currency = (currency or "").upper()
    symbol = CURRENCY_SYMBOLS.get(currency)
    if symbol:
        return f"{symbol}{text}"
    return f"{text} {currency}".strip()


@dataclass
class FacetValue:
    label: str
    count: int
    url: str
    selected: bool
    depth: int = 0


@dataclass
class FacetGroup:
    key: str  # an id-safe name for the heading
    label: str
    values: list[FacetValue] = field(default_factory=list)


@dataclass
class ActiveFilter:
    label: str
    remove_url: str


def category_facet(params: QueryDict, entries: list[dict]) -> FacetGroup:
    """The children of the selected category (or the top level), skipping levels with a single choice."""
    counts = {e["value"]: int(e["count"]) for e in entries}
    selected = (params.get("category") or "").strip().strip("/")
    group = FacetGroup("category", "Category")
    if selected:
        group.values.append(FacetValue(f"All of {selected.replace('/', ' › ')}", counts.get(selected, 0),
                                       url_with(params, set_={"category": None}), True))
    base = selected
    while True:
        depth = base.count("/") + 1 if base else 0
        children = sorted(
            p for p in counts
            if p.count("/") == depth and (not base or p.startswith(base + "/"))
        )
        # One choice is no choice: show the level below it instead.
        if len(children) == 1 and any(p.startswith(children[0] + "/") for p in counts):
            base = children[0]
            continue
        break
    for path in children:
        group.values.append(FacetValue(path.rsplit("/", 1)[-1], counts[path], url_with(params, set_={"category": path}),
                                       False, depth=1 if selected else 0))
    return group


def attribute_facets(params: QueryDict, attributes: dict[str, list[dict]]) -> list[FacetGroup]:
    groups = []
    for name in sorted(attributes):
        key = f"{ATTR_PREFIX}{name}"
        chosen = {v.lower() for raw in params.getlist(key) for v in split_values(raw)}
        # Blank values are "not recorded", not a value a shopper can pick.
        values = [v for v in attributes[name] if str(v["value"]).strip()]
        # An attribute with one value on every result does not narrow anything; keep it only when chosen.
        if len(values) < 2 and not chosen:
            continue
        group = FacetGroup(f"attr-{name}", label_for(name))
        for entry in values:
            value = str(entry["value"])
            group.values.append(
                FacetValue(value, int(entry["count"]),
                           url_with(params, toggle=(key, _param_value(params, key, escape_value(value)))),
                           value.lower() in chosen)
            )
        groups.append(group)
    return groups


def _param_value(params: QueryDict, key: str, value: str) -> str:
    """The value as it already appears in the query string (filters match case-insensitively), else `value`."""
    for existing in params.getlist(key):
        if existing.lower() == value.lower():
            return existing
    return value


def tag_facets(params: QueryDict, tags: dict[str, list[dict]]) -> list[FacetGroup]:
    chosen = set(params.getlist("tag"))
    groups = []
    for group_slug in sorted(tags):
        group = FacetGroup(f"tag-{group_slug}", label_for(group_slug))
        for entry in tags[group_slug]:
            value = f"{group_slug}:{entry['value']}"
            group.values.append(FacetValue(entry.get("name") or entry["value"], int(entry["count"]),
                                           url_with(params, toggle=("tag", value)), value in chosen))
        groups.append(group)
    return groups


def price_facet(params: QueryDict, buckets: list[dict], currency: str = "") -> FacetGroup:
    group = FacetGroup("price", "Price")
    current = (params.get("price_min"), params.get("price_max"))
    for bucket in buckets:
        low, high = str(bucket["min"]), str(bucket["max"])
        # Buckets are min <= price < max while the price_max filter is inclusive, so stop a cent short.
        upper = str((Decimal(high) - Decimal("0.01")).quantize(Decimal("0.01")))
        selected = current == (low, upper)
        url = url_with(params, set_={"price_min": None, "price_max": None} if selected
                       else {"price_min": low, "price_max": upper})
        group.values.append(FacetValue(f"{money(low, currency)} – {money(high, currency)}", int(bucket["count"]),
                                       url, selected))
    return group


def active_filters(params: QueryDict, currency: str = "") -> list[ActiveFilter]:
    out = []
    for key in params:
        if not is_filter(key):
            continue
        for value in params.getlist(key):
            if not value.strip():
                continue
            if key == "category":
                label = f"Category: {value.strip('/').replace('/', ' › ')}"
            elif key == "price_min":
                label = f"Price from {money(value, currency)}"
            elif key == "price_max":
                label = f"Price up to {money(value, currency)}"
            elif key == "tag":
                group, _, slug = value.rpartition(":")
                label = f"{label_for(group)}: {slug}" if group else f"Tag: {slug}"
            else:
                label = f"{label_for(key[len(ATTR_PREFIX):])}: {value}"
            out.append(ActiveFilter(label, url_with(params, toggle=(key, value))))
    return out


@dataclass
class PageLink:
    number: int | None  # None marks a gap ("…")
    url: str = ""
    current: bool = False


@dataclass
class Pagination:
    page: int
    pages: int
    previous_url: str = ""
    next_url: str = ""
    first_url: str = ""
    links: list[PageLink] = field(default_factory=list)


def pagination(params: QueryDict, page: int, limit: int, total: int, window: int = 2) -> Pagination:
    pages = max(1, -(-int(total) // max(int(limit), 1)))
    page = max(int(page), 1)  # may be past the last page (an old link); the template says so

    def link(n: int) -> str:
        return url_with(params, set_={"page": None if n == 1 else str(n)}, keep_page=True)

    nav = Pagination(page, pages, first_url=link(1))
    if page > 1:
        nav.previous_url = link(min(page - 1, pages))
    if page < pages:
        nav.next_url = link(page + 1)
    shown = sorted({1, pages, *range(max(1, page - window), min(pages, page + window) + 1)})
    last = 0
    for n in shown:
        if n - last > 1:
            nav.links.append(PageLink(None))
        nav.links.append(PageLink(n, link(n), n == page))
        last = n
    return nav


@dataclass
class UnderstoodChip:
    """One span of the query as the engine read it, e.g. 'gray' as Colour: Grey."""

    span: str
    label: str  # "Colour: Grey"
    confidence: float
    source: str
    applied: bool
    remove_url: str = ""  # search again without this reading
    restore_url: str = ""  # undo a removal
    filter_url: str = ""  # make it a filter (hard)


def understood_chips(params: QueryDict, understood: list) -> list[UnderstoodChip]:
    """Chips for what query understanding read, with links that remove a reading (ignore=span), restore it,
    or turn it into a filter. Spans an explicit filter already decides are left out."""
    ignored = {v.lower() for raw in params.getlist("ignore") for v in split_values(raw)}
    chips = []
    for u in understood:
        span_ignored = u.span.lower() in ignored
        if not u.applied and not span_ignored:
            continue  # an explicit filter on the same attribute decides it
        name = "Category" if u.filter == "category" else "Tag" if u.filter == "tag" else label_for(u.attribute)
        value = u.value.replace("/", " › ") if u.filter == "category" else u.label
        chip = UnderstoodChip(u.span, f"{name}: {value}", u.confidence, u.source, not span_ignored)
        if span_ignored:
            existing = next(v for v in params.getlist("ignore") if u.span.lower() in {x.lower() for x in split_values(v)})
            chip.restore_url = url_with(params, toggle=("ignore", existing))
        else:
            chip.remove_url = url_with(params, toggle=("ignore", escape_value(u.span)))
            # attr.NAME values split at commas (escaped here); category paths and tags are taken whole.
            value = escape_value(u.value) if u.filter.startswith(ATTR_PREFIX) else u.value
            chip.filter_url = url_with(params, toggle=(u.filter, value))
        chips.append(chip)
    return chips
