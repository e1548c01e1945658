"""Dense tables of a regular constraint, so the device can mask and advance it on its own.

A constraint qualifies when its byte automaton is finite within `max_states` (regex, choice,
JSON schemas without unbounded recursion): every state is built, and the token mask of each
state reachable at a token boundary is computed. The device then advances a row by walking the
sampled token's bytes through `byte_next` and masks the next draw with `masks[state]`; local
state ids are the automaton's own, so a host matcher's state maps to the table directly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .automaton import DEAD
from .compiled import CompiledGrammar


@dataclass(frozen=True)
class ExportedTables:
    """One constraint's tables, indexed by automaton state (`DEAD` = 0 maps to itself)."""

    byte_next: np.ndarray  # [N, 256] int32
    masks: np.ndarray  # [N, words] int32, token bitmask (zeros for states never at a boundary)
    complete: np.ndarray  # [N] bool: accepting with nothing that may follow

    @property
    def num_states(self) -> int:
        return self.byte_next.shape[0]


def export_tables(
    compiled: CompiledGrammar, *, max_states: int, budget_s: float = 2.0
) -> ExportedTables | None:
    """The constraint's device tables, or None when it is not finite within the budgets."""
    automaton = compiled.automaton
    deadline = time.monotonic() + budget_s
    seen = {DEAD, automaton.start}
    frontier = [automaton.start]
    while frontier:
        automaton.fill_rows(frontier)
        reached = set(np.unique(automaton.table[frontier]).tolist()) - seen
        seen |= reached
        frontier = sorted(reached)
        if len(seen) > max_states or time.monotonic() > deadline:
            return None
    boundary, queue = {automaton.start}, [automaton.start]
    while queue:
        if time.monotonic() > deadline:
            return None
        state = queue.pop()
        for nxt in np.unique(compiled.successors(state)).tolist():
            if nxt != DEAD and nxt not in boundary:
                boundary.add(nxt)
                queue.append(nxt)
    n = max(seen) + 1
    byte_next = automaton.table[:n].copy()
    masks = np.zeros((n, compiled.vocab.words), np.int32)
    for state in boundary:
        masks[state] = compiled.mask(state)
    complete = automaton.accepting[:n] & (byte_next == DEAD).all(axis=1)
    return ExportedTables(byte_next, masks, complete)
