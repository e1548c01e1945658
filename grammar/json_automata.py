"""Character automata: how `pattern`, `format` and `minLength`/`maxLength` are intersected.

Each language (a rule-free IR node over decoded characters) becomes an epsilon-free NFA; `product`
runs them in lockstep with a character counter, so the result is exact and stays regular.
"""

from __future__ import annotations

import itertools
from typing import Any

from .ir import Alt, Chars, Node, Repeat, Seq, normalize_ranges
from .json_keywords import MAX_STATES, refuse

Edges = list[list[tuple[tuple[tuple[int, int], ...], int]]]  # per state: [(ranges, target)]


def product(languages: list[Node], lo: int, hi: int | None) -> tuple[list[bool], Edges]:
    """The product automaton of `languages` and a lo..hi character counter: (accept, edges).

    State 0 starts; `edges[q]` = [(ranges, target)], reachable states only.
    """
    nfas = [_Nfa(n) for n in languages]
    cap = hi if hi is not None else lo
    start = ((0,) * len(nfas), 0)
    ids = {start: 0}
    order = [start]
    edges: Edges = []
    accept: list[bool] = []
    for qs, count in order:
        accept.append(count >= lo and all(n.accept[q] for n, q in zip(nfas, qs, strict=True)))
        out = []
        if hi is None or count < hi:
            moves = [n.moves[q] for n, q in zip(nfas, qs, strict=True)]
            for combo in itertools.product(*moves):
                ranges = combo[0][0]
                for r, _ in combo[1:]:
                    ranges = _intersect(ranges, r)
                if not ranges:
                    continue
                target = (tuple(t for _, t in combo), min(count + 1, cap))
                if target not in ids:
                    if len(ids) >= MAX_STATES:
                        raise refuse(
                            "'pattern'/'format'/'minLength'/'maxLength' combine into too "
                            "large an automaton"
                        )
                    ids[target] = len(order)
                    order.append(target)
                out.append((ranges, ids[target]))
        edges.append(out)
    return accept, edges


def length_range(node: Node) -> tuple[int, int | None]:
    """Fewest and most characters of a rule-free node (None: unbounded)."""
    if isinstance(node, Chars):
        return 1, 1
    if isinstance(node, Seq | Alt):
        ranges = [length_range(i) for i in node.items]
        if isinstance(node, Seq):
            his = [b for _, b in ranges]
            return sum(a for a, _ in ranges), None if None in his else sum(his)
        if not ranges:
            return 0, 0
        his = [b for _, b in ranges]
        return min(a for a, _ in ranges), None if None in his else max(his)
    if isinstance(node, Repeat):
        a, b = length_range(node.item)
        if node.max == 0 or b == 0:
            return 0, 0
        return a * node.min, None if node.max is None or b is None else b * node.max
    return 0, None


def _intersect(a: tuple[tuple[int, int], ...], b: tuple[tuple[int, int], ...]) -> tuple:
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo <= hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return tuple(out)


def coreachable(accept: list[bool], edges: list[list[tuple[Any, int]]]) -> list[bool]:
    back: list[list[int]] = [[] for _ in accept]
    for q, out in enumerate(edges):
        for _, t in out:
            back[t].append(q)
    live = list(accept)
    work = [q for q, a in enumerate(accept) if a]
    while work:
        for p in back[work.pop()]:
            if not live[p]:
                live[p] = True
                work.append(p)
    return live


class _Nfa:
    """Epsilon-free NFA of a rule-free node over characters: `moves[q]` = [(ranges, target)]."""

    def __init__(self, node: Node) -> None:
        self.edges: list[list[tuple[tuple, int]]] = []
        self.eps: list[list[int]] = []
        start = self._new()
        end = self._build(node, start)
        self.moves: list[list[tuple[tuple, int]]] = []
        self.accept: list[bool] = []
        for q in range(len(self.edges)):
            closure = self._closure(q)
            by_target: dict[int, list[tuple[int, int]]] = {}
            for p in closure:
                for ranges, t in self.edges[p]:
                    by_target.setdefault(t, []).extend(ranges)
            self.moves.append([(normalize_ranges(r), t) for t, r in by_target.items()])
            self.accept.append(end in closure)

    def _new(self) -> int:
        if len(self.edges) >= MAX_STATES:
            raise refuse("'pattern'/'format' (with 'minLength'/'maxLength') is too large")
        self.edges.append([])
        self.eps.append([])
        return len(self.edges) - 1

    def _build(self, node: Node, q: int) -> int:
        if isinstance(node, Chars):
            end = self._new()
            self.edges[q].append((node.ranges, end))
            return end
        if isinstance(node, Seq):
            for item in node.items:
                q = self._build(item, q)
            return q
        if isinstance(node, Alt):
            end = self._new()
            for item in node.items:
                s = self._new()
                self.eps[q].append(s)
                self.eps[self._build(item, s)].append(end)
            return end
        if isinstance(node, Repeat):
            for _ in range(node.min):
                q = self._build(node.item, q)
            end = self._new()
            if node.max is None:
                loop = self._new()
                self.eps[q].append(loop)
                self.eps[self._build(node.item, loop)].append(loop)
                self.eps[loop].append(end)
                return end
            for _ in range(node.max - node.min):
                self.eps[q].append(end)
                q = self._build(node.item, q)
            self.eps[q].append(end)
            return end
        raise refuse("a pattern may not refer to grammar rules")

    def _closure(self, q: int) -> set[int]:
        seen, work = {q}, [q]
        while work:
            for t in self.eps[work.pop()]:
                if t not in seen:
                    seen.add(t)
                    work.append(t)
        return seen
