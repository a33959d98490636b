"""mmsearch.validation: the boundary checks for text and numbers (pure Python, no database)."""

from __future__ import annotations

import math
import sys
import unicodedata
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmsearch.validation import (
    INT32_MAX,
    BadNumber,
    BadText,
    BadValue,
    check_json_text,
    clean_decimal,
    clean_int,
    clean_text,
    text_problem,
)

ANY_CHAR = st.characters(exclude_categories=())  # includes NUL, other controls and lone surrogates


def test_module_imports_no_django():
    """The module alone (without the mmsearch package's own imports) loads with the standard library only."""
    import subprocess

    import mmsearch.validation as module

    code = (
        "import importlib.util, sys; spec = importlib.util.spec_from_file_location('v', sys.argv[1]); "
        "spec.loader.exec_module(importlib.util.module_from_spec(spec)); sys.exit('django' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code, module.__file__]).returncode == 0


@pytest.mark.parametrize(
    "value, message",
    [
        ("Red tee\x00 XL", "title: contains a NUL character (position 7); remove it"),
        ("bell\x07", "title: contains the control character U+0007 (position 4)"),
        ("del\x7f", "title: contains the control character U+007F (position 3)"),
        ("c1\x85", "title: contains the control character U+0085 (position 2)"),
        ("two\nlines", "title: contains the control character U+000A (position 3)"),
        ("tab\there", "title: contains the control character U+0009 (position 3)"),
        ("half \ud83d", "title: contains a lone surrogate U+D83D (position 5)"),
        ("   ", "title: may not be empty"),
        ("x" * 11, "title: is 11 characters long; the limit is 10"),
        (17, "title: must be text, not int"),
        (None, "title: must be text, not NoneType"),
    ],
)
def test_clean_text_names_the_parameter_and_the_problem(value, message):
    with pytest.raises(BadText) as info:
        clean_text(value, name="title", max_length=10)
    assert str(info.value).startswith(message)
    assert info.value.name == "title" and isinstance(info.value, ValueError)


def test_clean_text_accepts_and_strips():
    assert clean_text("  Grüne Äpfel ✓ 🍏 ", name="t", max_length=15) == "Grüne Äpfel ✓ 🍏"
    assert clean_text("", name="t", allow_empty=True) == ""
    assert clean_text("a\tb\r\nc", name="d", multiline=True) == "a\tb\r\nc"
    assert clean_text(" keep ", name="t", strip=False) == " keep "
    assert clean_text("x" * 10, name="t", max_length=10) == "x" * 10
    # Format characters (zero-width joiner in emoji) are text, not control characters.
    assert clean_text("👩\u200d💻", name="t") == "👩\u200d💻"
    with pytest.raises(BadText, match="U+0000|NUL"):
        clean_text("a\x00", name="d", multiline=True)  # multiline allows tab/CR/LF only


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=ANY_CHAR, max_size=40))
def test_clean_text_property(value):
    """Either the text comes back (then it encodes as UTF-8 and has no C0/C1 control character) or BadText."""
    try:
        cleaned = clean_text(value, name="v", allow_empty=True)
    except BadText as exc:
        assert str(exc).startswith("v: ")
        return
    cleaned.encode("utf-8")
    assert "\x00" not in cleaned
    assert not any(unicodedata.category(c) in ("Cc", "Cs") for c in cleaned)
    assert text_problem(value) is None


def test_check_json_text():
    check_json_text({"colour": "Red", "size": 42, "w": 1.5, "tags": ["a", {"b": "c\nd"}], "none": None}, name="a")
    with pytest.raises(BadText, match=r"^attributes: key 'k\\x00' contains a NUL"):
        check_json_text({"k\x00": "v"}, name="attributes")
    with pytest.raises(BadText, match=r"^attributes\.k: contains a NUL character \(position 1\)"):
        check_json_text({"k": "v\x00"}, name="attributes")
    with pytest.raises(BadText, match=r"^a\.l\[1\]: contains a lone surrogate"):
        check_json_text({"l": ["ok", "\udc00"]}, name="a")
    with pytest.raises(BadNumber, match="finite"):
        check_json_text({"w": math.nan}, name="a")
    with pytest.raises(BadNumber, match="finite"):
        check_json_text([math.inf], name="a")
    deep: list = []
    for _ in range(40):
        deep = [deep]
    with pytest.raises(BadValue, match="nested too deeply"):
        check_json_text(deep, name="a")


def test_clean_int():
    assert clean_int(5, name="position") == 5
    assert clean_int(" 7 ", name="position") == 7
    assert clean_int(INT32_MAX, name="position") == INT32_MAX
    for bad, message in [
        (INT32_MAX + 1, f"position: must be between 0 and {INT32_MAX}, not {INT32_MAX + 1}"),
        (-1, "position: must be between 0"),
        (True, "position: must be a whole number, not a boolean"),
        (1.5, "position: must be a whole number, not float"),
        ("1e3", "position: must be a whole number, not '1e3'"),
        ("4\x00", "position: contains a NUL"),
    ]:
        with pytest.raises(BadNumber if "NUL" not in message else BadText) as info:
            clean_int(bad, name="position")
        assert str(info.value).startswith(message)


def test_clean_decimal_matches_a_numeric_column():
    kw = {"name": "price", "max_digits": 12, "decimal_places": 2}
    assert clean_decimal("9.999", **kw) == Decimal("10.00")
    assert clean_decimal(9.5, **kw) == Decimal("9.50")
    assert clean_decimal("9999999999.99", **kw) == Decimal("9999999999.99")
    for bad, message in [
        ("10000000000", "price: must be between 0 and 10000000000 (exclusive)"),
        ("1e400", "price: must be below"),
        (-0.01, "price: must be between 0"),
        ("NaN", "price: must be a finite number"),
        ("Infinity", "price: must be a finite number"),
        ("cheap", "price: is not a number: 'cheap'"),
        ([1], "price: must be a number, not list"),
        (False, "price: must be a number, not bool"),
    ]:
        with pytest.raises(BadValue) as info:
            clean_decimal(bad, **kw)
        assert str(info.value).startswith(message), (bad, str(info.value))


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.floats(), st.integers(), st.decimals(), st.text(max_size=30)))
def test_clean_decimal_property(value):
    """Whatever comes in, the result fits numeric(12, 2) and is non-negative, or BadValue says why not."""
    try:
        number = clean_decimal(value, name="price", max_digits=12, decimal_places=2)
    except BadValue:
        return
    assert number.is_finite() and 0 <= number < Decimal(10) ** 10
    assert number == number.quantize(Decimal("0.01"))
