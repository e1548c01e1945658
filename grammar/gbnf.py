"""GBNF (llama.cpp's grammar dialect) -> grammar IR.

Rules `name ::= body`; literals `"..."`, classes `[...]`/`[^...]` with ranges, `.`, groups, `|`,
`* + ?`, `{m}`, `{m,}`, `{m,n}`, `#` comments, escapes `\\xXX \\uXXXX \\UXXXXXXXX \\t \\n \\r`.
A newline ends a rule except inside parentheses or after `|`. Left recursion is rewritten, not
rejected. Token references (`<[id]>`, `<token>`) are refused.
"""

from __future__ import annotations

from .ir import (
    ANY_CHAR,
    EMPTY,
    Grammar,
    Node,
    Ref,
    Repeat,
    UnsupportedConstraintError,
    alt,
    chars,
    lit,
    seq,
)

_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "0": "\0", "f": "\f", "v": "\v", "a": "\a", "b": "\b"}
_HEX_LENGTHS = {"x": 2, "u": 4, "U": 8}


class GBNFSyntaxError(UnsupportedConstraintError):
    """The grammar text does not parse; the message gives the line and column."""


def parse_gbnf(text: str, *, start: str = "root") -> Grammar:
    """Parse a GBNF grammar; the language is that of rule `start`."""
    return Grammar(_Parser(text).parse(), start)


def _is_name_char(c: str) -> bool:
    return c.isascii() and (c.isalnum() or c in "-_")


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, message: str) -> GBNFSyntaxError:
        line = self.text.count("\n", 0, self.pos) + 1
        col = self.pos - (self.text.rfind("\n", 0, self.pos) + 1) + 1
        return GBNFSyntaxError(f"GBNF syntax error at line {line}, column {col}: {message}")

    def peek(self, k: int = 0) -> str:
        i = self.pos + k
        return self.text[i] if i < len(self.text) else ""

    def skip_space(self, newlines: bool) -> None:
        while self.pos < len(self.text):
            c = self.text[self.pos]
            if c == "#":
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
            elif c in " \t" or (newlines and c in "\r\n"):
                self.pos += 1
            else:
                return

    def parse(self) -> dict[str, Node]:
        rules: dict[str, Node] = {}
        self.skip_space(True)
        while self.pos < len(self.text):
            name = self.name()
            self.skip_space(False)
            if not self.text.startswith("::=", self.pos):
                raise self.error(f"expected '::=' after rule name {name!r}")
            self.pos += 3
            self.skip_space(True)
            body = self.alternates(nested=False)
            if name in rules:
                raise self.error(f"rule {name!r} is defined twice")
            rules[name] = body
            if self.pos < len(self.text) and self.peek() not in "\r\n":
                raise self.error(f"unexpected {self.peek()!r}")
            self.skip_space(True)
        if not rules:
            raise GBNFSyntaxError("GBNF grammar is empty")
        return rules

    def name(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and _is_name_char(self.text[self.pos]):
            self.pos += 1
        if self.pos == start:
            raise self.error("expected a rule name")
        return self.text[start : self.pos]

    def alternates(self, nested: bool) -> Node:
        options = [self.sequence(nested)]
        while self.peek() == "|":
            self.pos += 1
            self.skip_space(True)
            options.append(self.sequence(nested))
        return alt(*options)

    def sequence(self, nested: bool) -> Node:
        items: list[Node] = []
        while self.pos < len(self.text):
            c = self.peek()
            if c == '"':
                self.pos += 1
                text = []
                while self.peek() != '"':
                    if not self.peek():
                        raise self.error("unterminated string literal")
                    text.append(self.char())
                self.pos += 1
                items.append(lit("".join(text)) if text else EMPTY)
            elif c == "[":
                items.append(self.char_class())
            elif c == "(":
                self.pos += 1
                self.skip_space(True)
                inner = self.alternates(nested=True)
                if self.peek() != ")":
                    raise self.error("expected ')'")
                self.pos += 1
                items.append(inner)
            elif c == ".":
                self.pos += 1
                items.append(ANY_CHAR)
            elif c in "*+?{":
                if not items:
                    raise self.error(f"{c!r} must follow a symbol")
                items[-1] = self.repetition(items[-1])
            elif c in "<!":
                raise UnsupportedConstraintError(
                    "GBNF token references (<[id]>, <token>, !<...>) are not supported"
                )
            elif _is_name_char(c):
                items.append(Ref(self.name()))
            else:
                break
            self.skip_space(nested)
        return seq(*items) if items else EMPTY

    def repetition(self, item: Node) -> Node:
        c = self.peek()
        self.pos += 1
        if c == "*":
            return Repeat(item, 0, None)
        if c == "+":
            return Repeat(item, 1, None)
        if c == "?":
            return Repeat(item, 0, 1)
        self.skip_space(False)
        low = self.integer()
        high: int | None = low
        self.skip_space(False)
        if self.peek() == ",":
            self.pos += 1
            self.skip_space(False)
            high = self.integer() if self.peek().isdigit() else None
            self.skip_space(False)
        if self.peek() != "}":
            raise self.error("expected '}'")
        self.pos += 1
        if high is not None and high < low:
            raise self.error(f"repetition {{{low},{high}}} has max < min")
        return Repeat(item, low, high)

    def integer(self) -> int:
        start = self.pos
        while self.peek().isdigit():
            self.pos += 1
        if start == self.pos:
            raise self.error("expected a number")
        return int(self.text[start : self.pos])

    def char(self) -> str:
        c = self.peek()
        if not c:
            raise self.error("unexpected end of grammar")
        self.pos += 1
        if c != "\\":
            return c
        e = self.peek()
        if not e:
            raise self.error("unexpected end after '\\'")
        self.pos += 1
        if e in _HEX_LENGTHS:
            digits = self.text[self.pos : self.pos + _HEX_LENGTHS[e]]
            if len(digits) != _HEX_LENGTHS[e] or any(
                d not in "0123456789abcdefABCDEF" for d in digits
            ):
                raise self.error(f"bad \\{e} escape")
            self.pos += len(digits)
            code = int(digits, 16)
            if code > 0x10FFFF:
                raise self.error(f"code point {code:#x} is out of range")
            return chr(code)
        return _ESCAPES.get(e, e)

    def char_class(self) -> Node:
        self.pos += 1
        negate = self.peek() == "^"
        if negate:
            self.pos += 1
        ranges = []
        while self.peek() != "]":
            if not self.peek():
                raise self.error("unterminated character class")
            lo = self.char()
            hi = lo
            if self.peek() == "-" and self.peek(1) not in ("]", ""):
                self.pos += 1
                hi = self.char()
            if ord(hi) < ord(lo):
                raise self.error(f"character range {lo!r}-{hi!r} is reversed")
            ranges.append((ord(lo), ord(hi)))
        self.pos += 1
        return chars(ranges, negate=negate)
