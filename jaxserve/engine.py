"""The engine loop: admit requests, prefill them in chunks, decode all running rows together.

Host side only: it turns requests into `RowWork` for the runner and turns the runner's numpy
results back into tokens, text and logprobs.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from jaxserve.config import WeightFormat
from jaxserve.detokenizer import IncrementalDetokenizer
from jaxserve.errors import JaxserveError
from jaxserve.outputs import RequestOutput, TokenLogprob
from jaxserve.page_allocator import PageAllocator
from jaxserve.request import Request
from jaxserve.runner import ModelRunner, RowWork
from jaxserve.sampling_params import SamplingParams
from jaxserve.tokenizer import Tokenizer


class ContextLengthError(JaxserveError):
    """A prompt that does not fit the model's context."""


@dataclass(frozen=True)
class EngineConfig:
    """Serving limits. `max_model_len` None means the model's own context, capped at 8192."""

    weights: WeightFormat = "int8"
    page_size: int = 16
    kv_cache_bytes: int = 512 * 2**20
    max_model_len: int | None = None
    max_num_seqs: int = 16
    prefill_chunk: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        if self.weights not in ("int8", "f32"):
            raise ValueError(f"weights must be 'int8' or 'f32', got {self.weights!r}")
        if not 1 <= self.max_num_seqs <= 64:
            raise ValueError("max_num_seqs must be between 1 and 64")
        if self.prefill_chunk not in (16, 32, 64, 128, 256, 512):
            raise ValueError("prefill_chunk must be a power of two between 16 and 512")


@dataclass(frozen=True)
class StepEvent:
    """What one engine step produced for one request."""

    output: RequestOutput
    delta: str


def _top(ids: np.ndarray, logprobs: np.ndarray, k: int) -> tuple[tuple[int, float], ...]:
    return tuple((int(i), float(lp)) for i, lp in zip(ids[:k], logprobs[:k], strict=True))


class Engine:
    def __init__(
        self, tokenizer: Tokenizer, runner: ModelRunner, config: EngineConfig, *, max_model_len: int
    ) -> None:
        self.tokenizer = tokenizer
        self.runner = runner
        self.config = config
        self.max_model_len = max_model_len
        self.pages = PageAllocator(runner.num_pages)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self._next_id = 0
        self._rng = random.Random(config.seed)

    def add_request(
        self, prompt_token_ids: Sequence[int], params: SamplingParams, *, prompt: str | None = None
    ) -> Request:
        ids = [int(t) for t in prompt_token_ids]
        if not ids:
            raise ValueError("the prompt is empty")
        vocab = self.tokenizer.vocab_size
        if any(not 0 <= t < vocab for t in ids):
            raise ValueError(f"prompt token ids must be in [0, {vocab})")
        if (
            len(ids) >= self.max_model_len
            and params.max_tokens > 0
            or len(ids) > self.max_model_len
        ):
            raise ContextLengthError(
                f"prompt has {len(ids)} tokens; the context holds {self.max_model_len}"
            )
        max_len = min(self.max_model_len, len(ids) + max(params.max_tokens, 1))
        if self._pages_for(max_len) > self.pages.num_pages - 1:
            raise ContextLengthError(f"{max_len} tokens do not fit the KV cache")
        seed = params.seed if params.seed is not None else self._rng.getrandbits(32)
        request = Request(
            request_id=self._next_id,
            prompt_token_ids=ids,
            params=params,
            seed=seed,
            max_len=max_len,
            detokenizer=IncrementalDetokenizer(self.tokenizer, skip_special=True),
            prompt=prompt,
        )
        self._next_id += 1
        self.waiting.append(request)
        return request

    def abort(self, request: Request) -> None:
        """Drop a request wherever it is, freeing its pages."""
        if request in self.waiting:
            self.waiting.remove(request)
        elif request in self.running:
            self._release(request)
        request.finish("abort")

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def step(self) -> list[StepEvent]:
        """Admit and prefill what fits, then decode every running request by one token."""
        events: list[StepEvent] = []
        while self.waiting and len(self.running) < self.config.max_num_seqs:
            request = self.waiting[0]
            needed = self._pages_for(request.max_len)
            if needed > self.pages.num_free:
                break
            self.waiting.popleft()
            request.pages = self.pages.allocate(needed)
            events.append(self._prefill(request))
            self._retire_or_keep(request)
        decoding = [r for r in self.running if r.output.token_ids]
        if decoding:
            events.extend(self._decode(decoding))
            for request in decoding:
                if request.finished:
                    self._release(request)
        return events

    def _pages_for(self, num_tokens: int) -> int:
        return math.ceil(num_tokens / self.config.page_size)

    def _retire_or_keep(self, request: Request) -> None:
        if request.finished:
            self.pages.free(request.pages)
        else:
            self.running.append(request)

    def _release(self, request: Request) -> None:
        self.running.remove(request)
        self.pages.free(request.pages)

    def _row(self, request: Request, token_ids: Sequence[int], start: int, targets=None) -> RowWork:
        return RowWork(
            token_ids=token_ids,
            start=start,
            pages=request.pages,
            temperature=request.params.temperature,
            seed=request.seed,
            target_ids=targets,
        )

    def _prefill(self, request: Request) -> StepEvent:
        prompt = request.prompt_token_ids
        k_prompt = request.params.prompt_logprobs
        chunk = self.config.prefill_chunk
        out = None
        for start in range(0, len(prompt), chunk):
            ids = prompt[start : start + chunk]
            targets = prompt[start + 1 : start + 1 + len(ids)]
            targets = targets + [-1] * (len(ids) - len(targets))
            row = self._row(request, ids, start, targets)
            out = self.runner.run([row], with_prompt_logprobs=k_prompt is not None)
            if k_prompt is not None:
                for j, target in enumerate(targets):
                    if target < 0:
                        continue
                    top = _top(out.prompt_top_ids[0, j], out.prompt_top_logprobs[0, j], k_prompt)
                    lp = TokenLogprob(target, float(out.prompt_logprobs[0, j]), top)
                    request.output.prompt_logprobs.append(lp)
            request.num_prefilled = start + len(ids)
        if request.params.max_tokens == 0:
            return StepEvent(request.output, request.finish("length"))
        return StepEvent(request.output, self._accept(request, out, 0))

    def _decode(self, requests: list[Request]) -> list[StepEvent]:
        rows = [self._row(r, r.output.token_ids[-1:], r.num_tokens - 1) for r in requests]
        out = self.runner.run(rows)
        return [StepEvent(r.output, self._accept(r, out, i)) for i, r in enumerate(requests)]

    def _accept(self, request: Request, out, i: int) -> str:
        token_id = int(out.token_ids[i])
        logprob = None
        if request.params.logprobs is not None:
            top = _top(out.top_ids[i], out.top_logprobs[i], request.params.logprobs)
            logprob = TokenLogprob(token_id, float(out.logprobs[i]), top)
        return request.append_token(token_id, logprob, eos_ids=self.tokenizer.eos_ids)
