"""JSON's lexical pieces as grammar IR: strings, escapes, numbers, integer ranges.

Integers are spelled `-?(0|[1-9][0-9]*)`; `integer(lo, hi)` is the exact language of a range.
Escapes are those json.dumps writes (`escape`), or any JSON allows (`json_char_syntax`).
"""

from __future__ import annotations

import json
import math
from fractions import Fraction

from .ir import (
    EMPTY,
    MAX_CODE_POINT,
    NOTHING,
    SURROGATES,
    Chars,
    Node,
    Repeat,
    alt,
    chars,
    lit,
    opt,
    plus,
    seq,
    star,
    subtract,
)
from .json_keywords import decimal_value, plain_decimal, refuse

ALL_CHARS = ((0, MAX_CODE_POINT),)
SHORT_ESCAPES = {0x22: '\\"', 0x5C: "\\\\", 0x08: "\\b", 0x0C: "\\f", 0x0A: "\\n", 0x0D: "\\r"}
SHORT_ESCAPES[0x09] = "\\t"
NEEDS_ESCAPE = ((0, 0x1F), (0x22, 0x22), (0x5C, 0x5C), SURROGATES)
DIGIT = chars([(0x30, 0x39)])
NONZERO = chars([(0x31, 0x39)])
_BOUNDS = ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum")
_SIGNS_OUT = {
    "minimum": {"neg"},
    "exclusiveMinimum": {"neg", "zero"},
    "maximum": {"pos"},
    "exclusiveMaximum": {"pos", "zero"},
}


def digits(lo: int, hi: int, base: int = 10) -> Chars:
    """Digit values lo..hi (hex letters in both cases)."""
    ranges = []
    for d in range(lo, hi + 1):
        for ch in {f"{d:x}", f"{d:X}"}:
            ranges.append((ord(ch), ord(ch)))
    return chars(ranges)


def fixed_width(lo: int, hi: int, width: int, base: int = 10) -> Node:
    """Numbers lo..hi written with exactly `width` digits (leading zeros included)."""
    if width == 0:
        return EMPTY
    p = base ** (width - 1)
    a, b = lo // p, hi // p
    if a == b:
        return seq(digits(a, a, base), fixed_width(lo % p, hi % p, width - 1, base))
    parts = []
    first, last = a, b
    if lo % p:
        parts.append(seq(digits(a, a, base), fixed_width(lo % p, p - 1, width - 1, base)))
        first = a + 1
    if hi % p != p - 1:
        last = b - 1
    if first <= last:
        tail = Repeat(digits(0, base - 1, base), width - 1, width - 1) if width > 1 else EMPTY
        parts.append(seq(digits(first, last, base), tail))
    if hi % p != p - 1:
        parts.append(seq(digits(b, b, base), fixed_width(0, hi % p, width - 1, base)))
    return alt(*parts)


def natural(lo: int, hi: int | None) -> Node:
    """Decimal spellings (no leading zeros) of the integers lo..hi, lo >= 0, hi None: unbounded."""
    parts: list[Node] = []
    if lo == 0:
        parts.append(lit("0"))
        lo = 1
    if hi is not None and lo > hi:
        return alt(*parts)
    wa = len(str(lo))
    wb = len(str(hi)) if hi is not None else wa
    for w in range(wa, wb + 1):
        a, b = max(lo, 10 ** (w - 1)), 10**w - 1 if hi is None else min(hi, 10**w - 1)
        if (a, b) == (10 ** (w - 1), 10**w - 1) and w not in (wa, wb):
            continue  # whole widths between wa and wb: one repeat below
        parts.append(fixed_width(a, b, w))
    if wb - wa > 1:
        parts.append(seq(NONZERO, Repeat(DIGIT, wa, wb - 2)))
    if hi is None:
        parts.append(seq(NONZERO, Repeat(DIGIT, wa, None)))
    return alt(*parts)


def integer(lo: int | None, hi: int | None) -> Node:
    """Integers lo..hi spelled `-?(0|[1-9][0-9]*)`."""
    if lo is not None and hi is not None and lo > hi:
        return NOTHING
    parts = []
    if hi is None or hi >= 0:
        parts.append(natural(max(lo, 0) if lo is not None else 0, hi))
    if lo is None or lo <= -1:
        magnitude_lo = 1 if hi is None or hi >= 0 else -hi
        parts.append(seq(lit("-"), natural(magnitude_lo, None if lo is None else -lo)))
    if (lo is None or lo <= 0) and (hi is None or hi >= 0):
        parts.append(lit("-0"))
    return alt(*parts)


