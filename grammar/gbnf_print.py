"""Grammar IR -> GBNF text: a grammar built in code travels as an ordinary `{"grammar": ...}` spec.

`parse_gbnf(to_gbnf(g))` has the same language as `g`. Rule names are rewritten into GBNF's
alphabet (letters, digits, `-`) and kept unique; the start rule becomes `root`.
"""

from __future__ import annotations

import re

from .ir import Alt, Chars, Grammar, Node, Ref, Repeat, Seq

# Printed as themselves inside "..." / [...]; everything else is escaped.
_PLAIN = re.compile(r"[ !#-\[\]-~]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", '"': '\\"', "\\": "\\\\"}


def to_gbnf(grammar: Grammar) -> str:
    """One `name ::= body` line per rule, the start rule first (as `root`)."""
    names = _rule_names(grammar)
    order = [grammar.start] + [n for n in grammar.rules if n != grammar.start]
    return "".join(f"{names[n]} ::= {_body(grammar.rules[n], names)}\n" for n in order)


def _rule_names(grammar: Grammar) -> dict[str, str]:
    names = {grammar.start: "root"}
    taken = {"root"}
    for name in grammar.rules:
        if name == grammar.start:
            continue
        base = re.sub(r"[^A-Za-z0-9-]+", "-", name).strip("-") or "r"
        candidate, k = base, 1
        while candidate in taken:
            k += 1
            candidate = f"{base}-{k}"
        names[name] = candidate
        taken.add(candidate)
    return names


def _body(node: Node, names: dict[str, str]) -> str:
    if isinstance(node, Alt):
        if not node.items:
            return "[]"  # the empty class: matches nothing
        return " | ".join(_body(item, names) for item in node.items)
    return _sequence(node, names)


def _sequence(node: Node, names: dict[str, str]) -> str:
    if not isinstance(node, Seq):
        return _atom(node, names)
    if not node.items:
        return '""'
    out: list[str] = []
    text: list[str] = []  # a run of single characters, printed as one literal
    for item in node.items:
        if (
            isinstance(item, Chars)
            and len(item.ranges) == 1
            and item.ranges[0][0] == item.ranges[0][1]
        ):
            text.append(chr(item.ranges[0][0]))
            continue
        if text:
            out.append(_literal("".join(text)))
            text = []
        out.append(_atom(item, names))
    if text:
        out.append(_literal("".join(text)))
    return " ".join(out)


def _atom(node: Node, names: dict[str, str]) -> str:
    """`node` as one GBNF primary (parenthesized where needed)."""
    if isinstance(node, Ref):
        return names[node.name]
    if isinstance(node, Chars):
        return _char_class(node)
    if isinstance(node, Repeat):
        return _atom(node.item, names) + _suffix(node)
    if isinstance(node, Seq) and not node.items:
        return '""'
    return f"({_body(node, names)})"


def _suffix(node: Repeat) -> str:
    lo, hi = node.min, node.max
    if (lo, hi) == (0, None):
        return "*"
    if (lo, hi) == (1, None):
        return "+"
    if (lo, hi) == (0, 1):
        return "?"
    if hi is None:
        return f"{{{lo},}}"
    return f"{{{lo}}}" if lo == hi else f"{{{lo},{hi}}}"


def _char_class(node: Chars) -> str:
    if len(node.ranges) == 1 and node.ranges[0][0] == node.ranges[0][1]:
        return _literal(chr(node.ranges[0][0]))
    parts = []
    for lo, hi in node.ranges:
        parts.append(_class_char(lo) if lo == hi else f"{_class_char(lo)}-{_class_char(hi)}")
    return "[" + "".join(parts) + "]"


def _literal(text: str) -> str:
    return (
        '"'
        + "".join(_NAMED.get(c) or (c if _PLAIN.fullmatch(c) else _hex(ord(c))) for c in text)
        + '"'
    )


def _class_char(code: int) -> str:
    c = chr(code)
    if c in "]-^\\":
        return "\\" + c
    if c in "\n\r\t":
        return _NAMED[c]
    return c if _PLAIN.fullmatch(c) or c == '"' else _hex(code)


def _hex(code: int) -> str:
    if code <= 0xFF:
        return f"\\x{code:02X}"
    return f"\\u{code:04X}" if code <= 0xFFFF else f"\\U{code:08X}"
