"""`strings_from(spec)`: a hypothesis strategy for strings of a constraint's language.

Strings are derived from the constraint's grammar: valid JSON for a schema, sentences of a GBNF
grammar, matches of a regex. Past `max_depth` nested rules each choice takes the alternative
with the shallowest derivation, so recursive grammars still give finite strings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from hypothesis import strategies as st

from jaxserve.grammar import Grammar, build_grammar
from jaxserve.grammar.ir import Alt, Chars, Node, Ref, Repeat, Seq


def strings_from(
    spec: Mapping[str, Any], *, max_depth: int = 6, max_repeat: int = 4
) -> st.SearchStrategy[str]:
    """Strings `text` with `jaxserve.grammar.matches(spec, text)` true."""
    grammar = build_grammar(spec)
    heights = _heights(grammar)
    if math.isinf(heights[grammar.start]):
        raise ValueError("the constraint's language is empty")

    @st.composite
    def strings(draw) -> str:
        out: list[str] = []

        def height(node: Node) -> float:
            return _height(node, heights)

        def gen(node: Node, depth: int) -> None:
            shallow = depth > max_depth
            if isinstance(node, Chars):
                lo, hi = draw(st.sampled_from(node.ranges))
                out.append(chr(draw(st.integers(lo, hi))))
            elif isinstance(node, Seq):
                for item in node.items:
                    gen(item, depth)
            elif isinstance(node, Alt):
                options = [o for o in node.items if not math.isinf(height(o))]
                if shallow:
                    best = min(height(o) for o in options)
                    options = [o for o in options if height(o) == best]
                gen(draw(st.sampled_from(options)), depth)
            elif isinstance(node, Repeat):
                high = node.min if shallow else node.min + max_repeat
                if node.max is not None:
                    high = min(high, node.max)
                for _ in range(draw(st.integers(node.min, max(node.min, high)))):
                    gen(node.item, depth)
            elif isinstance(node, Ref):
                gen(grammar.rules[node.name], depth + 1)

        gen(Ref(grammar.start), 0)
        return "".join(out)

    return strings()


def _height(node: Node, heights: Mapping[str, float]) -> float:
    """Shallowest derivation of `node` in rule calls (inf: derives no string)."""
    if isinstance(node, Chars):
        return 0 if node.ranges else math.inf
    if isinstance(node, Seq):
        return max((_height(i, heights) for i in node.items), default=0)
    if isinstance(node, Alt):
        return min((_height(i, heights) for i in node.items), default=math.inf)
    if isinstance(node, Repeat):
        return 0 if node.min == 0 else _height(node.item, heights)
    return 1 + heights[node.name]


def _heights(grammar: Grammar) -> dict[str, float]:
    heights = {name: math.inf for name in grammar.rules}
    changed = True
    while changed:
        changed = False
        for name, body in grammar.rules.items():
            h = _height(body, heights)
            if h < heights[name]:
                heights[name], changed = h, True
    return heights
