"""A request's host-side state: tokens so far, pages, incremental text, stop detection."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from jaxserve.engine.research import Capture
from jaxserve.engine.speculation import SpecState
from jaxserve.grammar import Matcher
from jaxserve.outputs import RequestOutput, TokenLogprob
from jaxserve.sampling_params import SamplingParams
from jaxserve.text.detokenizer import IncrementalDetokenizer


@dataclass(eq=False)
class Request:
    request_id: int
    prompt_token_ids: list[int]
    params: SamplingParams
    seed: int
    max_len: int  # the request ends with "length" once prompt + output reaches this
    detokenizer: IncrementalDetokenizer
    prompt: str | None = None
    priority: int = 0  # lower runs first; ties go to the earlier request
    index: int = 0  # which of the request's n sequences
    # The sequences of one request (n > 1 shares one request_id); the first is the leader,
    # whose prefill the others share.
    group: list[Request] = field(default_factory=list)
    pages: list[int] = field(default_factory=list)
    num_computed: int = 0  # tokens whose K/V are in the cache
    num_cached_tokens: int = 0  # of those, tokens found in the prefix cache
    num_preemptions: int = 0
    arrival_time: float = 0.0
    scheduled_time: float | None = None
    first_token_time: float | None = None
    # Sampler inputs prepared once: allowed-token bitmask, bad words as token sequences,
    # DRY breaker bitmask; and the Mirostat state carried between steps.
    allowed_mask: np.ndarray | None = None
    bad_word_ids: Sequence[Sequence[int]] = ()
    breaker_mask: np.ndarray | None = None
    mirostat_mu: float = 0.0
    matcher: Matcher | None = None  # the request's constraint, advanced per generated token
    capture: Capture | None = None  # research hooks: captured layers, steering, what was kept
    spec: SpecState | None = None  # speculative decoding: drafts per check, misses
    draft_computed: int = 0  # tokens whose K/V the draft model's cache holds (`drafter.py`)
    draft_written: int = 0  # of the last draft call: tokens written, right or not
    keep_pages: bool = False  # pages outlive the request until `Scheduler.release`
    output: RequestOutput = field(init=False)
    _pending: str = ""  # decoded text held back because it may begin a stop string

    def __post_init__(self) -> None:
        if not any(seq is self for seq in self.group):
            self.group.append(self)
        self.output = RequestOutput(
            request_id=self.request_id,
            index=self.index,
            prompt=self.prompt,
            prompt_token_ids=list(self.prompt_token_ids),
            logprobs=[] if self.params.logprobs is not None else None,
            prompt_logprobs=[None] if self.params.prompt_logprobs is not None else None,
            logit_lens=[] if self.params.logit_lens else None,
            uncertainty=[] if self.params.return_uncertainty else None,
        )

    @property
    def leader(self) -> Request | None:
        """The sequence whose prompt pages this one shares (None for the leader itself)."""
        return self.group[0] if self.group[0] is not self else None

    @property
    def cache_salt(self) -> bytes | None:
        """What keys this request's prefix-cache pages besides its tokens (its steering)."""
        return None if self.capture is None else self.capture.cache_salt

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output.token_ids)

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output.token_ids

    @property
    def prefill_target(self) -> int:
        """Tokens that must be cached before decoding: the prompt, or after a preemption every
        token but the last (which is the next decode input)."""
        if self.output.token_ids:
            return self.num_tokens - 1
        return len(self.prompt_token_ids)

    @property
    def is_prefilled(self) -> bool:
        return self.num_computed >= self.prefill_target

    @property
    def finished(self) -> bool:
        return self.output.finish_reason is not None

    def append_token(
        self, token_id: int, logprob: TokenLogprob | None, *, eos_ids: frozenset[int]
    ) -> str:
        """Record one generated token; returns the text that became final (may be empty)."""
        out = self.output
        out.token_ids.append(token_id)
        if out.logprobs is not None and logprob is not None:
            out.logprobs.append(logprob)
        is_eos = token_id in eos_ids and not self.params.ignore_eos
        if is_eos or token_id in self.params.stop_token_ids:
            return self.finish("stop")
        self._pending += self.detokenizer.add(token_id)
        delta = self._check_stop_strings()
        if not self.finished and (
            len(out.token_ids) >= self.params.max_tokens or self.num_tokens >= self.max_len
        ):
            return delta + self.finish("length")
        return delta

    def finish(self, reason: str) -> str:
        """End the request; returns the held-back text that is now final."""
        if self.output.finish_reason is None:
            self.output.finish_reason = reason  # type: ignore[assignment]
            if reason == "length":
                self._pending += self.detokenizer.flush()
        delta, self._pending = self._pending, ""
        self.output.text += delta
        return delta

    def _check_stop_strings(self) -> str:
        stops = self.params.stop
        if not stops:
            delta, self._pending = self._pending, ""
            self.output.text += delta
            return delta
        # Text is held back until no stop string can begin in it, so a stop string that spans
        # two tokens is always found whole in the pending text.
        hits = [(i, -len(s)) for i, s in ((self._pending.find(s), s) for s in stops) if i >= 0]
        if hits:
            at, minus_len = min(hits)  # the earliest match (the longest one there)
            keep = self.params.include_stop_str_in_output
            self._pending = self._pending[: at - minus_len if keep else at]
            return self.finish("stop")
        keep = max(len(s) for s in stops) - 1
        delta = self._pending[: max(0, len(self._pending) - keep)]
        self._pending = self._pending[len(delta) :]
        self.output.text += delta
        return delta


@dataclass(frozen=True)
class StepEvent:
    """What one engine step produced for one request."""

    output: RequestOutput
    delta: str
    new_token_ids: tuple[int, ...]
