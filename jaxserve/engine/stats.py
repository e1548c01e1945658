"""Engine statistics (host only): latency, queue, KV usage, prefix-cache hits, padding."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jaxserve.engine.request import Request
    from jaxserve.engine.scheduler import Scheduler, SchedulerOutput


@dataclass
class EngineStats:
    """Running totals the API exports; `snapshot()` gives a plain dict."""

    num_steps: int = 0
    num_finished: int = 0
    num_prompt_tokens: int = 0
    num_generated_tokens: int = 0
    num_cached_tokens: int = 0
    num_preemptions: int = 0
    ttft_s: list[float] = field(default_factory=list)
    tpot_s: list[float] = field(default_factory=list)
    queue_s: list[float] = field(default_factory=list)
    num_running: int = 0
    num_waiting: int = 0
    pages_used: int = 0
    pages_free: int = 0
    prefix_hit_rate: float = 0.0
    padding_ratio: float = 0.0  # token slots computed / tokens requests needed
    compiles_after_warmup: int = 0
    num_draft_tokens: int = 0  # speculative decoding: drafts checked
    num_accepted_tokens: int = 0  # of those, accepted

    def on_first_token(self, request: Request) -> None:
        now = time.monotonic()
        request.first_token_time = now
        self.ttft_s.append(now - request.arrival_time)

    def on_finish(self, request: Request) -> None:
        self.num_finished += 1
        self.num_prompt_tokens += len(request.prompt_token_ids)
        n = len(request.output.token_ids)
        self.num_generated_tokens += n
        self.num_cached_tokens += request.num_cached_tokens
        if request.first_token_time is not None and n > 1:
            self.tpot_s.append((time.monotonic() - request.first_token_time) / (n - 1))

    def on_step(self, scheduler: Scheduler, out: SchedulerOutput) -> None:
        self.num_steps += 1
        now = time.monotonic()
        for chunk in out.prefill:
            request = chunk.request
            if request.scheduled_time is None:
                request.scheduled_time = now
                self.queue_s.append(now - request.arrival_time)
        self.on_occupancy(scheduler)

    def on_occupancy(self, scheduler: Scheduler) -> None:
        """Requests and pages in use now (after a step, and after an abort between steps, so
        that an idle engine does not keep reporting requests that are gone)."""
        self.num_running = len(scheduler.running)
        self.num_waiting = len(scheduler.waiting)
        self.pages_used = scheduler.pages.num_used
        self.pages_free = scheduler.pages.num_free
        self.prefix_hit_rate = scheduler.pages.stats.hit_rate
        self.num_preemptions = scheduler.num_preemptions

    def on_speculation(self, speculator) -> None:
        if speculator is not None:
            self.num_draft_tokens = speculator.num_proposed
            self.num_accepted_tokens = speculator.num_accepted

    def on_runner(self, runner) -> None:
        """Padding waste and compiles since warm-up, read from the runner."""
        self.padding_ratio = runner.num_padded_tokens / max(runner.num_real_tokens, 1)
        if runner.compiled_at_warmup is not None:
            self.compiles_after_warmup = runner.num_compiled() - runner.compiled_at_warmup

    def snapshot(self) -> dict[str, float]:
        def mean(xs: list[float]) -> float:
            return sum(xs) / len(xs) if xs else 0.0

        return {
            "num_steps": self.num_steps,
            "num_finished": self.num_finished,
            "num_running": self.num_running,
            "num_waiting": self.num_waiting,
            "kv_pages_used": self.pages_used,
            "kv_pages_free": self.pages_free,
            "prefix_cache_hit_rate": self.prefix_hit_rate,
            "num_preemptions": self.num_preemptions,
            "mean_ttft_s": mean(self.ttft_s),
            "mean_tpot_s": mean(self.tpot_s),
            "mean_queue_s": mean(self.queue_s),
            "prompt_tokens": self.num_prompt_tokens,
            "generated_tokens": self.num_generated_tokens,
            "cached_tokens": self.num_cached_tokens,
            "padding_ratio": self.padding_ratio,
            "compiles_after_warmup": self.compiles_after_warmup,
            "draft_tokens": self.num_draft_tokens,
            "accepted_draft_tokens": self.num_accepted_tokens,
        }
