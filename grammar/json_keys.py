"""Property names under `patternProperties`: which patterns a name matches decides its schema.

Every pattern (and the set of declared names) becomes a DFA over decoded characters;
one product of them all tells, for each name, the set of patterns it matches and whether it is
declared. `KeyClasses.languages()` gives, per set of matched patterns, the automaton of the
undeclared names matching exactly those patterns (the empty set: the names that
`additionalProperties` governs), for `JsonRules.dfa_string` to write out as JSON strings.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

from .ir import MAX_CODE_POINT, Node
from .json_automata import _Nfa
from .json_keywords import MAX_STATES, refuse

Ranges = tuple[tuple[int, int], ...]
MAX_PATTERNS = 6  # patternProperties entries: 2^n classes of names


class Dfa:
    """A DFA over code points: `edges[q]` = [(ranges, target)]; a missing move is a dead end."""

    def __init__(self, accept: list[bool], edges: list[list[tuple[Ranges, int]]]) -> None:
        self.accept = accept
        self.edges = edges

    @classmethod
    def of_node(cls, node: Node) -> Dfa:
        """Subset construction of a rule-free node's NFA."""
        nfa = _Nfa(node)
        return cls.of_nfa(nfa.accept, nfa.moves)

    @classmethod
    def of_nfa(cls, nfa_accept: list[bool], moves: list[list[tuple[Ranges, int]]]) -> Dfa:
        """Subset construction of an epsilon-free NFA (state 0 starts)."""
        start = frozenset([0])
        ids = {start: 0}
        order = [start]
        accept, edges = [], []
        for states in order:
            accept.append(any(nfa_accept[q] for q in states))
            out = []
            for ranges, targets in _split([m for q in states for m in moves[q]]):
                out.append((ranges, _intern(targets, ids, order)))
            edges.append(out)
        return cls(accept, edges)

    @classmethod
    def of_words(cls, words: Iterable[str]) -> Dfa:
        """Exactly `words` (a trie; the empty set gives a DFA accepting nothing)."""
        trie: list[dict[int, int]] = [{}]
        ends = [False]
        for word in words:
            q = 0
            for ch in word:
                if ord(ch) not in trie[q]:
                    trie.append({})
                    ends.append(False)
                    trie[q][ord(ch)] = len(trie) - 1
                q = trie[q][ord(ch)]
            ends[q] = True
        return cls(ends, [[(((c, c),), t) for c, t in sorted(kids.items())] for kids in trie])

    def accepts(self, word: str) -> bool:
        q: int | None = 0
        for ch in word:
            q = next((t for ranges, t in self.edges[q] if _within(ord(ch), ranges)), None)
            if q is None:
                return False
        return self.accept[q]


class KeyClasses:
    """The product of the pattern DFAs and the declared names' DFA."""

    def __init__(self, patterns: list[Dfa], declared: Dfa, allowed: Dfa | None = None) -> None:
        if len(patterns) > MAX_PATTERNS:
            raise refuse(f"more than {MAX_PATTERNS} 'patternProperties'")
        self.allowed = allowed is not None  # `propertyNames`: a name outside it is no name
        dfas = [*patterns, *([allowed] if allowed is not None else []), declared]
        start = (0,) * len(dfas)
        ids = {start: 0}
        order: list[tuple[int | None, ...]] = [start]
        self.edges: list[list[tuple[Ranges, int]]] = []
        for qs in order:
            moves = [dfa.edges[q] if q is not None else [] for dfa, q in zip(dfas, qs, strict=True)]
            out = []
            labelled = [(r, (i, t)) for i, m in enumerate(moves) for r, t in m]
            labelled.append((((0, MAX_CODE_POINT),), None))  # names matching nothing go on
            for ranges, targets in _split(labelled):
                tuple_: list[int | None] = [None] * len(dfas)
                for label in targets - {None}:
                    i, t = label
                    tuple_[i] = t
                out.append((ranges, _intern(tuple(tuple_), ids, order)))
            self.edges.append(out)
        self.states = order
        self.dfas = dfas

    def languages(self) -> dict[tuple[int, ...], list[bool]]:
        """Matched pattern indices -> the accepting states of undeclared names matching them."""
        n = len(self.dfas) - 1 - self.allowed
        out = {}
        for matched in itertools.chain.from_iterable(
            itertools.combinations(range(n), k) for k in range(n + 1)
        ):
            accept = [self._class(qs) == matched for qs in self.states]
            if any(accept):
                out[matched] = accept
        return out

    def _class(self, qs: tuple[int | None, ...]) -> tuple[int, ...] | None:
        *pats, declared = qs
        if declared is not None and self.dfas[-1].accept[declared]:
            return None
        if self.allowed:
            *pats, allowed = pats
            if allowed is None or not self.dfas[-2].accept[allowed]:
                return None
        return tuple(i for i, q in enumerate(pats) if q is not None and self.dfas[i].accept[q])


def _intern(key: Any, ids: dict[Any, int], order: list[Any]) -> int:
    """The state number of `key`, numbering it (and queueing it in `order`) when new."""
    if key not in ids:
        if len(ids) >= MAX_STATES:
            raise refuse("property-name patterns make too large an automaton")
        ids[key] = len(order)
        order.append(key)
    return ids[key]


def _within(c: int, ranges: Ranges) -> bool:
    return any(lo <= c <= hi for lo, hi in ranges)


def _split(moves: list[tuple[Ranges, object]]) -> list[tuple[Ranges, frozenset]]:
    """Partition the code points the moves cover by the set of move labels taken on each."""
    cuts = {0, MAX_CODE_POINT + 1}
    for ranges, _ in moves:
        for lo, hi in ranges:
            cuts.update((lo, hi + 1))
    bounds = sorted(cuts)
    by_set: dict[frozenset, list[tuple[int, int]]] = {}
    for lo, nxt in itertools.pairwise(bounds):
        labels = frozenset(t for ranges, t in moves if _within(lo, ranges))
        if labels:
            by_set.setdefault(labels, []).append((lo, nxt - 1))
    return [(_merge(r), labels) for labels, r in by_set.items()]


def _merge(ranges: list[tuple[int, int]]) -> Ranges:
    out: list[tuple[int, int]] = []
    for lo, hi in ranges:
        if out and out[-1][1] + 1 == lo:
            out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return tuple(out)
