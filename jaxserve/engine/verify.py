"""The engine's speculative decode step (host only): requests with drafts (`speculation.py`)
get one `Runner.verify` call instead of a k-step decode; each keeps the draws up to and including
the first that differs from its draft (or ends it)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from jaxserve.engine.device import VerifyResult
from jaxserve.engine.drafter import Drafter
from jaxserve.engine.grammar_slots import GrammarSlots
from jaxserve.engine.postprocess import check_finite, record_token, token_logprob
from jaxserve.engine.request import StepEvent
from jaxserve.engine.research import record_research
from jaxserve.engine.rows import PrefillRow
from jaxserve.engine.speculation import Speculator
from jaxserve.grammar import Matcher

if TYPE_CHECKING:
    from jaxserve.engine.request import Request

log = logging.getLogger("jaxserve.engine")


class VerifySteps:
    """Mixed into `Engine`: splits decode rows into speculating and plain ones."""

    speculator: Speculator | None
    drafter: Drafter | None
    grammar_slots: GrammarSlots
    _check_states: dict[Request, int | None]

    def _drafts(self, requests: Sequence[Request], max_tokens: int) -> dict[Request, list[int]]:
        """The requests that speculate this step, with their drafts."""
        if self.speculator is None or len(requests) > self.speculator.config.max_rows:
            return {}
        in_use = {r.matcher.grammar for r in requests if r.matcher is not None}
        self._check_states = {r: self._device_state(r, in_use) for r in requests}
        requests = [r for r in requests if self._check_states[r] is not None]

        def room(r: Request) -> int:
            return min(
                r.params.max_tokens - len(r.output.token_ids), r.max_len - r.num_tokens, max_tokens
            )

        if self.drafter is not None:
            wanted = [(r, self.speculator.budget(r, room(r))) for r in requests]
            try:
                proposed = self.drafter.propose(wanted)
            except Exception:  # the draft model's call failed: decode without drafts
                log.exception("the draft model failed; decoding this step without drafts")
                return {}
        else:
            proposed = {r: self.speculator.drafts(r, room(r)) for r in requests}
        out = {r: _allowed(r, d) for r, d in proposed.items()}
        return {r: d for r, d in out.items() if d}

    def _device_state(self, request: Request, in_use: set) -> int | None:
        """A checked row's constraint state on device (-1: none; None: its constraint is not
        on device, so it does not speculate)."""
        matcher = request.matcher
        if matcher is None:
            return -1
        if type(matcher) is not Matcher:
            return None
        offset = self.grammar_slots.offset(matcher.grammar, in_use)
        return None if offset is None else offset + matcher.state

    def _run_verify(self, drafts: dict[Request, list[int]]) -> list:
        requests = list(drafts)
        built = self._each(requests, lambda _, r: self._verify_row(r, drafts[r]))
        if not built:
            return []
        requests, rows = [r for r, _ in built], [row for _, row in built]
        self._sync_tables()
        width = self.speculator.config.num_tokens + 1
        out = self._device_call(
            "decode", requests, lambda: self.runner.verify(rows, num_tokens=width)
        )
        if out is None:
            return []
        done = self._each(requests, lambda i, r: self._verified(r, out, i, drafts[r]))
        return [e for _, e in done]

    def _verify_row(self, request: Request, drafts: list[int]) -> PrefillRow:
        state = self._check_states[request]
        return PrefillRow(
            token_ids=[request.all_token_ids[-1], *drafts],
            start=request.num_tokens - 1,
            pages=request.pages,
            sampling=self.sampling.row(request, request.num_tokens, host_mask=state < 0),
            grammar_state=state,
        )

    def _verified(
        self, request: Request, out: VerifyResult, i: int, drafts: list[int]
    ) -> StepEvent:
        delta, new, accepted = "", [], 0
        for j in range(len(drafts) + 1):
            check_finite(request, out.nonfinite[i], j)
            token = int(out.token_ids[i, j])
            lp = token_logprob(
                request, token, out.logprobs[i, j], out.top_ids[i, j], out.top_logprobs[i, j]
            )
            record_research(request, out.uncertainty[i, j], None, i, j)
            delta += record_token(request, token, lp, eos_ids=self.tokenizer.eos_ids)
            new.append(token)
            if request.finished or j == len(drafts) or token != drafts[j]:
                break
            accepted += 1
        self.speculator.accepted(request, len(drafts), accepted)
        if self.drafter is not None:
            self.drafter.checked(request)
        request.num_computed = request.num_tokens - 1
        return StepEvent(request.output, delta, tuple(new))


def _allowed(request: Request, drafts: list[int]) -> list[int]:
    """The drafts up to the first the request's constraint forbids (or after which it is
    complete): later ones could never be accepted."""
    if request.matcher is None or not drafts:
        return drafts
    matcher = request.matcher.fork()
    for i, token in enumerate(drafts):
        if not matcher.accept_token(token):
            return drafts[:i]
        if matcher.is_complete() or matcher.is_terminated():
            return drafts[: i + 1]
    return drafts
