"""A grammar compiled against one vocabulary: per-state token masks, built on first use."""

from __future__ import annotations

import numpy as np

from .automaton import DEAD, Automaton
from .vocab import TokenVocab

SPARSE_LIMIT = 4096  # first visits walk only the tokens whose first byte can follow, up to this


class CompiledGrammar:
    """Token-level view of an `Automaton`; shared by every matcher of the same (spec, vocab)."""

    def __init__(
        self, automaton: Automaton, vocab: TokenVocab, ignored: tuple[str, ...] = ()
    ) -> None:
        self.automaton = automaton
        self.vocab = vocab
        self.ignored = ignored  # JSON Schema annotations the compile dropped (unknown keywords)
        self._masks: dict[int, np.ndarray] = {}

    def mask(self, state: int) -> np.ndarray:
        """int32 bitmask `[words]` of the tokens allowed in `state` (stop ids iff accepting)."""
        cached = self._masks.get(state)
        if cached is None:
            ids = self.vocab.allowed_ids(self.automaton, state, SPARSE_LIMIT)
            if ids is None:
                self.successors(state)
                return self._masks[state]
            if self.automaton.accepting[state] or not ids.size:
                ids = np.concatenate([ids, self.vocab.stop_ids])
            cached = np.zeros(self.vocab.words, np.uint32)
            np.bitwise_or.at(cached, ids >> 5, np.left_shift(1, ids & 31).astype(np.uint32))
            cached = cached.view(np.int32)
            self._masks[state] = cached
        return cached

    def successors(self, state: int) -> np.ndarray:
        """The state after each token from `state` (`[size]`, DEAD = not allowed); caches
        the state's mask on the way."""
        nxt = self.vocab.next_states(self.automaton, state)
        if state not in self._masks:
            allowed = nxt != DEAD
            # Stop ids end a complete string; they are also the way out of a state no token
            # of this vocabulary can continue (rather than a row with nothing to sample).
            if self.automaton.accepting[state] or not allowed.any():
                allowed[self.vocab.stop_ids] = True
            self._masks[state] = self.vocab.pack(allowed)
        return nxt

    def advance(self, state: int, token_id: int) -> int:
        """The state after `token_id` (DEAD if not allowed; the matcher handles stop ids)."""
        data = self.vocab.token_bytes[token_id] if 0 <= token_id < self.vocab.size else b""
        if not data:
            return DEAD
        return self.automaton.walk(state, data)
