"""A lazily determinized byte automaton over a grammar's rule network.

A DFA state is the set of parser stacks alive after reading some bytes (each stack a chain of
rule return states, interned as ints) plus whether the input so far is complete. Rows of the
transition table `[states, 256]` are filled on first use, so grammars with unbounded recursion
still run: only the configurations a request reaches are ever built. State 0 is dead.
"""

from __future__ import annotations

import time

import numpy as np

from .ir import ConstraintBudgetError, Grammar, UnsupportedConstraintError
from .nfa import build_network

DEAD = 0
MAX_STACK_DEPTH = 2_000
MAX_STACKS = 4_000


class Automaton:
    """Byte-level acceptor for one grammar; `step`/`row` build states on demand."""

    def __init__(
        self, grammar: Grammar, *, max_states: int = 200_000, deadline: float | None = None
    ) -> None:
        self.deadline = deadline  # time.monotonic() value; building states past it raises
        self.net = build_network(grammar)
        self.max_states = max_states
        self._stack_ids: dict[tuple[int, int], int] = {}
        self._stack_state: list[int] = []
        self._stack_parent: list[int] = []
        self._stack_depth: list[int] = []
        self._state_ids: dict[tuple[frozenset[int], bool], int] = {}
        self._states: list[frozenset[int]] = []
        self.accepting = np.zeros(64, bool)
        self.table = np.full((64, 256), -1, np.int32)
        self._closure_cache: dict[frozenset[int], int] = {}
        self.loops_non_ascii: dict[int, bool] = {}  # state -> every non-ASCII char loops back
        self._intern_state(frozenset(), False)  # DEAD
        self.table[DEAD] = DEAD
        self.start = self._closure([self._stack(self.net.start, -1)])

    @property
    def num_states(self) -> int:
        return len(self._states)

    def step(self, state: int, byte: int) -> int:
        """The state after `byte` (DEAD if the byte cannot follow)."""
        nxt = self.table[state, byte]
        if nxt < 0:
            self.fill_rows([state])
            nxt = self.table[state, byte]
        return int(nxt)

    def walk(self, state: int, data: bytes) -> int:
        for b in data:
            if state == DEAD:
                return DEAD
            state = self.step(state, b)
        return state

    def accepts(self, text: str | bytes) -> bool:
        """Is `text` a complete string of the grammar's language?"""
        data = text.encode() if isinstance(text, str) else text
        state = self.walk(self.start, data)  # may grow the arrays: index them after
        return bool(self.accepting[state])

    def is_live(self, state: int) -> bool:
        """Can the input reach a complete string from `state`? (Dead states never can.)"""
        return state != DEAD

    def fill_rows(self, states: np.ndarray | list[int]) -> None:
        """Compute all 256 transitions of each state whose row is still unknown."""
        for s in states:
            s = int(s)
            if self.table[s, 0] >= 0 and (self.table[s] >= 0).all():
                continue
            if self.deadline is not None and time.monotonic() > self.deadline:
                raise ConstraintBudgetError("constraint exceeded its compile time budget")
            edges = []
            for sid in self._states[s]:
                q, parent = self._stack_state[sid], self._stack_parent[sid]
                for lo, hi, t in self.net.edges[q]:
                    edges.append((lo, hi, self._stack(t, parent)))
            # Bytes between consecutive edge boundaries share their target stacks.
            points = sorted({0, 256, *(lo for lo, _, _ in edges), *(hi + 1 for _, hi, _ in edges)})
            row = np.empty(256, np.int32)
            for a, b in zip(points, points[1:], strict=False):
                pre = frozenset(t for lo, hi, t in edges if lo <= a <= hi)
                row[a:b] = self._closure(pre) if pre else DEAD
            self.table[s] = row

    def _stack(self, state: int, parent: int) -> int:
        key = (state, parent)
        sid = self._stack_ids.get(key)
        if sid is None:
            depth = 1 + (self._stack_depth[parent] if parent >= 0 else 0)
            if depth > MAX_STACK_DEPTH:
                raise UnsupportedConstraintError(
                    "grammar nests rules deeper than "
                    f"{MAX_STACK_DEPTH} levels (indirect left recursion is not supported)"
                )
            sid = len(self._stack_state)
            self._stack_ids[key] = sid
            self._stack_state.append(state)
            self._stack_parent.append(parent)
            self._stack_depth.append(depth)
        return sid

    def _closure(self, stacks: frozenset[int] | list[int]) -> int:
        """Follow epsilons, calls and returns; keep stacks waiting on a byte."""
        key = frozenset(stacks)
        cached = self._closure_cache.get(key)
        if cached is not None:
            return cached
        net = self.net
        seen: set[int] = set()
        keep: set[int] = set()
        accept = False
        work = list(key)
        while work:
            sid = work.pop()
            if sid in seen:
                continue
            seen.add(sid)
            q, parent = self._stack_state[sid], self._stack_parent[sid]
            if net.edges[q]:
                keep.add(sid)
            for t in net.eps[q]:
                work.append(self._stack(t, parent))
            for rule_start, ret in net.calls[q]:
                frame = parent if net.tail[ret] else self._stack(ret, parent)
                work.append(self._stack(rule_start, frame))
            if net.final[q]:
                if parent < 0:
                    accept = True
                else:
                    work.append(parent)
            if len(seen) > 50 * MAX_STACKS:
                raise ConstraintBudgetError("grammar is too ambiguous to track")
        if len(keep) > MAX_STACKS:
            raise ConstraintBudgetError(f"grammar is ambiguous beyond {MAX_STACKS} parses")
        state = self._intern_state(frozenset(keep), accept)
        self._closure_cache[key] = state
        return state

    def _intern_state(self, stacks: frozenset[int], accept: bool) -> int:
        key = (stacks, accept)
        state = self._state_ids.get(key)
        if state is not None:
            return state
        state = len(self._states)
        if state >= self.max_states:
            raise ConstraintBudgetError(f"grammar needs more than {self.max_states} states")
        self._state_ids[key] = state
        self._states.append(stacks)
        if state >= len(self.accepting):
            grow = len(self.accepting)
            self.accepting = np.concatenate([self.accepting, np.zeros(grow, bool)])
            self.table = np.concatenate([self.table, np.full((grow, 256), -1, np.int32)])
        self.accepting[state] = accept
        return state