FRAC = seq(lit("."), plus(DIGIT))
_EXP = seq(
    chars([(0x45, 0x45), (0x65, 0x65)]), opt(chars([(0x2B, 0x2B), (0x2D, 0x2D)])), plus(DIGIT)
)


def number_syntax() -> Node:
    return seq(opt(lit("-")), alt(lit("0"), seq(NONZERO, star(DIGIT))), opt(FRAC), opt(_EXP))


def _signed_number(signs: set[str]) -> Node:
    """JSON numbers whose value is negative / zero / positive as `signs` allows."""
    if signs == {"neg", "zero", "pos"}:
        return number_syntax()
    nonzero = alt(
        seq(NONZERO, star(DIGIT), opt(FRAC)), seq(lit("0."), star(lit("0")), NONZERO, star(DIGIT))
    )
    parts = []
    if "pos" in signs:
        parts.append(seq(nonzero, opt(_EXP)))
    if "neg" in signs:
        parts.append(seq(lit("-"), nonzero, opt(_EXP)))
    if "zero" in signs:
        parts.append(seq(opt(lit("-")), lit("0"), opt(seq(lit("."), plus(lit("0")))), opt(_EXP)))
    return alt(*parts)


def bounded_number(s: dict, *, fractional: bool) -> Node:
    """The numbers valid under `s`'s `multipleOf` and bounds (integers only unless `fractional`)."""
    if "multipleOf" in s:
        m = Fraction(decimal_value(s["multipleOf"], "multipleOf"))
        if m <= 0 or (1 / m).denominator != 1:
            raise refuse("'multipleOf' is supported only when every integer satisfies it")
        if fractional and m != 1:
            raise refuse("'multipleOf' other than 1 on non-integer numbers")
        fractional = False  # multipleOf 1: integers only
    bounds = {k: Fraction(decimal_value(s[k], k)) for k in _BOUNDS if k in s}
    if not fractional:
        los = [math.ceil(v) for k, v in bounds.items() if k == "minimum"]
        los += [math.floor(v) + 1 for k, v in bounds.items() if k == "exclusiveMinimum"]
        his = [math.floor(v) for k, v in bounds.items() if k == "maximum"]
        his += [math.ceil(v) - 1 for k, v in bounds.items() if k == "exclusiveMaximum"]
        lo = max(los) if los else None
        hi = min(his) if his else None
        return integer(lo, hi)
    signs = {"neg", "zero", "pos"}
    for k, v in bounds.items():
        if v != 0:
            raise refuse(f"{k!r} on non-integer numbers is supported only for 0")
        signs -= _SIGNS_OUT[k]
    return _signed_number(signs)


def number_literal(v: int | float) -> Node:
    """`v` in plain decimal (integer values as integers), or as json.dumps writes a fraction."""
    text = plain_decimal(v)
    node = alt(lit("0"), lit("-0")) if text == "0" else lit(text)
    dumped = json.dumps(v)
    return alt(node, lit(dumped)) if "." in text and "e" in dumped else node


def json_char_syntax() -> Node:
    hex_ = digits(0, 15, 16)
    bmp = alt(  # \uXXXX outside the surrogates
        seq(digits(0, 12, 16), Repeat(hex_, 3, 3)),
        seq(digits(13, 13, 16), digits(0, 7, 16), hex_, hex_),
        seq(digits(14, 15, 16), Repeat(hex_, 3, 3)),
    )
    high = seq(digits(13, 13, 16), digits(8, 11, 16), hex_, hex_)
    low = seq(digits(13, 13, 16), digits(12, 15, 16), hex_, hex_)
    escaped = alt(chars((ord(c), ord(c)) for c in '"\\/bfnrt'), seq(lit("u"), bmp),
                  seq(lit("u"), high, lit("\\u"), low))  # fmt: skip
    return alt(Chars(subtract(ALL_CHARS, NEEDS_ESCAPE)), seq(lit("\\"), escaped))


def escape(c: int) -> Node:
    """The escape json.dumps writes for `c` (hex digits in either case)."""
    if c in SHORT_ESCAPES:
        return lit(SHORT_ESCAPES[c])
    return seq(lit("\\u00"), digits(c >> 4, c >> 4, 16), digits(c & 15, c & 15, 16))
