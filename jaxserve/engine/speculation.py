"""Speculative decoding on the host side: n-gram prompt lookup (or a draft model,
`drafter.py`) proposes drafts, one forward pass checks them (`Runner.verify`), and each
request adapts how many drafts it takes.

Drafts come from the request's own tokens (prompt and output): the most recent earlier place
where its last `n` tokens occurred (n from `max_ngram` down to `min_ngram`), and the tokens that
followed there. A draft is accepted when it equals the token the target draws at its position
with that position's key, so speculation changes how many forward passes a text takes, never
the text: greedy and seeded outputs are the ones decoding without it gives.

Batch size: a step speculates only while it has at most `max_rows` decode rows.
Adaptive: a request starts at `num_tokens` drafts per check, goes one up after a check that
accepted all and one down after one that accepted none; after `patience` checks in a row that
accepted nothing it stops speculating for `cooldown` steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from jaxserve.grammar import Matcher

if TYPE_CHECKING:
    from jaxserve.engine.request import Request

SPECULATIVE_METHODS = ("ngram", "draft")


@dataclass(frozen=True)
class SpeculativeConfig:
    method: str = "ngram"
    model: str | None = None  # the draft model (method "draft"): a pulled name or a path
    num_tokens: int = 4  # drafts per check at most (the compiled width is num_tokens + 1)
    max_ngram: int = 3
    min_ngram: int = 1
    patience: int = 4
    cooldown: int = 16
    # decode rows of a step at most for it to speculate: a check of k + 1 tokens per row costs
    # little more than one decode step while rows are few (weights are read once either way),
    # and up to k + 1 times as much once the step is compute-bound (experiments/RESULTS.md)
    max_rows: int = 4

    def __post_init__(self) -> None:
        if self.method not in SPECULATIVE_METHODS:
            raise ValueError(
                f"speculative must be one of {SPECULATIVE_METHODS}, not {self.method!r}"
            )
        if (self.method == "draft") != (self.model is not None):
            raise ValueError('speculative_model is given with speculative="draft", and only then')
        if not 1 <= self.num_tokens <= 15:
            raise ValueError(f"num_speculative_tokens must be in [1, 15], got {self.num_tokens}")
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise ValueError("ngram lengths must satisfy 1 <= min <= max")


@dataclass
class SpecState:
    """One request's speculation: drafts per check now, and its misses in a row."""

    k: int
    misses: int = 0
    paused: int = 0  # steps left without speculation


def propose(tokens: Sequence[int], k: int, *, max_ngram: int, min_ngram: int) -> list[int]:
    """Up to `k` tokens that followed the most recent earlier occurrence of the last n tokens."""
    if k <= 0 or len(tokens) < min_ngram + 1:
        return []
    seq = np.asarray(tokens, np.int64)
    for n in range(min(max_ngram, len(seq) - 1), min_ngram - 1, -1):
        suffix = seq[-n:]
        windows = np.lib.stride_tricks.sliding_window_view(seq[:-1], n)
        hits = np.flatnonzero(np.all(windows == suffix, axis=1))
        if hits.size:
            start = int(hits[-1]) + n
            return seq[start : start + k].tolist()
    return []


class Speculator:
    """Which decode rows speculate this step, and with which drafts."""

    def __init__(self, config: SpeculativeConfig) -> None:
        self.config = config
        self.num_proposed = 0
        self.num_accepted = 0

    def eligible(self, request: Request) -> bool:
        """Speculation needs the plain chain: no token history (penalties, DRY, bad words),
        no Mirostat, no research hooks, a constraint only if it is regular (masked on device
        at every drafted position); and the request's own consent."""
        p = request.params
        return (
            p.speculative
            and p.n == 1
            and (request.matcher is None or type(request.matcher) is Matcher)
            and not p.uses_history
            and p.mirostat == 0
            and request.capture is None
        )

    def budget(self, request: Request, room: int) -> int:
        """Drafts the request takes this step (0: it decodes normally); `room`: tokens it
        may still generate."""
        if not self.eligible(request):
            return 0
        state = request.spec
        if state is None:
            state = request.spec = SpecState(k=self.config.num_tokens)
        if state.paused:
            state.paused -= 1
            return 0
        return min(state.k, room - 1)

    def drafts(self, request: Request, room: int) -> list[int]:
        """Prompt-lookup drafts for this step ([] when the request decodes normally)."""
        k = self.budget(request, room)
        if k <= 0:
            return []
        c = self.config
        return propose(request.all_token_ids, k, max_ngram=c.max_ngram, min_ngram=c.min_ngram)

    def accepted(self, request: Request, proposed: int, accepted: int) -> None:
        """Adapt the request's draft count to the check's outcome."""
        self.num_proposed += proposed
        self.num_accepted += accepted
        state, c = request.spec, self.config
        if state is None or not proposed:
            return
        if accepted == proposed:
            state.k = min(state.k + 1, c.num_tokens)
        elif accepted == 0:
            state.k = max(state.k - 1, 1)
        state.misses = state.misses + 1 if accepted == 0 else 0
        if state.misses >= c.patience:
            state.paused, state.misses = c.cooldown, 0
