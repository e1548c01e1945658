"""Host side of on-device constraints: which constraints' tables sit where in the runner's
fixed-capacity table (host only: numpy, never jax).

A constraint is placed the first time a decode row needs it and stays until its space is needed
by another while it has no rows, so the device copy changes only when the set in use changes.
"""

from __future__ import annotations

import numpy as np

from jaxserve.grammar import CompiledGrammar
from jaxserve.grammar.export import ExportedTables, export_tables


class GrammarSlots:
    def __init__(self, capacity: int, words: int, *, export_budget_s: float = 2.0) -> None:
        self.capacity = capacity
        self.export_budget_s = export_budget_s
        self.byte_next = np.zeros((max(capacity, 1), 256), np.int32)
        self.masks = np.zeros((max(capacity, 1), words), np.int32)
        self.complete = np.zeros(max(capacity, 1), bool)
        self.dirty = False
        self._offsets: dict[CompiledGrammar, tuple[int, int]] = {}  # -> (offset, states)
        self._tables: dict[CompiledGrammar, ExportedTables | None] = {}

    def tables(self, compiled: CompiledGrammar) -> ExportedTables | None:
        """The constraint's device tables (exported once), or None if it must stay on the host."""
        if compiled not in self._tables:
            if len(self._tables) > 256:
                self._tables.clear()
            self._tables[compiled] = export_tables(
                compiled, max_states=self.capacity, budget_s=self.export_budget_s
            )
        return self._tables[compiled]

    def offset(self, compiled: CompiledGrammar, in_use: set[CompiledGrammar]) -> int | None:
        """Where `compiled`'s states start in the global table; None if it cannot be placed.
        Constraints outside `in_use` may be evicted to make room."""
        placed = self._offsets.get(compiled)
        if placed is not None:
            return placed[0]
        tables = self.tables(compiled) if self.capacity else None
        if tables is None:
            return None
        start = self._free_range(tables.num_states)
        if start is None:
            for other in [g for g in self._offsets if g not in in_use]:
                del self._offsets[other]
            start = self._free_range(tables.num_states)
            if start is None:
                return None
        end = start + tables.num_states
        self.byte_next[start:end] = tables.byte_next + start
        self.masks[start:end] = tables.masks
        self.complete[start:end] = tables.complete
        self._offsets[compiled] = (start, tables.num_states)
        self.dirty = True
        return start

    def _free_range(self, size: int) -> int | None:
        cursor = 0
        for start, n in sorted(self._offsets.values()):
            if start - cursor >= size:
                return cursor
            cursor = start + n
        return cursor if self.capacity - cursor >= size else None
