"""Checks for text and numbers that come from outside (API bodies, URLs, query strings, import files).

Pure Python (no Django), so any boundary can use it. Each check raises a ValueError subclass whose message
starts with the parameter's name and says what to change, e.g. "title: contains a NUL character (position 12)".
"""

from __future__ import annotations

import math
import unicodedata
from decimal import Decimal, InvalidOperation

# PostgreSQL's limits for the column types the models use.
INT32_MAX = 2**31 - 1  # integer / PositiveIntegerField
INT64_MAX = 2**63 - 1  # bigint / BigAutoField ids

_ALLOWED_MULTILINE = {"\t", "\n", "\r"}


class BadValue(ValueError):
    """A value from outside cannot be used; `name` is the parameter, `problem` what is wrong with it."""

    def __init__(self, name: str, problem: str):
        self.name = name
        self.problem = problem
        super().__init__(f"{name}: {problem}")


class BadText(BadValue):
    """A text value cannot be stored or used as it is."""


class BadNumber(BadValue):
    """A number is not a number, or is outside what the database column holds."""


class SkuConverter:
    """URL path converter for a sku: any characters but control characters (a NUL in a URL is a 404, not a
    database error). Registered as <sku:...> in mmsearch/urls.py."""

    regex = r"[^\x00-\x1f\x7f]+"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


def text_problem(value: str, *, multiline: bool = False) -> str | None:
    """Why `value` cannot be stored as text (None when it can): NUL, other control characters (tab, CR and
    newline only when `multiline`), lone surrogates. PostgreSQL refuses NUL; the rest is never wanted."""
    for pos, ch in enumerate(value):
        if ch == "\x00":
            return f"contains a NUL character (position {pos}); remove it"
        cat = unicodedata.category(ch)
        if cat == "Cc" and not (multiline and ch in _ALLOWED_MULTILINE):
            return f"contains the control character U+{ord(ch):04X} (position {pos}); remove it"
        if cat == "Cs":
            return f"contains a lone surrogate U+{ord(ch):04X} (position {pos}); send valid UTF-8"
    return None


def clean_text(
    value,
    *,
    name: str,
    max_length: int | None = None,
    allow_empty: bool = False,
    multiline: bool = False,
    strip: bool = True,
) -> str:
    """`value` as a clean string (stripped unless strip=False), or BadText naming `name`.

    multiline=True allows tab, CR and newline (descriptions); max_length counts characters as PostgreSQL
    varchar(n) does."""
    if not isinstance(value, str):
        raise BadText(name, f"must be text, not {type(value).__name__}")
    problem = text_problem(value, multiline=multiline)
    if problem:
        raise BadText(name, problem)
    if strip:
        value = value.strip()
    if not value and not allow_empty:
        raise BadText(name, "may not be empty")
    if max_length is not None and len(value) > max_length:
        raise BadText(name, f"is {len(value)} characters long; the limit is {max_length}")
    return value


def check_json_text(value, *, name: str, depth: int = 32) -> None:
    """Refuse what a PostgreSQL jsonb column refuses in a JSON value: NUL (and the other text problems) in any
    key or string, NaN and infinities, nesting deeper than `depth`."""
    if depth < 0:
        raise BadValue(name, "is nested too deeply")
    if isinstance(value, str):
        clean_text(value, name=name, allow_empty=True, multiline=True, strip=False)
    elif isinstance(value, float) and not math.isfinite(value):
        raise BadNumber(name, f"must be a finite number, not {value!r}")
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise BadValue(name, f"keys must be text, not {type(key).__name__}")
            problem = text_problem(key)
            if problem:
                raise BadText(name, f"key {key!r} {problem}")
            check_json_text(item, name=f"{name}.{key}", depth=depth - 1)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_json_text(item, name=f"{name}[{i}]", depth=depth - 1)


def clean_int(value, *, name: str, min_value: int = 0, max_value: int = INT32_MAX) -> int:
    """A whole number within [min_value, max_value] (default: what a PositiveIntegerField column holds)."""
    if isinstance(value, bool):
        raise BadNumber(name, "must be a whole number, not a boolean")
    if isinstance(value, str):
        clean_text(value, name=name)
        try:
            value = int(value.strip())
        except ValueError:
            raise BadNumber(name, f"must be a whole number, not {value!r}") from None
    if not isinstance(value, int):
        raise BadNumber(name, f"must be a whole number, not {type(value).__name__}")
    if not min_value <= value <= max_value:
        raise BadNumber(name, f"must be between {min_value} and {max_value}, not {value}")
    return value


def clean_decimal(value, *, name: str, max_digits: int, decimal_places: int, min_value=0) -> Decimal:
    """A number as the Decimal a numeric(max_digits, decimal_places) column stores, rounded to its places;
    BadNumber when it is not finite, below min_value or too large for the column."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise BadNumber(name, f"must be a number, not {type(value).__name__}")
    if isinstance(value, str):
        clean_text(value, name=name)
    try:
        number = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise BadNumber(name, f"is not a number: {value!r}") from None
    limit = Decimal(10) ** (max_digits - decimal_places)
    if not number.is_finite():
        raise BadNumber(name, f"must be a finite number, not {value!r}")
    try:
        number = number.quantize(Decimal(1).scaleb(-decimal_places))
    except InvalidOperation:
        raise BadNumber(name, f"must be below {limit}, not {value!r}") from None
    if (min_value is not None and number < min_value) or abs(number) >= limit:
        low = f"between {min_value} and" if min_value is not None else "below"
        raise BadNumber(name, f"must be {low} {limit} (exclusive), not {value!r}")
    return number
