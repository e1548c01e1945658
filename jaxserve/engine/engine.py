"""The engine loop: `step()` = schedule -> run -> postprocess.

Host side only: it turns scheduled requests into rows for the device side (a `Runner`) and the
runner's numpy results back into tokens, text and logprobs.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from jaxserve.engine.adapters import Adapters
from jaxserve.engine.admission import (
    check_embed_inputs,
    check_prompt,
    check_queue,
    healed_prompt,
    sequence_seed,
)
from jaxserve.engine.background_warmup import BackgroundWarmUp
from jaxserve.engine.beam import BeamSearches
from jaxserve.engine.config import EngineConfig
from jaxserve.engine.device import DecodeResult, PrefillResult, Runner
from jaxserve.engine.drafter import Drafter
from jaxserve.engine.embed import embed
from jaxserve.engine.grammar_slots import GrammarSlots
from jaxserve.engine.page_allocator import PageAllocator
from jaxserve.engine.postprocess import (
    check_finite,
    record_token,
    runs_free,
    token_logprob,
    top_alternatives,
)
from jaxserve.engine.request import Request, StepEvent
from jaxserve.engine.research import Research, keep_prefill, record_research
from jaxserve.engine.rows import NO_PROBE, DecodeRow, PrefillRow
from jaxserve.engine.sampling_inputs import SamplingInputs
from jaxserve.engine.scheduler import PrefillChunk, Scheduler, SchedulerConfig
from jaxserve.engine.speculation import Speculator
from jaxserve.engine.stats import EngineStats
from jaxserve.engine.verify import VerifySteps
from jaxserve.grammar import (
    CompiledGrammar,
    GrammarCompiler,
    LazyMatcher,
    Matcher,
    TokenVocab,
    UnsupportedConstraintError,
)
from jaxserve.outputs import TokenLogprob
from jaxserve.sampling.rows import SamplingRow
from jaxserve.sampling_params import SamplingParams
from jaxserve.text.detokenizer import IncrementalDetokenizer
from jaxserve.text.tokenizer import Tokenizer

log = logging.getLogger("jaxserve.engine")
MAX_FAILED_CALLS = 3  # device calls in a row that may raise before the engine gives up


class Engine(VerifySteps, BackgroundWarmUp):
    def __init__(
        self,
        tokenizer: Tokenizer,
        runner: Runner,
        config: EngineConfig,
        scheduler_config: SchedulerConfig,
        *,
        max_model_len: int,
        draft_runner: Runner | None = None,
    ) -> None:
        """`draft_runner`: the draft model of `speculative="draft"` (its KV cache laid out
        like `runner`'s)."""
        self.tokenizer = tokenizer
        self.runner = runner
        self.config = config
        self.max_model_len = max_model_len
        pages = PageAllocator(
            runner.num_pages, config.page_size, enable_prefix_caching=config.enable_prefix_caching
        )
        self.scheduler = Scheduler(scheduler_config, pages)
        self.stats = EngineStats()
        self.sampling = SamplingInputs(tokenizer, runner.config.vocab_size)
        self._requests: dict[tuple[int, int], Request] = {}  # (request_id, index)
        self._groups: dict[int, Request] = {}  # request_id -> its first sequence
        self._next_id = 0
        self._rng = random.Random(config.seed)
        self._grammars: GrammarCompiler | None = None
        self._grammars_lock = threading.Lock()  # `precompile` may run on another thread
        # request id -> the error that failed it alone in the last step
        self.failed: dict[int, Exception] = {}
        self._failed_calls = {"prefill": 0, "decode": 0}  # calls of a kind in a row that raised
        self.research = Research(
            capture_slots=runner.capture_slots,
            steering_slots=runner.steering_slots,
            num_layers=runner.config.num_layers,
            hidden=runner.config.hidden_size,
        )
        self.adapters = Adapters(slots=runner.lora_slots, rank=runner.lora_rank)
        words = (runner.config.vocab_size + 31) // 32
        self.grammar_slots = GrammarSlots(runner.grammar_states, words)
        spec = config.speculative
        self.speculator = Speculator(spec) if spec is not None else None
        self.drafter = None
        if draft_runner is not None:
            steps = spec.num_tokens if spec is not None else 0
            chunk = scheduler_config.prefill_chunk
            self.drafter = Drafter(draft_runner, chunk=chunk, max_tokens=steps)
        self._to_warm: list[tuple[str, int, int, int]] = []  # buckets left to compile (idle)
        self.warmup_total = 0
        self._warm_started = 0.0
        self.beams = BeamSearches(self)

    def precompile(self, params: SamplingParams) -> None:
        """Compile the request's constraint now, into the compiler's cache (thread-safe), so that
        `add_request` finds it there: a server does this off the engine thread, where a large
        schema's compile would stall every running stream. Raises what `add_request` would."""
        self._compile_constraint(params)

    @property
    def grammars(self) -> GrammarCompiler:
        """Constraint compiler over this tokenizer's vocabulary (built on first use)."""
        with self._grammars_lock:
            if self._grammars is None:
                width = self.runner.config.vocab_size
                self._grammars = GrammarCompiler(
                    TokenVocab.from_tokenizer(self.tokenizer, width=width)
                )
        return self._grammars

    def add_request(
        self,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        *,
        prompt: str | None = None,
        priority: int = 0,
    ) -> Request:
        """Check and queue a request (its `n` sequences); returns its first sequence. With
        `use_beam_search` the sequences are the search's results (`engine/beam.py`)."""
        if params.use_beam_search:
            return self.beams.start(prompt_token_ids, params, prompt, priority)
        ids, max_len = check_prompt(
            prompt_token_ids,
            params,
            vocab=self.tokenizer.vocab_size,
            num_eos=len(self.tokenizer.eos_ids),
            max_model_len=self.max_model_len,
            page_size=self.config.page_size,
            num_pages=self.runner.num_pages,
        )
        check_queue(len(self.scheduler.waiting), params.n, self.scheduler.config.max_waiting)
        compiled = self._compile_constraint(params)
        if params.token_healing:
            ids, pattern = healed_prompt(list(ids), self.tokenizer.token_bytes)
            compiled = self.grammars.compile({"regex": pattern}) if pattern else None
        seed = params.seed if params.seed is not None else self._rng.getrandbits(32)
        group: list[Request] = []
        for index in range(params.n):
            # Sequences after the first share the leader's prompt pages, so their prompt
            # logprobs (computed once, by the leader) are not asked for again.
            seq_params = params if index == 0 else replace(params, prompt_logprobs=None)
            request = Request(
                request_id=self._next_id,
                prompt_token_ids=ids,
                params=seq_params,
                seed=sequence_seed(seed, index),
                max_len=max_len,
                detokenizer=IncrementalDetokenizer(
                    self.tokenizer, skip_special=params.skip_special_tokens
                ),
                prompt=prompt,
                priority=priority,
                index=index,
                group=group,
            )
            self.sampling.prepare(request)
            if compiled is not None and params.grammar_triggers:
                request.matcher = LazyMatcher(compiled, params.grammar_triggers)
            elif compiled is not None:
                request.matcher = Matcher(compiled)
        # Research hooks and the adapter last (a steering slot is taken): what raises for one
        # sequence raises for the first, before any slot is.
        self.adapters.check(params)
        for request in group:
            request.capture = self.adapters.admit(params, self.research.admit(params))
        now = time.monotonic()
        for request in group:
            request.arrival_time = now
            self.scheduler.add(request)
            self._requests[(request.request_id, request.index)] = request
        self._groups[group[0].request_id] = group[0]
        self._next_id += 1
        return group[0]

    def new_request_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def _compile_constraint(self, params: SamplingParams) -> CompiledGrammar | None:
        """The request's constraint against this vocabulary (cached); errors name the field."""
        spec = params.constraint
        if spec is None:
            return None
        try:
            return self.grammars.compile(spec)
        except UnsupportedConstraintError as error:
            name = next(iter(spec))
            raise type(error)(f"{name}: {error}") from None

    def abort(self, request: Request | int) -> None:
        """Drop a request (every one of its sequences) wherever it is; its pages are free
        before the next step."""
        if self.beams.abort(request if isinstance(request, int) else request.request_id):
            return
        if isinstance(request, int):
            request = self._groups.get(request)
            if request is None:
                return
        self._groups.pop(request.request_id, None)
        for seq in request.group:
            if self._requests.pop((seq.request_id, seq.index), None) is not None:
                self.scheduler.remove(seq)
                self.research.release(seq.capture)
                self.adapters.release(seq.capture)
                seq.finish("abort")
        self.stats.on_occupancy(self.scheduler)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_work()

    def check_embed_inputs(self, inputs: Sequence[Sequence[int]]) -> list[list[int]]:
        """The inputs as int lists; raises ValueError or ContextLengthError naming the input."""
        return check_embed_inputs(
            inputs,
            vocab=self.tokenizer.vocab_size,
            max_model_len=self.max_model_len,
            page_size=self.config.page_size,
            num_pages=self.runner.num_pages,
        )

    def embed(self, inputs: Sequence[Sequence[int]]) -> np.ndarray:
        """Embeddings `[len(inputs), hidden]` (float32), see `jaxserve.engine.embed.embed`.
        Call it between steps, on the thread that steps."""
        return embed(
            self.check_embed_inputs(inputs),
            runner=self.runner,
            pages=self.scheduler.pages,
            max_rows=self.scheduler.config.max_prefill_rows,
            chunk=self.scheduler.config.prefill_chunk,
        )

    def step(self) -> list[StepEvent]:
        """Schedule, run the device work, and turn its results into per-request events.

        A failure in one request's host-side work (its constraint matcher, its sampler inputs,
        its text) fails that request alone: it is aborted with `output.error` set and listed
        in `failed`; the step goes on for the others. A device call that raises (a logits hook
        that raises while its step is traced, say) fails the requests of that call; after
        `MAX_FAILED_CALLS` prefill or decode calls in a row raised, the error propagates (the
        loop stops)."""
        self.failed = {}
        out = self.scheduler.schedule()
        if self.scheduler.copies:  # pages forked by beams, copied before anyone writes them
            self.runner.copy_pages(self.scheduler.copies)
            self.scheduler.copies = []
        events: list[StepEvent] = []
        if out.prefill:
            events += self._run_prefill(out.prefill)
        decode = [r for r in out.decode if not r.finished]  # one failed in its prefill
        if decode:
            events += self._run_decode(decode, out.decode_steps)
        # Before finished requests free their pages: one that ended in its prefill step still
        # leaves its prompt in the prefix cache.
        self.scheduler.register_computed(self.scheduler.running)
        events = [e for e in events if e.output.request_id not in self.failed]
        for event in events:
            if event.output.finished:
                request = self._requests.pop((event.output.request_id, event.output.index))
                if all(seq.finished for seq in request.group):
                    self._groups.pop(request.request_id, None)
                self.scheduler.remove(request)
                self.research.finish(request)
                self.adapters.release(request.capture)
                self.stats.on_finish(request)
        events = self.beams.after_step(events)
        self.stats.on_step(self.scheduler, out)
        self.stats.on_runner(self.runner)
        self.stats.on_speculation(self.speculator)
        return events

    def _sync_tables(self) -> None:
        """Load changed device tables (constraints, steering, adapters) before a device call."""
        slots = self.grammar_slots
        if slots.dirty:
            self.runner.load_grammar_tables(slots.byte_next, slots.masks, slots.complete)
            slots.dirty = False
        if self.research.dirty:
            self.runner.load_steering(self.research.table)
            self.research.dirty = False
        while self.adapters.pending:
            self.runner.load_lora(*self.adapters.pending.pop(0))

    def _prefill_row(self, chunk: PrefillChunk) -> PrefillRow:
        r, start, end = chunk.request, chunk.start, chunk.start + chunk.num_tokens
        samples = chunk.is_last and not r.output.token_ids and r.params.max_tokens > 0
        # A chunk recomputed after a preemption already has its prompt logprobs.
        wants = r.output.prompt_logprobs is not None and len(r.output.prompt_logprobs) == start + 1
        return PrefillRow(
            token_ids=r.all_token_ids[start:end],
            start=start,
            pages=r.pages,
            sampling=self.sampling.row(r, end) if samples else SamplingRow(),
            prompt_targets=r.prompt_token_ids[start + 1 : end + 1] if wants else (),
            probe=r.capture.row() if r.capture is not None else NO_PROBE,
        )

    def _fail(self, request: Request, error: Exception) -> None:
        """Abort `request` (all its sequences) because its own host-side work raised."""
        log.error("request %d failed: %r", request.request_id, error, exc_info=error)
        self.failed[request.request_id] = error
        for seq in request.group:
            seq.output.error = f"{type(error).__name__}: {error}"
        self.abort(request)

    def _device_call(self, kind: str, requests: Sequence[Request], call: Callable[[], Any]) -> Any:
        """`call()`, or None after failing `requests` when it raises; the error propagates once
        `MAX_FAILED_CALLS` calls of this kind in a row have raised (the device is failing)."""
        try:
            out = call()
        except Exception as error:
            self._failed_calls[kind] += 1
            if self._failed_calls[kind] >= MAX_FAILED_CALLS:
                raise
            for request in requests:
                if not request.finished:
                    self._fail(request, error)
            return None
        self._failed_calls[kind] = 0
        return out

    def _each(self, items: Sequence, fn: Callable[[int, Any], Any]) -> list:
        """(item, `fn(i, item)`) for each unfinished request or chunk (i: its position in
        `items`) whose work does not raise; one that raises is failed."""
        done = []
        for i, item in enumerate(items):
            request = item.request if isinstance(item, PrefillChunk) else item
            if request.finished:
                continue
            try:
                done.append((item, fn(i, item)))
            except Exception as error:  # a bug in this request's own state: fail it alone
                self._fail(request, error)
        return done

    def _run_prefill(self, chunks: list[PrefillChunk]) -> list[StepEvent]:
        built = self._each(chunks, lambda _, c: self._prefill_row(c))
        if not built:
            return []
        chunks, rows = [c for c, _ in built], [row for _, row in built]
        self._sync_tables()
        out = self._device_call(
            "prefill", [c.request for c in chunks], lambda: self.runner.prefill(rows)
        )
        if out is None:
            return []
        for i, (c, row) in enumerate(zip(chunks, rows, strict=True)):
            k = c.request.params.prompt_logprobs
            for j, target in enumerate(row.prompt_targets):
                p = out.prompt
                top = top_alternatives(p.top_ids[i, j], p.top_logprobs[i, j], k)
                entry = TokenLogprob(target, float(p.chosen[i, j]), top)
                c.request.output.prompt_logprobs.append(entry)
        done = self._each(chunks, lambda i, c: self._prefilled(c, out, i))
        return [e for _, e in done if e is not None]

    def _prefilled(self, c: PrefillChunk, out: PrefillResult, i: int) -> StepEvent | None:
        request = c.request
        request.num_computed = c.start + c.num_tokens
        keep_prefill(request, out, i, c.start, c.num_tokens)
        if not c.is_last or request.output.token_ids:
            return None  # more prompt to go, or recomputing after a preemption
        self.stats.on_first_token(request)
        if request.params.max_tokens == 0:
            return StepEvent(request.output, request.finish("length"), ())
        check_finite(request, out.nonfinite, i)
        token = int(out.token_ids[i])
        request.mirostat_mu = float(out.mirostat_mu[i])
        lp = token_logprob(request, token, out.logprobs[i], out.top_ids[i], out.top_logprobs[i])
        record_research(request, out.uncertainty[i], out.probe, i, 0)
        delta = record_token(request, token, lp, eos_ids=self.tokenizer.eos_ids)
        return StepEvent(request.output, delta, (token,))

    def _run_decode(self, requests: list[Request], max_tokens: int) -> list[StepEvent]:
        """Decode up to `max_tokens` tokens per row. The device call always has the configured
        number of steps (one compiled shape); rows stop on device after their `remaining`."""
        drafts = self._drafts(requests, self.scheduler.config.decode_steps)
        events = self._run_verify(drafts) if drafts else []
        requests = [r for r in requests if r not in drafts and not r.finished]
        in_use = {r.matcher.grammar for r in requests if r.matcher is not None}
        built = self._each(requests, lambda _, r: self._decode_row(r, in_use, max_tokens))
        if not built:
            return events
        requests, rows = [r for r, _ in built], [row for _, row in built]
        num_steps = self.scheduler.config.decode_steps
        self._sync_tables()
        out = self._device_call(
            "decode", requests, lambda: self.runner.decode(rows, num_steps=num_steps)
        )
        if out is None:
            return events
        return events + [e for _, e in self._each(requests, lambda i, r: self._decoded(r, out, i))]

    def _decoded(self, request: Request, out: DecodeResult, i: int) -> StepEvent:
        check_finite(request, out.nonfinite, i)
        eos_ids = self.tokenizer.eos_ids
        delta, new = "", []
        free = runs_free(request)
        for j in range(int(out.num_generated[i])):
            token = int(out.token_ids[i, j])
            if free and not request.matcher.accept_token(token):
                break  # a free draw the trigger's constraint forbids: redrawn masked next step
            lp = token_logprob(
                request, token, out.logprobs[i, j], out.top_ids[i, j], out.top_logprobs[i, j]
            )
            accepted = True if free else None
            # the token's input sits at position num_tokens - 1
            record_research(request, out.uncertainty[i, j], out.probe, i, j, request.num_tokens - 1)
            delta += record_token(request, token, lp, eos_ids=eos_ids, accepted=accepted)
            if free and not request.matcher.is_free():
                break  # later draws ignored the mask that now applies
            new.append(token)
            if request.finished:
                break  # anything generated past a stop string is dropped
        request.num_computed = request.num_tokens - 1
        request.mirostat_mu = float(out.mirostat_mu[i])
        return StepEvent(request.output, delta, tuple(new))

    def _decode_row(
        self, request: Request, in_use: set[CompiledGrammar], max_tokens: int
    ) -> DecodeRow:
        params = request.params
        remaining = min(
            params.max_tokens - len(request.output.token_ids),
            request.max_len - request.num_tokens,
            max_tokens,
        )
        matcher, grammar_state = request.matcher, -1
        if type(matcher) is Matcher:  # a regular constraint runs on device when it fits
            offset = self.grammar_slots.offset(matcher.grammar, in_use)
            if offset is not None:
                grammar_state = offset + matcher.state
        if matcher is not None and grammar_state < 0 and not runs_free(request):
            remaining = min(remaining, 1)  # its next mask needs the host
        return DecodeRow(
            token_id=request.all_token_ids[-1],
            start=request.num_tokens - 1,
            pages=request.pages,
            sampling=self.sampling.row(request, request.num_tokens, host_mask=grammar_state < 0),
            remaining=remaining,
            grammar_state=grammar_state,
            probe=request.capture.row() if request.capture is not None else NO_PROBE,
        )
