"""The grammar rules a schema compiles into, and the JSON text pieces shared between them.

`JsonRules` owns everything one compile builds up: the named rules, the enum rules waiting for the
rest of the grammar (`pending`), memoized character encodings and `format` languages. JSON text
pieces: any value, strings (every escape, or json.dumps' spelling), literal `const`/`enum`
values, property names other than a given set.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from typing import Any

from .ir import (
    EMPTY,
    NOTHING,
    Alt,
    Chars,
    Node,
    Ref,
    Repeat,
    Seq,
    alt,
    lit,
    normalize_ranges,
    opt,
    seq,
    star,
    subtract,
)
from .json_automata import coreachable, product
from .json_checks import node_size
from .json_formats import format_node
from .json_keywords import canonical, property_key, refuse, string_literal
from .json_lexical import (
    ALL_CHARS,
    NEEDS_ESCAPE,
    escape,
    json_char_syntax,
    number_literal,
    number_syntax,
)


class JsonRules:
    """Rules under construction for one schema; `ws` goes between any two structural tokens."""

    def __init__(self, ws: Node, *, limited: bool = True) -> None:
        self.ws = ws
        self.limited = limited  # numbers without bounds: digits capped (`number_syntax`)
        self.sep = seq(ws, lit(","), ws)
        self.colon = seq(ws, lit(":"), ws)
        self.rules: dict[str, Node] = {}
        self.pending: dict[str, tuple[Node, Node, list[Any]]] = {}  # enum rule -> (lits, rest)
        self.memo: dict[Any, Node] = {}
        self.formats: dict[str, Node] = {}  # format name -> language (see `format_node`)
        self.ids = itertools.count()

    def fresh(self, hint: str) -> str:
        return f"{hint}.{next(self.ids)}"

    def share(self, node: Node, hint: str) -> Node:
        """`node`, or a reference to a new rule holding it when it is big (rules are built once)."""
        if node_size(node, 24) < 24:
            return node
        name = self.fresh(hint)
        self.rules[name] = node
        return Ref(name)

    # ---- values --------------------------------------------------------------------------------

    def any_value(self) -> Node:
        if "json.value" not in self.rules:
            self.rules["json.value"] = NOTHING
            value = Ref("json.value")
            member = seq(self.any_string(), self.colon, value)
            self.rules["json.value"] = alt(
                lit("null"),
                lit("true"),
                lit("false"),
                self.shared_rule("json.number", lambda: number_syntax(self.limited)),
                self.any_string(),
                self._sequence("[", value, "]"),
                self._sequence("{", member, "}"),
            )
        return Ref("json.value")

    def _sequence(self, open_: str, item: Node, close: str) -> Node:
        """`open_` (item (, item)*)? `close` with whitespace between tokens."""
        body = opt(seq(item, star(seq(self.sep, item)), self.ws))
        return seq(lit(open_), self.ws, body, lit(close))

    def shared_rule(self, name: str, build: Any) -> Node:
        if name not in self.rules:
            self.rules[name] = build()
        return Ref(name)

    def any_string(self) -> Node:
        return self.shared_rule(
            "json.string", lambda: seq(lit('"'), star(self.json_char()), lit('"'))
        )

    def json_char(self) -> Node:
        """One string character in any spelling JSON allows (raw, short escape, \\u, pair)."""
        return self.shared_rule("json.char", json_char_syntax)

    def literal(self, v: Any) -> Node:
        """`v` spelled as json.dumps spells it (numbers: plain decimal, as `number_literal`)."""
        if v is None or isinstance(v, bool):
            return lit(json.dumps(v))
        if isinstance(v, int | float):
            return number_literal(v)
        if isinstance(v, str):
            return lit(string_literal(v))
        if isinstance(v, list):
            items = [self.literal(x) for x in v]
        elif isinstance(v, dict):
            items = [seq(lit(string_literal(property_key(k))), self.colon, self.literal(x))
                     for k, x in v.items()]  # fmt: skip
        else:
            raise refuse(f"{v!r} is not a JSON value")
        open_, close = ("[", "]") if isinstance(v, list) else ("{", "}")
        if not items:
            return seq(lit(open_), self.ws, lit(close))
        body = [items[0], *(seq(self.sep, x) for x in items[1:])]
        return seq(lit(open_), self.ws, *body, self.ws, lit(close))

    def unique_array(self, values: list[Any], lo: int, hi: int | None) -> Node:
        """Arrays of distinct `values` (any order), lo..hi of them: one rule per set used."""
        literals = [self.literal(v) for v in values]
        top = len(values) if hi is None else min(hi, len(values))
        prefix = self.fresh("unique")

        def rule(used: int) -> Node:
            name = f"{prefix}.{used}"
            if name not in self.rules:
                self.rules[name] = NOTHING
                count = bin(used).count("1")
                options = [EMPTY] if count >= lo else []
                if count < top:
                    options += [
                        seq(self.sep, lit_, rule(used | 1 << i))
                        for i, lit_ in enumerate(literals)
                        if not used >> i & 1
                    ]
                self.rules[name] = alt(*options)
            return Ref(name)

        first = [seq(lit_, rule(1 << i)) for i, lit_ in enumerate(literals)] if top else []
        parts = [seq(lit("["), self.ws, lit("]"))] if lo == 0 else []
        if first:
            parts.append(seq(lit("["), self.ws, alt(*first), self.ws, lit("]")))
        return alt(*parts)

    def matches(self, node: Node, text: str) -> bool:
        """Is `text` in the language of `node` (pending enum rules as intersections)?"""
        try:
            return len(text) in self._ends(node, text, 0, {}, set())
        except RecursionError:
            raise refuse("an 'enum' value is too deeply nested to check") from None

    def _ends(self, node: Node, text: str, pos: int, memo: dict, active: set) -> frozenset[int]:
        key = (id(node), pos)
        if key in memo:
            return memo[key]
        if isinstance(node, Chars):
            c = ord(text[pos]) if pos < len(text) else -1
            out = frozenset([pos + 1] if any(lo <= c <= hi for lo, hi in node.ranges) else [])
        elif isinstance(node, Seq):
            cur = frozenset([pos])
            for item in node.items:
                cur = frozenset().union(*(self._ends(item, text, p, memo, active) for p in cur))
            out = cur
        elif isinstance(node, Alt):
            out = frozenset().union(*(self._ends(i, text, pos, memo, active) for i in node.items))
        elif isinstance(node, Repeat):
            cur, n = frozenset([pos]), 0
            while n < node.min and cur:
                cur = frozenset().union(
                    *(self._ends(node.item, text, p, memo, active) for p in cur)
                )
                n += 1
            seen, frontier = set(cur), cur
            while frontier and (node.max is None or n < node.max):
                nxt = set().union(*(self._ends(node.item, text, p, memo, active) for p in frontier))
                frontier, n = frozenset(nxt - seen), n + 1
                seen |= nxt
            out = frozenset(seen)
        else:
            if (node.name, pos) in active:
                return frozenset()  # left recursion: refused later by check_left_recursion
            active.add((node.name, pos))
            if node.name in self.pending:
                lits, rest, _ = self.pending[node.name]
                out = self._ends(lits, text, pos, memo, active) & self._ends(
                    rest, text, pos, memo, active
                )
            else:
                out = self._ends(self.rules[node.name], text, pos, memo, active)
            active.discard((node.name, pos))
        memo[key] = out
        return out

    def finalize_enums(self) -> None:
        """Give each pending enum rule the values its rest accepts (every rule is built now)."""
        for name, (_, rest, values) in self.pending.items():
            keep = [v for v in values if self.matches(rest, canonical(v, plain=True))]
            self.rules[name] = alt(*(self.literal(v) for v in keep))
        self.pending.clear()

    # ---- strings -------------------------------------------------------------------------------

    def format_language(self, name: str) -> Node:
        """The language (decoded characters) of `format` `name`, built once per compile."""
        return format_node(name, self.formats)

    def encode(self, node: Node) -> Node:
        """A decoded-character language as JSON string contents (mandatory escapes only)."""
        key = ("encode", id(node))
        if key not in self.memo:
            self.memo[key] = self.share(self._encode(node, {}), "chars")
            self.memo[("keep", id(node))] = node  # keeps id(node) unique while memoized
        return self.memo[key]

    def _encode(self, node: Node, memo: dict[int, Node]) -> Node:
        if id(node) in memo:
            return memo[id(node)]
        if isinstance(node, Chars):
            out = self.canonical_char(node.ranges)
        elif isinstance(node, Seq):
            out = seq(*(self._encode(i, memo) for i in node.items))
        elif isinstance(node, Alt):
            out = alt(*(self._encode(i, memo) for i in node.items))
        elif isinstance(node, Repeat):
            out = Repeat(self._encode(node.item, memo), node.min, node.max)
        else:
            raise refuse("a pattern may not refer to grammar rules")
        memo[id(node)] = out
        return out

    def canonical_char(self, ranges: Iterable[tuple[int, int]]) -> Node:
        """One character from `ranges` as json.dumps(ensure_ascii=False) spells it."""
        ranges = tuple(ranges)
        if ("char", ranges) in self.memo:
            return self.memo[("char", ranges)]
        key_ranges, ranges = ranges, normalize_ranges(ranges)
        raw = subtract(ranges, NEEDS_ESCAPE)
        special = tuple(c for lo, hi in ranges for c in range(lo, min(hi, 0x1F) + 1)) + tuple(
            c for c in (0x22, 0x5C) if any(lo <= c <= hi for lo, hi in ranges)
        )
        parts: list[Node] = [Chars(raw)] if raw else []
        if special:
            key = ("escapes", special)
            if key not in self.memo:
                self.memo[key] = self.share(alt(*(escape(c) for c in special)), "escapes")
            parts.append(self.memo[key])
        self.memo[("char", key_ranges)] = alt(*parts)
        return self.memo[("char", key_ranges)]

    def string_product(self, languages: list[Node], lo: int, hi: int | None) -> Node:
        """Strings in every language with lo..hi characters, as right-linear rules."""
        accept, edges = product(languages, lo, hi)
        return self.dfa_string(accept, edges)

    def dfa_string(self, accept: list[bool], edges: list[list[tuple[Any, int]]]) -> Node:
        """The strings an automaton over decoded characters accepts, as right-linear rules of
        JSON string contents (mandatory escapes only)."""
        live = coreachable(accept, edges)
        if not live[0]:
            return NOTHING
        prefix = self.fresh("str")
        for q, out in enumerate(edges):
            if not live[q]:
                continue
            by_target: dict[int, list[tuple[int, int]]] = {}
            for ranges, t in out:
                if live[t]:
                    by_target.setdefault(t, []).extend(ranges)
            parts = [EMPTY] if accept[q] else []
            for t, ranges in by_target.items():
                parts.append(seq(self.canonical_char(ranges), Ref(f"{prefix}.{t}")))
            self.rules[f"{prefix}.{q}"] = alt(*parts)
        return Ref(f"{prefix}.0")

    def key_except(self, names: list[str]) -> Node:
        """A property name (canonical spelling) that is none of `names`."""
        trie: dict = {}
        for name in names:
            t = trie
            for ch in name:
                t = t.setdefault(ch, {})
            t[None] = {}
        tail = star(self.canonical_char(ALL_CHARS))

        def build(t: dict) -> Node:
            kids = sorted(k for k in t if k is not None)
            parts = [] if None in t else [EMPTY]
            others = subtract(ALL_CHARS, [(ord(k), ord(k)) for k in kids])
            parts.append(seq(self.canonical_char(others), tail))
            parts += [seq(self.canonical_char([(ord(k), ord(k))]), build(t[k])) for k in kids]
            return alt(*parts)

        return seq(lit('"'), build(trie), lit('"'))
