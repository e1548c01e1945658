"""A tokenizer's vocabulary as byte strings, and the vectorized token walk over an automaton."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from .automaton import DEAD, Automaton
from .utf8 import utf8_sequences

# Byte-range sequences of every non-ASCII code point (surrogates excluded).
NON_ASCII_SEQUENCES = utf8_sequences(0x80, 0xD7FF) + utf8_sequences(0xE000, 0x10FFFF)


class TokenVocab:
    """Byte strings of every token id, laid out for walking all tokens at once.

    `width` is the logits width (may exceed the vocabulary: padded ids are never allowed).
    Tokens with no bytes (control tokens) are never allowed by a grammar; `stop_ids` are allowed
    exactly when the grammar accepts.
    """

    def __init__(
        self, token_bytes: Sequence[bytes], stop_ids: Iterable[int], *, width: int | None = None
    ) -> None:
        self.size = len(token_bytes)
        self.width = max(width or self.size, self.size)
        self.words = (self.width + 31) // 32
        self.token_bytes = list(token_bytes)
        self.stop_set = frozenset(int(i) for i in stop_ids)
        self.stop_ids = np.array(sorted(self.stop_set), np.int64)
        lengths = np.array([len(b) for b in token_bytes], np.int64)
        order = np.argsort(-lengths, kind="stable")
        self.order = order[lengths[order] > 0]  # walkable tokens, longest first
        self.lengths = lengths[self.order]
        longest = int(self.lengths[0]) if self.order.size else 0
        self.bytes = np.zeros((self.order.size, longest), np.uint8)
        for row, tid in enumerate(self.order):
            data = token_bytes[tid]
            self.bytes[row, : len(data)] = np.frombuffer(data, np.uint8)
        self.columns = np.ascontiguousarray(self.bytes.T)  # [longest, n] uint8
        # Which bytes each token holds, as 256-bit sets [n, 4] uint64: a token made only of
        # bytes on which a state loops back to itself needs no walk.
        present = np.zeros((self.order.size, 256), bool)
        rows = np.repeat(np.arange(self.order.size), self.lengths)
        flat = np.concatenate([np.frombuffer(token_bytes[t], np.uint8) for t in self.order])
        present[rows, flat] = True
        sets = np.packbits(present, axis=1, bitorder="little").view("<u8")
        self.byte_sets = [np.ascontiguousarray(sets[:, w]) for w in range(4)]
        # Tokens of whole UTF-8 characters (no code point split at either end).
        self.whole_utf8 = np.array([_is_utf8(token_bytes[t]) for t in self.order], bool)
        # tokens longer than i are rows [0, longer[i]) of the sorted order
        self.longer = np.array([(self.lengths > i).sum() for i in range(longest)], np.int64)
        # rows of `order` by first byte: rows_by_first[first_start[b]:first_start[b + 1]]
        first = self.columns[0] if longest else np.zeros(0, np.uint8)
        self.rows_by_first = np.argsort(first, kind="stable")
        self.first_start = np.concatenate([[0], np.cumsum(np.bincount(first, minlength=256))])
        self.key = (tuple(token_bytes), tuple(self.stop_ids.tolist()), self.width)

    @classmethod
    def from_tokenizer(cls, tokenizer: object, *, width: int | None = None) -> TokenVocab:
        """Build from a `jaxserve.text.tokenizer.Tokenizer` (its `token_bytes` and `eos_ids`)."""
        size = tokenizer.vocab_size  # type: ignore[attr-defined]
        data = [tokenizer.token_bytes(i) for i in range(size)]  # type: ignore[attr-defined]
        return cls(data, tokenizer.eos_ids, width=width)  # type: ignore[attr-defined]

    def allowed_ids(self, automaton: Automaton, state: int, limit: int) -> np.ndarray | None:
        """The ids of the tokens allowed in `state`, walking only those whose first byte can
        follow; None when more than `limit` tokens start so (`next_states` is faster then)."""
        automaton.fill_rows([state])
        live = np.flatnonzero(automaton.table[state] != DEAD)
        starts, ends = self.first_start[live], self.first_start[live + 1]
        if int((ends - starts).sum()) > limit:
            return None
        parts = [self.rows_by_first[a:b] for a, b in zip(starts, ends, strict=True)]
        rows = np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
        cur = automaton.table[state][self.columns[0][rows]].astype(np.int32)
        cur = self._walk_on(automaton, cur, rows, np.arange(rows.size))
        return self.order[rows[cur != DEAD]]

    def next_states(self, automaton: Automaton, state: int) -> np.ndarray:
        """The state after each token from `state`, `[size]` int32 (DEAD for disallowed)."""
        automaton.fill_rows([state])
        row = automaton.table[state]
        cur = row[self.columns[0]].astype(np.int32)  # every token is at least one byte
        live = cur != DEAD
        self_loops = row == state
        if self_loops.sum() > 1:
            # A token of bytes the state loops on, or of ASCII bytes it loops on plus whole
            # non-ASCII characters when every such character returns to the state, ends there.
            outside = ~np.packbits(self_loops, bitorder="little").view("<u8")
            stray = (self.byte_sets[0] & outside[0]) | (self.byte_sets[1] & outside[1])
            high = (self.byte_sets[2] & outside[2]) | (self.byte_sets[3] & outside[3])
            inside = (stray == 0) & (high == 0)
            if _loops_on_non_ascii(automaton, state):
                inside |= (stray == 0) & self.whole_utf8
            cur[inside] = state
            live &= ~inside
        cur = self._walk_on(automaton, cur, None, np.flatnonzero(live))
        out = np.zeros(self.size, np.int32)
        out[self.order] = cur
        return out

    def _walk_on(
        self, automaton: Automaton, cur: np.ndarray, rows: np.ndarray | None, idx: np.ndarray
    ) -> np.ndarray:
        """Walk tokens on after their first byte: `cur[idx]` is the state of the token at row
        `rows[idx]` of `order` (`rows` None: row `idx`); rows ascending."""
        for i in range(1, self.columns.shape[0]):
            at = idx if rows is None else rows[idx]
            keep = np.searchsorted(at, self.longer[i])
            idx, at = idx[:keep], at[:keep]
            if not idx.size:
                break
            flat = cur[idx].astype(np.int64) * 256 + self.columns[i][at]
            nxt = automaton.table.ravel()[flat]
            missing = nxt < 0
            if missing.any():
                automaton.fill_rows(np.unique(flat[missing] // 256))
                nxt = automaton.table.ravel()[flat]
            cur[idx] = nxt
            idx = idx[nxt != DEAD]
        return cur

    def pack(self, allowed: np.ndarray) -> np.ndarray:
        """Bool `[size]` -> int32 bitmask `[words]` (bit i of word w = token 32*w+i)."""
        bits = np.zeros(self.words * 32, bool)
        bits[: allowed.size] = allowed
        return np.packbits(bits, bitorder="little").view("<u4").view(np.int32)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _loops_on_non_ascii(automaton: Automaton, state: int) -> bool:
    """Does every non-ASCII character lead from `state` back to `state`?"""
    cached = automaton.loops_non_ascii.get(state)
    if cached is None:
        cached = True
        for ranges in NON_ASCII_SEQUENCES:
            states = {state}
            for lo, hi in ranges:
                automaton.fill_rows(sorted(states))
                states = set(automaton.table[sorted(states), lo : hi + 1].ravel().tolist())
                if DEAD in states:
                    break
            if states != {state}:
                cached = False
                break
        automaton.loops_non_ascii[state] = cached
    return cached
