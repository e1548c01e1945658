"""A matcher that lets text through freely until a trigger string appears, then enforces a grammar.

Tool calling with `tool_choice: "auto"` needs this: the model may answer in prose, but once it
writes `<tool_call>` (or another trigger) the call must be well formed. The grammar's language
starts at the trigger: the bytes from the trigger's first byte on are fed to an inner `Matcher`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .automaton import DEAD
from .compiled import CompiledGrammar
from .matcher import Matcher


class LazyMatcher:
    """`Matcher`'s interface over free text followed by a constrained part.

    Before a trigger every token is allowed (stop ids included; padded ids of a wider logits row
    never), except one that would complete a trigger with bytes the grammar cannot continue.
    The token that completes a trigger is accepted, and the bytes from the trigger's first byte
    to the token's end go to the inner matcher; from then on it is the inner matcher.
    """

    def __init__(self, grammar: CompiledGrammar, triggers: Sequence[str]) -> None:
        if not triggers or any(not isinstance(t, str) or not t for t in triggers):
            raise ValueError("triggers must be non-empty strings")
        self.grammar = grammar
        self.triggers = tuple(t.encode() for t in triggers)
        self.inner = Matcher(grammar)
        # One entry per accepted token: (pending, triggered, terminated), where pending is the
        # longest end of the free text that begins a trigger.
        self._history: list[tuple[bytes, bool, bool]] = [(b"", False, False)]
        vocab = grammar.vocab
        # Only a token holding a trigger's last byte can complete one.
        last = np.array(sorted({t[-1] for t in self.triggers}), np.uint8)
        self._candidates = vocab.order[np.isin(vocab.bytes, last).any(axis=1)]
        self._masks: dict[bytes, np.ndarray] = {}  # pending -> free-text bitmask
        self._free: dict[bytes, bool] = {}  # pending -> its bitmask allows every token

    @property
    def is_triggered(self) -> bool:
        return self._history[-1][1]

    def is_terminated(self) -> bool:
        return self._history[-1][2] or (self.is_triggered and self.inner.is_terminated())

    def is_free(self) -> bool:
        """Before the trigger with every token allowed: the next draw needs no mask."""
        if self.is_triggered or self.is_terminated():
            return False
        pending = self._history[-1][0]
        free = self._free.get(pending)
        if free is None:
            everything = self.grammar.vocab.pack(np.ones(self.grammar.vocab.size, bool))
            free = self._free[pending] = bool((self._free_mask(pending) == everything).all())
        return free

    def is_accepting(self) -> bool:
        return self.inner.is_accepting() if self.is_triggered else True

    def is_complete(self) -> bool:
        return self.is_triggered and self.inner.is_complete()

    def accept_token(self, token_id: int) -> bool:
        """Advance by one token; False (and no change) if it is not allowed."""
        if self.is_terminated():
            return False
        if self.is_triggered:
            if not self.inner.accept_token(token_id):
                return False
            self._history.append((b"", True, False))
            return True
        vocab = self.grammar.vocab
        if token_id in vocab.stop_set:
            self._history.append((b"", False, True))
            return True
        if not 0 <= token_id < vocab.size:
            return False
        return self._accept_free(vocab.token_bytes[token_id])

    def accept_bytes(self, data: bytes) -> bool:
        """Advance by raw bytes (e.g. forced text); False (and no change) if forbidden."""
        if self.is_terminated():
            return False
        if self.is_triggered:
            if not self.inner.accept_bytes(data):
                return False
            self._history.append((b"", True, False))
            return True
        return self._accept_free(data)

    def _trigger_start(self, text: bytes) -> int | None:
        """Where the earliest trigger in `text` begins (None: no trigger)."""
        starts = [i for t in self.triggers if (i := text.find(t)) >= 0]
        return min(starts) if starts else None

    def _accept_free(self, data: bytes) -> bool:
        text = self._history[-1][0] + data
        start = self._trigger_start(text)
        if start is None:
            self._history.append((self._pending(text), False, False))
            return True
        if not self.inner.accept_bytes(text[start:]):
            return False  # the trigger is completed by bytes the grammar cannot continue
        self._history.append((b"", True, False))
        return True

    def _pending(self, text: bytes) -> bytes:
        """The longest end of `text` that is the beginning of a trigger (but not a whole one)."""
        longest = max(len(t) for t in self.triggers) - 1
        for k in range(min(longest, len(text)), 0, -1):
            if any(t.startswith(text[-k:]) for t in self.triggers):
                return text[-k:]
        return b""

    def rollback(self, num_tokens: int) -> None:
        """Undo the last `num_tokens` accepted tokens (and the trigger, if it was among them)."""
        if not 0 <= num_tokens < len(self._history):
            raise ValueError(f"cannot roll back {num_tokens} of {len(self._history) - 1} tokens")
        if not num_tokens:
            return
        num_inner = sum(1 for _, triggered, _ in self._history[-num_tokens:] if triggered)
        del self._history[-num_tokens:]
        self.inner.rollback(num_inner)

    def fill_bitmask(self, row: np.ndarray) -> None:
        """Free text (see the class docstring) before a trigger; the grammar's mask after it."""
        if self.is_terminated():
            row[:] = 0
        elif self.is_triggered:
            self.inner.fill_bitmask(row)
        else:
            row[:] = self._free_mask(self._history[-1][0])

    def _free_mask(self, pending: bytes) -> np.ndarray:
        mask = self._masks.get(pending)
        if mask is None:
            vocab, automaton = self.grammar.vocab, self.grammar.automaton
            allowed = np.ones(vocab.size, bool)
            for token_id in self._candidates:
                text = pending + vocab.token_bytes[token_id]
                start = self._trigger_start(text)
                if start is not None and automaton.walk(automaton.start, text[start:]) == DEAD:
                    allowed[token_id] = False
            mask = self._masks[pending] = vocab.pack(allowed)
        return mask

    def bitmask(self) -> np.ndarray:
        row = np.empty(self.grammar.vocab.words, np.int32)
        self.fill_bitmask(row)
        return row

    def forced_bytes(self, limit: int = 256) -> bytes:
        return self.inner.forced_bytes(limit) if self.is_triggered else b""
