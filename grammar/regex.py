"""Regular expressions (the common Python `re` / ECMAScript subset) -> grammar IR.

Supported: literals and escapes, `.`, classes with ranges and negation, `\\d \\w \\s` and their
negations (ASCII, as under `re.ASCII`), groups `(...)`, `(?:...)`, `(?P<n>...)`, `(?<n>...)`, `|`,
`* + ? {m} {m,} {m,n}` with lazy variants (same language), and `^`/`$` (and `\\A`, `\\Z`, `\\z`)
at the ends.
Refused: backreferences, lookaround, word boundaries, inline flags, anchors inside the pattern.
"""

from __future__ import annotations

from .ir import (
    EMPTY,
    MAX_CODE_POINT,
    Chars,
    Node,
    Repeat,
    UnsupportedConstraintError,
    alt,
    chars,
    complement,
    lit,
    normalize_ranges,
    seq,
    star,
)

DIGIT = ((0x30, 0x39),)
WORD = normalize_ranges([(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)])
SPACE = normalize_ranges([(9, 13), (32, 32)])
_SIMPLE = {"n": "\n", "r": "\r", "t": "\t", "f": "\f", "v": "\v", "0": "\0", "a": "\a"}
_CLASSES = {"d": (DIGIT, False), "D": (DIGIT, True), "w": (WORD, False), "W": (WORD, True)}
_CLASSES |= {"s": (SPACE, False), "S": (SPACE, True)}
MAX_REPEAT = 10_000


def regex_node(pattern: str, *, search: bool = False) -> Node:
    """The language of `pattern` under full-match semantics (`re.fullmatch`).

    With `search=True` (JSON Schema `pattern`: ECMAScript, unanchored), the pattern may match
    anywhere: unanchored ends get `.*` (any character, newlines included), and `.` also excludes
    `\\r`, U+2028 and U+2029 as in ECMAScript.
    """
    parser = _Parser(pattern, ecma=search)
    options = parser.parse()
    if not search:
        return alt(*(body for _, body, _ in options))
    anything = star(chars([(0, MAX_CODE_POINT)]))
    return alt(
        *(
            seq(*(() if start else (anything,)), body, *(() if end else (anything,)))
            for start, body, end in options
        )
    )


