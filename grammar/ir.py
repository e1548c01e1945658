"""The grammar IR every front end (GBNF, JSON Schema, regex, choice) produces.

A `Grammar` is a set of named rules; each rule's body is a regular expression over characters and
references to other rules (`Ref`). Characters are Unicode code points; the automaton matches their
UTF-8 encodings byte by byte, so a code point split across tokens works. Nodes are frozen and
hashable, so compiled grammars can be cached by value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

MAX_CODE_POINT = 0x10FFFF
SURROGATES = (0xD800, 0xDFFF)


class UnsupportedConstraintError(ValueError):
    """A constraint the compiler cannot honour exactly; the message names the feature."""


class ConstraintBudgetError(UnsupportedConstraintError):
    """A constraint whose automaton exceeds the size or time budget."""


@dataclass(frozen=True)
class Chars:
    """One character from a set of code-point ranges (inclusive, sorted, disjoint)."""

    ranges: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Seq:
    """The items one after another; `Seq(())` matches the empty string."""

    items: tuple[Node, ...]


@dataclass(frozen=True)
class Alt:
    """Any one of the items; `Alt(())` matches nothing."""

    items: tuple[Node, ...]


@dataclass(frozen=True)
class Repeat:
    """`item` repeated between `min` and `max` times (`max=None`: unbounded)."""

    item: Node
    min: int = 0
    max: int | None = None


@dataclass(frozen=True)
class Ref:
    """The rule called `name`."""

    name: str


Node = Chars | Seq | Alt | Repeat | Ref


@dataclass(frozen=True)
class Grammar:
    """Rules by name; the language is that of rule `start`."""

    rules: Mapping[str, Node] = field(hash=False)
    start: str = "root"
    ignored: tuple[str, ...] = field(default=(), compare=False)  # JSON Schema annotations dropped

    def __post_init__(self) -> None:
        if self.start not in self.rules:
            raise UnsupportedConstraintError(f"grammar has no start rule {self.start!r}")
        missing = sorted({r for node in self.rules.values() for r in refs(node)} - set(self.rules))
        if missing:
            raise UnsupportedConstraintError(f"grammar refers to undefined rules: {missing}")

    def key(self) -> tuple:
        """A hashable value identifying the grammar (for caches)."""
        return (self.start, tuple(sorted(self.rules.items())))


def refs(node: Node) -> Iterable[str]:
    """Names of the rules `node` refers to."""
    if isinstance(node, Ref):
        yield node.name
    elif isinstance(node, Seq | Alt):
        for item in node.items:
            yield from refs(item)
    elif isinstance(node, Repeat):
        yield from refs(node.item)


def normalize_ranges(ranges: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Sorted, merged, valid code-point ranges."""
    out: list[list[int]] = []
    for lo, hi in sorted((max(0, a), min(MAX_CODE_POINT, b)) for a, b in ranges):
        if lo > hi:
            continue
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return tuple((a, b) for a, b in out)


def chars(ranges: Iterable[tuple[int, int]], *, negate: bool = False) -> Chars:
    """A character class; `negate` complements it over all code points except surrogates."""
    rs = normalize_ranges(ranges)
    if negate:
        rs = complement(rs)
    return Chars(rs)


def complement(ranges: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    """Code points (no surrogates) not in `ranges`."""
    out, nxt = [], 0
    for lo, hi in ranges:
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= MAX_CODE_POINT:
        out.append((nxt, MAX_CODE_POINT))
    return subtract(tuple(out), (SURROGATES,))


def subtract(
    a: tuple[tuple[int, int], ...], b: Iterable[tuple[int, int]]
) -> tuple[tuple[int, int], ...]:
    """Ranges of `a` minus ranges of `b`."""
    out = list(a)
    for blo, bhi in b:
        nxt = []
        for lo, hi in out:
            if bhi < lo or blo > hi:
                nxt.append((lo, hi))
                continue
            if lo < blo:
                nxt.append((lo, blo - 1))
            if bhi < hi:
                nxt.append((bhi + 1, hi))
        out = nxt
    return normalize_ranges(out)


ANY_CHAR = Chars(complement(()))
EMPTY = Seq(())
NOTHING = Alt(())


def lit(text: str) -> Node:
    """The literal string `text`."""
    items = tuple(Chars(((ord(c), ord(c)),)) for c in text)
    return items[0] if len(items) == 1 else Seq(items)


def seq(*items: Node) -> Node:
    """Concatenation, flattening nested sequences."""
    flat: list[Node] = []
    for item in items:
        flat.extend(item.items if isinstance(item, Seq) else (item,))
    return flat[0] if len(flat) == 1 else Seq(tuple(flat))


def alt(*items: Node) -> Node:
    """Alternation, flattening nested alternations."""
    flat: list[Node] = []
    for item in items:
        for it in item.items if isinstance(item, Alt) else (item,):
            if it not in flat:
                flat.append(it)
    return flat[0] if len(flat) == 1 else Alt(tuple(flat))


def opt(item: Node) -> Node:
    return Repeat(item, 0, 1)


def star(item: Node) -> Node:
    return Repeat(item, 0, None)


def plus(item: Node) -> Node:
    return Repeat(item, 1, None)


def choice(options: Iterable[str]) -> Node:
    """Exactly one of the strings."""
    opts = list(dict.fromkeys(options))
    if not opts:
        raise UnsupportedConstraintError("choice needs at least one string")
    return alt(*(lit(o) for o in opts))
