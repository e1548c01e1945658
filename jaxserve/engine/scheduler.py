"""The scheduler (host only): which requests run this step, and how many tokens each.

Each step, running requests that have finished prefilling decode up to k tokens in one device
call, and the remaining token budget goes to prefill chunks: first requests already partly
prefilled, then waiting ones in (priority, arrival) order. A step that prefills decodes one token
per row only, so prompts waiting to start are not held behind k tokens of every running row.
Pages are reserved here; when the pool runs dry the lowest-priority, newest request is preempted
(its pages freed, its tokens recomputed later), so the engine never crashes for lack of memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from jaxserve.engine.page_allocator import PageAllocator
from jaxserve.engine.request import Request
from jaxserve.engine.rows import (
    DECODE_ROW_BUCKETS,
    PREFILL_ROW_BUCKETS,
    TOKEN_BUCKETS,
    bucket,
    prefill_chunk_cap,
)
from jaxserve.errors import QueueFullError


@dataclass(frozen=True)
class SchedulerConfig:
    """Row and token limits of one step.

    max_num_seqs: running requests at most (decode rows of one step).
    max_num_batched_tokens: tokens per step, decode rows + prefill chunks.
    prefill_chunk: tokens of one prompt prefilled per step at most.
    max_prefill_rows: prompts prefilled side by side in one step at most; with more than one,
        each row is padded to the longest chunk's token bucket and rows x bucket stays within
        `max_num_batched_tokens` (a long prompt prefills alone, short ones share a call).
    decode_steps: tokens a decode-only step generates on device before returning to the host
        (a step that also prefills generates one).
    max_waiting: queued requests at most (more raises QueueFullError).
    """

    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    prefill_chunk: int = 512
    max_prefill_rows: int = 4
    decode_steps: int = 8
    max_waiting: int = 4096

    def __post_init__(self) -> None:
        if not 1 <= self.max_num_seqs <= DECODE_ROW_BUCKETS[-1]:
            raise ValueError(f"max_num_seqs must be between 1 and {DECODE_ROW_BUCKETS[-1]}")
        if self.prefill_chunk not in TOKEN_BUCKETS:
            raise ValueError(f"prefill_chunk must be one of {', '.join(map(str, TOKEN_BUCKETS))}")
        if not 1 <= self.max_prefill_rows <= PREFILL_ROW_BUCKETS[-1]:
            raise ValueError(f"max_prefill_rows must be between 1 and {PREFILL_ROW_BUCKETS[-1]}")
        if self.max_num_batched_tokens < self.max_num_seqs + 1:
            raise ValueError("max_num_batched_tokens must exceed max_num_seqs")
        if self.decode_steps < 1 or self.max_waiting < 1:
            raise ValueError("decode_steps and max_waiting must be positive")


@dataclass(frozen=True)
class PrefillChunk:
    request: Request
    start: int  # tokens of the request already in the cache
    num_tokens: int  # tokens computed this step

    @property
    def is_last(self) -> bool:
        return self.start + self.num_tokens == self.request.prefill_target


@dataclass
class SchedulerOutput:
    prefill: list[PrefillChunk] = field(default_factory=list)
    decode: list[Request] = field(default_factory=list)
    decode_steps: int = 1  # tokens each decode row may generate this step
    preempted: list[Request] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not self.prefill and not self.decode


class Scheduler:
    def __init__(self, config: SchedulerConfig, pages: PageAllocator) -> None:
        self.config = config
        self.pages = pages
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.num_preemptions = 0
        # (source, destination) pages to copy on device before this step's calls: a page
        # several sequences share (a beam's fork) is copied before one of them writes to it
        self.copies: list[tuple[int, int]] = []

    def add(self, request: Request) -> None:
        if len(self.waiting) >= self.config.max_waiting:
            raise QueueFullError(f"{len(self.waiting)} requests are already waiting")
        self.waiting.append(request)

    def remove(self, request: Request) -> None:
        """Take a request out (finished or aborted) and free its pages, unless it keeps them
        (`Request.keep_pages`: a beam whose continuations fork from it; `release` frees them)."""
        if request in self.waiting:
            self.waiting.remove(request)
        if request in self.running:
            self.running.remove(request)
        if not request.keep_pages:
            self._release(request)

    def release(self, request: Request) -> None:
        """Free the pages of a request taken out with `keep_pages`."""
        request.keep_pages = False
        self._release(request)

    def fork(self, child: Request, parent: Request) -> None:
        """Start `child` where `parent` stopped: it shares every page holding the parent's
        computed tokens (its tokens must extend the parent's); the last, partly filled page is
        copied on write, when one of its holders first writes to it."""
        count = math.ceil(parent.num_computed / self.pages.page_size)
        shared = parent.pages[:count]
        self.pages.share(shared)
        child.pages = list(shared)
        child.num_computed = parent.num_computed

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        decoding = [r for r in self.running if r.is_prefilled]
        # Decode rows run up to k tokens on device per step (stopping early on device per row);
        # prefill chunks of other requests are scheduled between these steps.
        steps = self.config.decode_steps
        for request in sorted(decoding, key=_order):
            if request not in self.running:
                continue  # preempted to make room for an earlier request
            capacity = min(request.num_tokens - 1 + steps, request.max_len)
            if self._reserve(request, capacity, out):
                out.decode.append(request)
            else:  # nothing later to preempt: step aside so earlier requests can finish
                self._preempt(request, out)
        out.decode_steps = steps
        budget = self.config.max_num_batched_tokens - len(out.decode)
        for request in self._prefill_candidates():
            if budget <= 0 or len(out.prefill) >= self.config.max_prefill_rows:
                break
            is_new = request not in self.running
            if is_new and len(self.running) >= self.config.max_num_seqs:
                break
            if is_new:
                self._match_prefix(request)
                if request.is_prefilled:  # everything was cached: decode from the next step
                    self.waiting.remove(request)
                    self.running.append(request)
                    continue
            config = self.config
            cap = prefill_chunk_cap(
                len(out.prefill) + 1, config.max_num_batched_tokens, config.prefill_chunk
            )
            if not cap or any(bucket(c.num_tokens, TOKEN_BUCKETS) > cap for c in out.prefill):
                break  # one more row would pad the prefill past the token budget
            n = min(request.prefill_target - request.num_computed, budget, cap)
            if not self._reserve(request, request.num_computed + n, out, may_preempt=not is_new):
                if is_new:
                    self._release(request)
                break
            if is_new:
                self.waiting.remove(request)
                self.running.append(request)
            out.prefill.append(PrefillChunk(request, request.num_computed, n))
            budget -= n
        if out.prefill:
            out.decode_steps = 1  # prompts are being admitted: return to the scheduler soon
        return out

    def _prefill_candidates(self) -> list[Request]:
        partial = sorted((r for r in self.running if not r.is_prefilled), key=_order)
        waiting = [r for r in self.waiting if not _waits_for_leader(r)]
        return partial + sorted(waiting, key=_order)

    def _match_prefix(self, request: Request) -> None:
        if request.pages:
            return
        leader = request.leader
        if leader is not None and leader.pages and not request.output.token_ids:
            # Fork after the leader's prefill: share its full prompt pages (read-only from here
            # on); the page holding the last prompt token is this sequence's own, recomputed
            # so that its first token is drawn from its own seed.
            shared = leader.pages[: (len(request.prompt_token_ids) - 1) // self.pages.page_size]
            self.pages.share(shared)
            request.pages = list(shared)
            request.num_computed = len(shared) * self.pages.page_size
            return
        params = request.params
        if params.prompt_logprobs is not None or (
            params.return_hidden_states is not None and params.hidden_positions == "all"
        ):
            return  # every prompt position is computed: its scores / hidden states are returned
        tokens = request.all_token_ids[: request.prefill_target]
        if not request.output.token_ids:
            tokens = tokens[:-1]  # the last prompt token is always computed: its logits sample
        request.pages = self.pages.match_prefix(tokens, request.cache_salt)
        request.num_computed = len(request.pages) * self.pages.page_size
        if request.num_preemptions == 0:  # report prompt tokens served from the cache
            request.num_cached_tokens = request.num_computed
            request.output.num_cached_tokens = request.num_computed

    def _reserve(
        self, request: Request, num_tokens: int, out: SchedulerOutput, *, may_preempt: bool = True
    ) -> bool:
        """Give `request` pages for `num_tokens` tokens, preempting later requests if needed."""
        needed = math.ceil(num_tokens / self.pages.page_size) - len(request.pages)
        while max(needed, 0) + (self._shared_write_page(request) is not None) > self.pages.num_free:
            victim = self._victim(exclude=request)
            if victim is None or not may_preempt:
                return False
            self._preempt(victim, out)
        if needed > 0:
            request.pages.extend(self.pages.allocate(needed))
        shared = self._shared_write_page(request)
        if shared is not None:
            fresh = self.pages.copy_on_write(request.pages[shared])
            if fresh is not None:
                self.copies.append((request.pages[shared], fresh))
                request.pages[shared] = fresh
        return True

    def _shared_write_page(self, request: Request) -> int | None:
        """The index of the page the request writes next when another holder shares it."""
        i = request.num_computed // self.pages.page_size
        if i < len(request.pages) and self.pages.refcount(request.pages[i]) > 1:
            return i
        return None

    def _victim(self, exclude: Request) -> Request | None:
        candidates = [r for r in self.running if r is not exclude and _order(r) > _order(exclude)]
        return max(candidates, key=_order, default=None)

    def _preempt(self, request: Request, out: SchedulerOutput) -> None:
        self.running.remove(request)
        self._release(request)
        request.num_computed = request.draft_computed = 0
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.append(request)
        out.preempted.append(request)
        if request in out.decode:
            out.decode.remove(request)

    def _release(self, request: Request) -> None:
        if request.pages:
            self.pages.free(request.pages)
            request.pages = []

    def register_computed(self, requests: Iterable[Request]) -> None:
        """Offer the full pages of these requests to the prefix cache."""
        for request in requests:
            if request.params.prompt_logprobs is None and request.pages:
                self.pages.register_full_pages(
                    request.pages,
                    request.all_token_ids[: request.num_computed],
                    request.cache_salt,
                )


def _order(request: Request) -> tuple[int, int, int]:
    return (request.priority, request.request_id, request.index)


def _waits_for_leader(request: Request) -> bool:
    """A sequence of an n > 1 request starts once its leader has prefilled the prompt."""
    leader = request.leader
    return (
        leader is not None
        and not request.output.token_ids
        and not leader.finished
        and not leader.is_prefilled
    )
