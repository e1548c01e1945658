"""Drafts from a second, smaller model that shares the target's tokenizer (host only).

The draft model has its own KV cache with the target's page layout, so a request's pages
index both: the draft's K/V of a request are valid for its first `Request.draft_computed`
tokens. Before drafting, a request's draft cache catches up on the tokens the target accepted
since (prefill chunks of the draft model; needed only after steps that did not draft); then one
draft decode call generates each row's k drafts greedily, and one more token, so that every
draft is fed to the draft model too. A greedy draft is a point mass, so the engine's check
(accept a draft when it equals the target's own draw at that position, `engine/verify.py`) is
the standard rejection rule for it, and the output is the target's: the same tokens, greedy
or seeded, as without speculation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from jaxserve.engine.rows import DecodeRow, PrefillRow
from jaxserve.sampling.rows import SamplingRow

if TYPE_CHECKING:
    from jaxserve.engine.device import Runner
    from jaxserve.engine.request import Request


class Drafter:
    """Proposes drafts for speculating requests with the draft model's `runner`."""

    def __init__(self, runner: Runner, *, chunk: int, max_tokens: int) -> None:
        self.runner = runner
        self.chunk = chunk  # catch-up tokens per prefill call at most
        self.max_tokens = max_tokens  # drafts per row at most (the draft decode's steps)

    def propose(self, wanted: Sequence[tuple[Request, int]]) -> dict[Request, list[int]]:
        """Up to `k` drafts for each (request, k)."""
        wanted = [(r, k) for r, k in wanted if k > 0]
        if not wanted:
            return {}
        for request, _ in wanted:
            self._catch_up(request)
        rows = [
            DecodeRow(
                token_id=r.all_token_ids[-1],
                start=r.num_tokens - 1,
                pages=r.pages,
                sampling=SamplingRow(),
                remaining=k + 1,
            )
            for r, k in wanted
        ]
        out = self.runner.decode(rows, num_steps=self.steps)
        drafts = {}
        for i, (request, k) in enumerate(wanted):
            n = int(out.num_generated[i])
            drafts[request] = [int(t) for t in out.token_ids[i, : min(n, k)]]
            # inputs written from num_tokens - 1 on: the last token, then each draft
            request.draft_written = request.num_tokens - 1 + n
        return drafts

    @property
    def steps(self) -> int:
        """The draft decode's steps: one past the last draft, so that the draft cache holds
        every draft when all are accepted (nothing to catch up before the next call)."""
        return self.max_tokens + 1

    def _catch_up(self, request: Request) -> None:
        """Write the draft model's K/V for every token before the request's last."""
        end = request.num_tokens - 1
        while request.draft_computed < end:
            start = request.draft_computed
            stop = min(end, start + self.chunk)
            row = PrefillRow(request.all_token_ids[start:stop], start, request.pages)
            self.runner.prefill([row])
            request.draft_computed = stop

    @staticmethod
    def checked(request: Request) -> None:
        """After the target's check: the draft cache holds the request's last token and the
        drafts it kept (not the token drawn after them: that is the next input)."""
        request.draft_computed = min(request.num_tokens - 1, request.draft_written)
