"""Non-integer numbers between decimal bounds, as plain decimals (`-?(0|[1-9][0-9]*)(\\.[0-9]+)?`).

A bound such as `minimum: 1.5` is exact over plain decimals: digit strings compare digit by digit,
so the language is regular (with exponents it is not: `15e-1` against `1.5` needs counting). So
numbers with a nonzero bound, or with `multipleOf: 10^-k`, are written without an exponent; the
integer part and each fraction digit are checked against the bounds while they are tight.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

from .ir import EMPTY, NOTHING, Node, Repeat, alt, lit, seq
from .json_keywords import decimal_value, refuse
from .json_lexical import (
    BOUNDS,
    DIGIT,
    INT64,
    MAX_DIGITS,
    SIGNS_OUT,
    digits,
    integer,
    natural,
    signed_number,
)

Bound = tuple[Fraction, bool] | None  # (value, strict)
Rule = tuple[int | None, int | None]  # (places: only zeros after, cap: digits at most)


def fraction_digits(f: Fraction) -> str:
    """The digits after the point of `f` in [0, 1) (a finite decimal), no trailing zeros."""
    k = 0
    while (f * 10**k).denominator != 1:
        k += 1
    text = str(f * 10**k).rjust(k, "0") if k else ""
    return text.rstrip("0")


def bounded_number(s: dict, *, fractional: bool, limited: bool = False) -> Node:
    """The numbers valid under `s`'s `multipleOf` and bounds (integers only unless `fractional`).

    `limited`: without bounds, integers stay in the signed 64-bit range and other numbers within
    MAX_DIGITS digits each side of the point (every double has such a spelling), so a model
    cannot write digits forever. Nonzero bounds or `multipleOf` 10^-k on non-integers: plain
    decimals only (`json_decimal`).
    """
    places = None
    if "multipleOf" in s:
        m = Fraction(decimal_value(s["multipleOf"], "multipleOf"))
        if m <= 0 or (1 / m).denominator != 1:
            raise refuse("'multipleOf' is supported only when every integer satisfies it")
        if fractional and m != 1:
            places = len(str(int(1 / m))) - 1
            if 10**places != int(1 / m):
                raise refuse("'multipleOf' on non-integer numbers is supported for 10^-k only")
        else:
            fractional = False  # multipleOf 1: integers only
    bounds = {k: Fraction(decimal_value(s[k], k)) for k in BOUNDS if k in s}
    if not fractional:
        los = [math.ceil(v) for k, v in bounds.items() if k == "minimum"]
        los += [math.floor(v) + 1 for k, v in bounds.items() if k == "exclusiveMinimum"]
        his = [math.floor(v) for k, v in bounds.items() if k == "maximum"]
        his += [math.ceil(v) - 1 for k, v in bounds.items() if k == "exclusiveMaximum"]
        lo, hi = max(los) if los else None, min(his) if his else None
        if limited:  # an open side is capped unless the other bound is already past the cap
            lo = INT64[0] if lo is None and (hi is None or hi >= INT64[0]) else lo
            hi = INT64[1] if hi is None and (lo is None or lo <= INT64[1]) else hi
        return integer(lo, hi)
    if places is None and all(v == 0 for v in bounds.values()):
        signs = {"neg", "zero", "pos"}
        for k in bounds:
            signs -= SIGNS_OUT[k]
        return signed_number(signs, limited)
    lo = _tightest(bounds, "minimum", "exclusiveMinimum", max)
    hi = _tightest(bounds, "maximum", "exclusiveMaximum", min)
    return decimal_between(lo, hi, places=places, cap=MAX_DIGITS if limited else None)


def _tightest(bounds: dict[str, Fraction], inclusive: str, strict: str, pick: Callable) -> Bound:
    options = [(v, False) for k, v in bounds.items() if k == inclusive]
    options += [(v, True) for k, v in bounds.items() if k == strict]
    if not options:
        return None
    best = pick(v for v, _ in options)
    return (best, any(s for v, s in options if v == best))


def decimal_between(lo: Bound, hi: Bound, *, places: int | None, cap: int | None) -> Node:
    """Plain decimals x with lo <= x <= hi (strict where flagged), only zeros after `places`
    fraction digits; `cap`: at most that many digits before and after the point (beyond what
    the bounds themselves spell)."""
    parts = []
    zero = Fraction(0)
    if hi is None or hi[0] > 0 or (hi[0] == 0 and not hi[1]):
        low = lo if lo is not None and lo[0] >= 0 else (zero, False)
        parts.append(_magnitude(low, hi, (places, cap)))
    if lo is None or lo[0] < 0:
        # negative values: magnitudes in (0, -lo], or [-hi, -lo] when hi < 0
        top = None if lo is None else (-lo[0], lo[1])
        bottom = (zero, True) if hi is None or hi[0] >= 0 else (-hi[0], hi[1])
        parts.append(seq(lit("-"), _magnitude(bottom, top, (places, cap))))
    return alt(*parts)


def _magnitude(lo: tuple[Fraction, bool], hi: Bound, rule: Rule) -> Node:
    """Plain decimals without sign whose value is within lo..hi (0 <= lo)."""
    a, a_strict = lo
    limit = None if rule[1] is None else 10 ** rule[1] - 1
    if limit is not None and a >= limit:
        limit = None  # the schema's own bound is past the cap: the open side stays open
    ia, fa = int(a), fraction_digits(a - int(a))
    if hi is None:
        ib, fb, b_strict = limit, None, False
    else:
        ib, fb, b_strict = int(hi[0]), fraction_digits(hi[0] - int(hi[0])), hi[1]
        if limit is not None and ib > limit:
            ib, fb, b_strict = limit, None, False
    if ib is not None and (ia > ib):
        return NOTHING
    if ia == ib:
        return seq(natural(ia, ia), _fraction((fa, a_strict), (fb, b_strict), rule))
    parts = [seq(natural(ia, ia), _fraction((fa, a_strict), None, rule))]
    if ib is None or ia + 1 <= ib - 1:
        rest = natural(ia + 1, None if ib is None else ib - 1)
        parts.append(seq(rest, _fraction(None, None, rule)))
    if ib is not None:
        parts.append(seq(natural(ib, ib), _fraction(None, (fb, b_strict), rule)))
    return alt(*parts)


def _fraction(lo: tuple[str, bool] | None, hi: tuple[str | None, bool] | None, rule: Rule) -> Node:
    """`(\\.[0-9]+)?` whose value 0.D is >= / > lo's digits and <= / < hi's (None: no bound;
    hi digits None: below 1, any)."""
    if hi is not None and hi[0] is None:
        hi = None
    return alt(
        EMPTY if _end_ok(lo, hi) else NOTHING,
        seq(lit("."), _digits(lo, hi, 0, rule, first=True)),
    )


def _end_ok(lo: tuple[str, bool] | None, hi: tuple[str, bool] | None) -> bool:
    """May the digits stop here (the rest of the value is 0)?"""
    lo_ok = lo is None or (not lo[0].strip("0") and not lo[1])
    hi_ok = hi is None or not hi[1] or bool(hi[0].strip("0"))
    return lo_ok and hi_ok


def _digits(lo, hi, pos: int, rule: Rule, *, first: bool = False) -> Node:
    """Digit strings (non-empty when `first`) continuing a fraction at position `pos`."""
    places, cap = rule
    if lo is not None and not lo[0] and not lo[1]:
        lo = None  # >= 0.000...: always true
    if hi is not None and not hi[0]:
        if hi[1]:
            return NOTHING  # the rest < 0
        return NOTHING if lo is not None else _zeros(pos, int(first), cap)  # the rest 0
    if lo is None and hi is None:
        return _free(pos, rule, first)
    if hi is None and not lo[0]:  # the rest > 0: zeros, then a nonzero digit in time
        if places is None and cap is None:
            return seq(Repeat(lit("0"), 0, None), digits(1, 9), Repeat(DIGIT, 0, None))
        last = min(x for x in (places, cap) if x is not None)
        return alt(*(seq(Repeat(lit("0"), j - pos, j - pos), digits(1, 9),
                         _free(j + 1, rule, False)) for j in range(pos, last)))  # fmt: skip
    options = [] if first or not _end_ok(lo, hi) else [EMPTY]
    lo_digit = int(lo[0][0]) if lo is not None and lo[0] else 0
    hi_digit = int(hi[0][0]) if hi is not None and hi[0] else 0
    top = 0 if places is not None and pos >= places else 9
    for d in range(0, top + 1):
        if lo is not None and d < lo_digit:
            continue
        if hi is not None and d > hi_digit:
            continue
        nlo = (lo[0][1:], lo[1]) if lo is not None and d == lo_digit else None
        nhi = (hi[0][1:], hi[1]) if hi is not None and d == hi_digit else None
        options.append(seq(digits(d, d), _digits(nlo, nhi, pos + 1, rule)))
    return alt(*options)


def _free(pos: int, rule: Rule, first: bool) -> Node:
    """Any digit string from position `pos` (only zeros past `places`, `cap` digits at most)."""
    places, cap = rule
    least = 1 if first else 0
    room = None if cap is None else max(0, cap - pos)
    if room is not None and room < least:
        return NOTHING
    if places is None:
        return Repeat(DIGIT, least, room)
    left = max(0, places - pos)
    if room is not None:
        left = min(left, room)
    if left == 0:
        return _zeros(pos, least, cap)
    return seq(Repeat(DIGIT, least, left), _zeros(pos + left, 0, cap))


def _zeros(pos: int, least: int, cap: int | None) -> Node:
    room = None if cap is None else max(0, cap - pos)
    return NOTHING if room is not None and room < least else Repeat(lit("0"), least, room)
