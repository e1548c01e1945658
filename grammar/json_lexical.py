"""JSON's lexical pieces as grammar IR: strings, escapes, numbers, integer ranges.

Integers are spelled `-?(0|[1-9][0-9]*)`; `integer(lo, hi)` is the exact language of a range.
Escapes are those json.dumps writes (`escape`), or any JSON allows (`json_char_syntax`).
"""

from __future__ import annotations

import json

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
    subtract,
)
from .json_keywords import plain_decimal

ALL_CHARS = ((0, MAX_CODE_POINT),)
SHORT_ESCAPES = {0x22: '\\"', 0x5C: "\\\\", 0x08: "\\b", 0x0C: "\\f", 0x0A: "\\n", 0x0D: "\\r"}
SHORT_ESCAPES[0x09] = "\\t"
NEEDS_ESCAPE = ((0, 0x1F), (0x22, 0x22), (0x5C, 0x5C), SURROGATES)
DIGIT = chars([(0x30, 0x39)])
NONZERO = chars([(0x31, 0x39)])
BOUNDS = ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum")
SIGNS_OUT = {
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
INT64 = (-(2**63), 2**63 - 1)  # integers without bounds, unless unlimited
MAX_DIGITS = 20  # other numbers without bounds: digits before and after the point, unless unlimited
MAX_EXPONENT_DIGITS = 3


def number_syntax(limited: bool = False) -> Node:
    """Any JSON number; `limited`: at most MAX_DIGITS digits before and after the point."""
    int_digits = MAX_DIGITS - 1 if limited else None
    frac = seq(lit("."), Repeat(DIGIT, 1, MAX_DIGITS if limited else None))
    integer_part = alt(lit("0"), seq(NONZERO, Repeat(DIGIT, 0, int_digits)))
    return seq(opt(lit("-")), integer_part, opt(frac), opt(_exponent(limited)))


def _exponent(limited: bool) -> Node:
    sign = opt(chars([(0x2B, 0x2B), (0x2D, 0x2D)]))
    count = Repeat(DIGIT, 1, MAX_EXPONENT_DIGITS if limited else None)
    return seq(chars([(0x45, 0x45), (0x65, 0x65)]), sign, count)


def signed_number(signs: set[str], limited: bool) -> Node:
    """JSON numbers whose value is negative / zero / positive as `signs` allows."""
    if signs == {"neg", "zero", "pos"}:
        return number_syntax(limited)
    n = MAX_DIGITS if limited else None
    frac = seq(lit("."), Repeat(DIGIT, 1, n))
    nonzero = alt(
        seq(NONZERO, Repeat(DIGIT, 0, None if n is None else n - 1), opt(frac)),
        seq(lit("0."), Repeat(lit("0"), 0, None if n is None else n - 1), NONZERO,
            Repeat(DIGIT, 0, None if n is None else n - 1)),
    )  # fmt: skip
    exp = opt(_exponent(limited))
    parts = []
    if "pos" in signs:
        parts.append(seq(nonzero, exp))
    if "neg" in signs:
        parts.append(seq(lit("-"), nonzero, exp))
    if "zero" in signs:
        parts.append(seq(opt(lit("-")), lit("0"), opt(seq(lit("."), Repeat(lit("0"), 1, n))), exp))
    return alt(*parts)


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
