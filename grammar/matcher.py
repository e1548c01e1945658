"""Per-request grammar state: accept tokens, roll back, and fill bitmask rows."""

from __future__ import annotations

import numpy as np

from .automaton import DEAD
from .compiled import CompiledGrammar


class Matcher:
    """Tracks one sequence through a `CompiledGrammar`.

    A stop id is accepted only where the grammar accepts; after it the matcher is terminated and
    allows nothing. `rollback(n)` undoes the last n accepted tokens.
    """

    def __init__(self, grammar: CompiledGrammar) -> None:
        self.grammar = grammar
        self._states = [grammar.automaton.start]
        self._terminated = [False]

    def fork(self) -> Matcher:
        """An independent matcher at the same point (a beam's continuation)."""
        twin = Matcher.__new__(Matcher)
        twin.grammar = self.grammar
        twin._states = list(self._states)
        twin._terminated = list(self._terminated)
        return twin

    @property
    def state(self) -> int:
        return self._states[-1]

    def is_terminated(self) -> bool:
        return self._terminated[-1]

    def is_accepting(self) -> bool:
        """Is the text so far a complete string of the language?"""
        return bool(self.grammar.automaton.accepting[self.state])

    def is_complete(self) -> bool:
        """Accepting with nothing that may follow: only end of generation remains."""
        automaton = self.grammar.automaton
        if not self.is_accepting():
            return False
        automaton.fill_rows([self.state])
        return bool((automaton.table[self.state] == DEAD).all())

    def accept_token(self, token_id: int) -> bool:
        """Advance by one token; False (and no change) if the grammar forbids it."""
        if self.is_terminated():
            return False
        if token_id in self.grammar.vocab.stop_set:
            if not self.is_accepting():
                return False
            self._states.append(self.state)
            self._terminated.append(True)
            return True
        nxt = self.grammar.advance(self.state, token_id)
        if nxt == DEAD:
            return False
        self._states.append(nxt)
        self._terminated.append(False)
        return True

    def accept_bytes(self, data: bytes) -> bool:
        """Advance by raw bytes (e.g. forced text); False (and no change) if forbidden."""
        nxt = self.grammar.automaton.walk(self.state, data)
        if nxt == DEAD or self.is_terminated():
            return False
        self._states.append(nxt)
        self._terminated.append(False)
        return True

    def rollback(self, num_tokens: int) -> None:
        """Undo the last `num_tokens` accepted tokens."""
        if not 0 <= num_tokens < len(self._states):
            raise ValueError(f"cannot roll back {num_tokens} of {len(self._states) - 1} tokens")
        if num_tokens:
            del self._states[-num_tokens:]
            del self._terminated[-num_tokens:]

    def fill_bitmask(self, row: np.ndarray) -> None:
        """Write the allowed-token bitmask into `row` (int32 `[words]`)."""
        if self.is_terminated():
            row[:] = 0
        else:
            row[:] = self.grammar.mask(self.state)

    def bitmask(self) -> np.ndarray:
        row = np.empty(self.grammar.vocab.words, np.int32)
        self.fill_bitmask(row)
        return row

    def forced_bytes(self, limit: int = 256) -> bytes:
        """The bytes that must come next (empty when there is a choice or the input may end)."""
        automaton = self.grammar.automaton
        state, out = self.state, bytearray()
        while len(out) < limit and not automaton.accepting[state] and not self.is_terminated():
            automaton.fill_rows([state])
            live = np.flatnonzero(automaton.table[state] != DEAD)
            if live.size != 1:
                break
            out.append(int(live[0]))
            state = int(automaton.table[state, live[0]])
        return bytes(out)