class _Parser:
    def __init__(self, pattern: str, *, ecma: bool) -> None:
        self.p = pattern
        self.pos = 0
        self.ecma = ecma

    def error(self, message: str) -> UnsupportedConstraintError:
        return UnsupportedConstraintError(f"regex {self.p!r} at {self.pos}: {message}")

    def peek(self, k: int = 0) -> str:
        i = self.pos + k
        return self.p[i] if i < len(self.p) else ""

    def parse(self) -> list[tuple[bool, Node, bool]]:
        """Top-level alternatives as (anchored at start, body, anchored at end)."""
        options = []
        while True:
            start = self._anchor(("^", "\\A"))
            body, end = self.sequence(top=True)
            options.append((start, body, end))
            if self.peek() == "|":
                self.pos += 1
                continue
            if self.pos < len(self.p):
                raise self.error("unbalanced ')'")
            return options

    def _anchor(self, marks: tuple[str, ...]) -> bool:
        for mark in marks:
            if self.p.startswith(mark, self.pos):
                self.pos += len(mark)
                return True
        return False

    def alternates(self) -> Node:
        options = [self.sequence(top=False)[0]]
        while self.peek() == "|":
            self.pos += 1
            options.append(self.sequence(top=False)[0])
        return alt(*options)

    def sequence(self, top: bool) -> tuple[Node, bool]:
        items: list[Node] = []
        while self.pos < len(self.p) and self.peek() not in "|)":
            if self.peek() in "^$" or self.p.startswith(("\\A", "\\Z", "\\z"), self.pos):
                if top and self._anchor(("$", "\\Z", "\\z")) and self.peek() in ("", "|"):
                    return seq(*items) if items else EMPTY, True
                raise self.error("anchors are supported only at the ends of the pattern")
            atom = self.atom()
            items.append(self.quantified(atom))
        return (seq(*items) if items else EMPTY), False

    def quantified(self, atom: Node) -> Node:
        while self.peek() and self.peek() in "*+?{":
            c = self.peek()
            if c == "{":
                low, high = self._bounds()
            else:
                self.pos += 1
                low, high = {"*": (0, None), "+": (1, None), "?": (0, 1)}[c]
            if (high or low) > MAX_REPEAT:
                raise self.error(f"repetition bound above {MAX_REPEAT}")
            atom = Repeat(atom, low, high)
            if self.peek() == "?":
                self.pos += 1  # lazy: same language
            elif self.peek() == "+":
                raise self.error("possessive quantifiers are not supported")
        return atom

    def _bounds(self) -> tuple[int, int | None]:
        end = self.p.find("}", self.pos)
        body = self.p[self.pos + 1 : end] if end > 0 else ""
        parts = body.split(",")
        if (
            end < 0
            or len(parts) > 2
            or not parts[0].isdigit()
            or (len(parts) == 2 and parts[1] and not parts[1].isdigit())
        ):
            raise self.error("a literal '{' must be escaped")
        self.pos = end + 1
        low = int(parts[0])
        high = low if len(parts) == 1 else (int(parts[1]) if parts[1] else None)
        if high is not None and high < low:
            raise self.error(f"repetition {{{body}}} has max < min")
        return low, high

    def atom(self) -> Node:
        c = self.peek()
        if c == "(":
            self.pos += 1
            if self.peek() == "?":
                if self.p.startswith("?:", self.pos):
                    self.pos += 2
                elif self.p.startswith(("?P<", "?<"), self.pos) and self.peek(2) not in "=!":
                    self.pos = self.p.index(">", self.pos) + 1
                else:
                    raise self.error("lookaround, inline flags and conditionals are not supported")
            inner = self.alternates()
            if self.peek() != ")":
                raise self.error("missing ')'")
            self.pos += 1
            return inner
        if c == "[":
            return self.char_class()
        if c == ".":
            self.pos += 1
            excluded = [(10, 10), (13, 13), (0x2028, 0x2029)] if self.ecma else [(10, 10)]
            return chars(excluded, negate=True)
        if c in "*+?":
            raise self.error(f"nothing to repeat before {c!r}")
        if c == "\\":
            ranges, negate = self.escape(in_class=False)
            return chars(ranges, negate=negate)
        self.pos += 1
        return lit(c)

    def escape(self, *, in_class: bool) -> tuple[tuple[tuple[int, int], ...], bool]:
        self.pos += 1
        e = self.peek()
        if not e:
            raise self.error("pattern ends with '\\'")
        self.pos += 1
        if e in _CLASSES:
            return _CLASSES[e]
        if e in _SIMPLE:
            code = ord(_SIMPLE[e])
        elif e in "xuU":
            n = {"x": 2, "u": 4, "U": 8}[e]
            digits = self.p[self.pos : self.pos + n]
            if len(digits) != n or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise self.error(f"bad \\{e} escape")
            self.pos += n
            code = int(digits, 16)
        elif e == "b" and in_class:
            code = 8
        elif e.isalnum():
            raise self.error(f"escape \\{e} is not supported")
        else:
            code = ord(e)
        return ((code, code),), False

    def char_class(self) -> Node:
        self.pos += 1
        negate = self.peek() == "^"
        if negate:
            self.pos += 1
        ranges: list[tuple[int, int]] = []
        first = True
        while first or self.peek() != "]":
            if not self.peek():
                raise self.error("unterminated character class")
            if self.p.startswith(("[:", "[=", "[."), self.pos):
                raise self.error("POSIX classes are not supported")
            lo, is_set = self._class_item()
            if not is_set and self.peek() == "-" and self.peek(1) not in ("]", ""):
                self.pos += 1
                hi, hi_set = self._class_item()
                if hi_set or hi[0][0] < lo[0][0]:
                    raise self.error("bad character range")
                ranges.append((lo[0][0], hi[0][0]))
            else:
                ranges.extend(lo)
            first = False
        self.pos += 1
        return Chars(complement(normalize_ranges(ranges))) if negate else chars(ranges)

    def _class_item(self) -> tuple[tuple[tuple[int, int], ...], bool]:
        if self.peek() == "\\":
            ranges, negate = self.escape(in_class=True)
            if negate:
                return complement(ranges), True
            return ranges, self.p[self.pos - 1] in _CLASSES
        c = self.peek()
        self.pos += 1
        return ((ord(c), ord(c)),), False
