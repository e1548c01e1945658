"""The engine loop: `step()` = schedule -> run -> postprocess.

Host side only: it turns scheduled requests into rows for the runner and the runner's numpy
results back into tokens, text and logprobs.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from jaxserve.config import WeightFormat
from jaxserve.detokenizer import IncrementalDetokenizer
from jaxserve.errors import ContextLengthError
from jaxserve.grammar import (
    CompiledGrammar,
    GrammarCompiler,
    LazyMatcher,
    Matcher,
    TokenVocab,
    UnsupportedConstraintError,
)
from jaxserve.grammar_slots import GrammarSlots
from jaxserve.outputs import RequestOutput, TokenLogprob
from jaxserve.page_allocator import OutOfPagesError, PageAllocator
from jaxserve.request import Request
from jaxserve.runner import DecodeRow, EmbedRow, ModelRunner, PrefillRow
from jaxserve.sampling.rows import NUM_STOP_IDS, SamplingRow, token_bitmask
from jaxserve.sampling_params import MAX_BAD_WORD_TOKENS, SamplingParams
from jaxserve.scheduler import PrefillChunk, QueueFullError, Scheduler, SchedulerConfig
from jaxserve.stats import EngineStats
from jaxserve.tokenizer import Tokenizer


@dataclass(frozen=True)
class EngineConfig:
    """Memory and model settings. `max_model_len` None means the model's context, capped at 4096."""

    weights: WeightFormat = "int8"
    page_size: int = 16
    kv_cache_bytes: int = 512 * 2**20
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    compilation_cache_dir: str | None = None  # None: <model cache>/xla; "": off
    seed: int = 0
    grammar_states: int = 1024  # on-device constraint table capacity (0: host masks only)

    def __post_init__(self) -> None:
        if self.weights not in ("int8", "f32"):
            raise ValueError(f"weights must be 'int8' or 'f32', got {self.weights!r}")
        if self.page_size < 1 or self.kv_cache_bytes < 1:
            raise ValueError("page_size and kv_cache_bytes must be positive")


@dataclass(frozen=True)
class StepEvent:
    """What one engine step produced for one request."""

    output: RequestOutput
    delta: str
    new_token_ids: tuple[int, ...]


MIN_LOGPROB = -9999.0  # stands for log(0), which JSON cannot carry (as vLLM reports it)


def _top(ids: np.ndarray, logprobs: np.ndarray, k: int) -> tuple[tuple[int, float], ...]:
    """The top-k alternatives; tokens the chain removed (logprob -inf) are not alternatives."""
    pairs = zip(ids[:k], logprobs[:k], strict=True)
    return tuple((int(i), float(lp)) for i, lp in pairs if np.isfinite(lp))


class Engine:
    def __init__(
        self,
        tokenizer: Tokenizer,
        runner: ModelRunner,
        config: EngineConfig,
        scheduler_config: SchedulerConfig,
        *,
        max_model_len: int,
    ) -> None:
        self.tokenizer = tokenizer
        self.runner = runner
        self.config = config
        self.max_model_len = max_model_len
        pages = PageAllocator(
            runner.num_pages, config.page_size, enable_prefix_caching=config.enable_prefix_caching
        )
        self.scheduler = Scheduler(scheduler_config, pages)
        self.stats = EngineStats()
        self._requests: dict[tuple[int, int], Request] = {}  # (request_id, index)
        self._groups: dict[int, Request] = {}  # request_id -> its first sequence
        self._next_id = 0
        self._rng = random.Random(config.seed)
        self._breaker_masks: dict[tuple[str, ...], np.ndarray] = {}
        self._grammars: GrammarCompiler | None = None
        words = (runner.config.vocab_size + 31) // 32
        self.grammar_slots = GrammarSlots(runner.grammar_states, words)

    @property
    def grammars(self) -> GrammarCompiler:
        """Constraint compiler over this tokenizer's vocabulary (built on first use)."""
        if self._grammars is None:
            vocab = TokenVocab.from_tokenizer(self.tokenizer, width=self.runner.config.vocab_size)
            self._grammars = GrammarCompiler(vocab)
        return self._grammars

    def add_request(
        self,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        *,
        prompt: str | None = None,
        priority: int = 0,
    ) -> Request:
        ids = [int(t) for t in prompt_token_ids]
        if not ids:
            raise ValueError("the prompt is empty")
        vocab = self.tokenizer.vocab_size
        if any(not 0 <= t < vocab for t in ids):
            raise ValueError(f"prompt token ids must be in [0, {vocab})")
        limit = self.max_model_len if params.max_tokens == 0 else self.max_model_len - 1
        if len(ids) > limit:
            raise ContextLengthError(
                f"prompt has {len(ids)} tokens; the context holds {self.max_model_len}"
            )
        if len(params.stop_token_ids) + len(self.tokenizer.eos_ids) > NUM_STOP_IDS:
            raise ValueError(f"at most {NUM_STOP_IDS - len(self.tokenizer.eos_ids)} stop_token_ids")
        max_len = min(self.max_model_len, len(ids) + max(params.max_tokens, 1))
        if math.ceil(max_len / self.config.page_size) > self.runner.num_pages - 1:
            raise ContextLengthError(f"{max_len} tokens do not fit the KV cache")
        if params.allowed_token_ids is not None and max(params.allowed_token_ids) >= vocab:
            raise ValueError(f"allowed_token_ids must be in [0, {vocab})")
        if params.logit_bias and max(params.logit_bias) >= vocab:
            raise ValueError(f"logit_bias token ids must be in [0, {vocab})")
        if any(t >= vocab for t in params.stop_token_ids):
            raise ValueError(f"stop_token_ids must be in [0, {vocab})")
        if len(self.scheduler.waiting) + params.n > self.scheduler.config.max_waiting:
            raise QueueFullError(f"{len(self.scheduler.waiting)} requests are already waiting")
        compiled = self._compile_constraint(params)
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
                detokenizer=IncrementalDetokenizer(self.tokenizer, skip_special=True),
                prompt=prompt,
                priority=priority,
                index=index,
                group=group,
            )
            self._prepare_sampling(request)
            if compiled is not None and params.grammar_triggers:
                request.matcher = LazyMatcher(compiled, params.grammar_triggers)
            elif compiled is not None:
                request.matcher = Matcher(compiled)
        now = time.monotonic()
        for request in group:
            request.arrival_time = now
            self.scheduler.add(request)
            self._requests[(request.request_id, request.index)] = request
        self._groups[group[0].request_id] = group[0]
        self._next_id += 1
        return group[0]

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

    def _prepare_sampling(self, request: Request) -> None:
        """Per-request sampler inputs that never change: bitmask, bad words, DRY breakers."""
        params = request.params
        vocab = self.runner.config.vocab_size
        if params.allowed_token_ids is not None:
            request.allowed_mask = token_bitmask(params.allowed_token_ids, vocab)
        words = []
        for word in params.bad_words:
            for text in (word, " " + word):  # as a word of its own and mid-sentence
                ids = tuple(self.tokenizer.encode(text, add_special=False))
                if len(ids) > MAX_BAD_WORD_TOKENS:
                    raise ValueError(
                        f"bad_words: {word!r} is longer than {MAX_BAD_WORD_TOKENS} tokens"
                    )
                if ids and ids not in words:
                    words.append(ids)
        request.bad_word_ids = words  # at most 2 per word: fits BAD_WORD_SEQUENCES
        if params.dry_multiplier > 0:
            request.breaker_mask = self._breaker_mask(params.dry_sequence_breakers)
        request.mirostat_mu = 2.0 * params.mirostat_tau

    def _breaker_mask(self, breakers: tuple[str, ...]) -> np.ndarray:
        """Tokens whose text contains a DRY sequence breaker (cached per breaker set)."""
        mask = self._breaker_masks.get(breakers)
        if mask is None:
            needles = [b.encode() for b in breakers]
            ids = [
                i
                for i in range(self.tokenizer.vocab_size)
                if any(n in self.tokenizer.token_bytes(i) for n in needles)
            ]
            mask = token_bitmask(ids, self.runner.config.vocab_size)
            self._breaker_masks[breakers] = mask
        return mask

    def _sampling_row(
        self, request: Request, length: int, *, host_mask: bool = True
    ) -> SamplingRow:
        """The sampler's view of `request` when drawing the token at position `length`;
        `host_mask` adds the constraint's mask (off when the device applies it)."""
        params = request.params
        allowed = request.allowed_mask
        if request.matcher is not None and host_mask:
            grammar_mask = request.matcher.bitmask()
            allowed = grammar_mask if allowed is None else allowed & grammar_mask
        return SamplingRow(
            params=params,
            seed=request.seed,
            prompt_len=len(request.prompt_token_ids),
            num_generated=len(request.output.token_ids),
            mirostat_mu=request.mirostat_mu,
            stop_ids=self._stop_ids(params),
            history=request.all_token_ids[:length] if params.uses_history else None,
            allowed_mask=allowed,
            breaker_mask=request.breaker_mask,
            bad_word_ids=request.bad_word_ids,
        )

    def _stop_ids(self, params: SamplingParams) -> list[int]:
        stop_ids = set(params.stop_token_ids)
        if not params.ignore_eos:
            stop_ids |= self.tokenizer.eos_ids
        return sorted(stop_ids)

    def abort(self, request: Request | int) -> None:
        """Drop a request (every one of its sequences) wherever it is; its pages are free
        before the next step."""
        if isinstance(request, int):
            request = self._groups.get(request)
            if request is None:
                return
        self._groups.pop(request.request_id, None)
        for seq in request.group:
            if self._requests.pop((seq.request_id, seq.index), None) is not None:
                self.scheduler.remove(seq)
                seq.finish("abort")

    def has_unfinished(self) -> bool:
        return self.scheduler.has_work()

    def check_embed_inputs(self, inputs: Sequence[Sequence[int]]) -> list[list[int]]:
        """The inputs as int lists; raises ValueError (empty or out-of-vocabulary input) or
        ContextLengthError (longer than the context or the KV cache), naming the input."""
        if not inputs:
            raise ValueError("the input is empty")
        vocab = self.tokenizer.vocab_size
        out = []
        for i, item in enumerate(inputs):
            ids = [int(t) for t in item]
            if not ids:
                raise ValueError(f"input {i} is empty")
            if any(not 0 <= t < vocab for t in ids):
                raise ValueError(f"input {i}: token ids must be in [0, {vocab})")
            if len(ids) > self.max_model_len:
                raise ContextLengthError(
                    f"input {i} has {len(ids)} tokens; the context holds {self.max_model_len}"
                )
            if math.ceil(len(ids) / self.config.page_size) > self.runner.num_pages - 1:
                raise ContextLengthError(f"input {i}: {len(ids)} tokens do not fit the KV cache")
            out.append(ids)
        return out

    def embed(self, inputs: Sequence[Sequence[int]]) -> np.ndarray:
        """Embeddings `[len(inputs), hidden]` (float32): each input's final hidden states (after
        the final norm) averaged over its tokens, then L2-normalized.

        Call it between steps (on the thread that steps). Each input's K/V is written to pages of
        its own, taken from the pool and freed before this returns (never entered in the prefix
        cache), so running requests are untouched. Raises `OutOfPagesError`, having computed
        nothing, when the free pages cannot hold the longest input; the caller retries once
        running requests have finished.
        """
        given = self.check_embed_inputs(inputs)
        unique = list(dict.fromkeys(tuple(x) for x in given))  # equal inputs: one row
        ids = [list(x) for x in unique]
        allocator = self.scheduler.pages
        need = [math.ceil(len(x) / self.config.page_size) for x in ids]
        if max(need) > allocator.num_free:
            raise OutOfPagesError(f"need {max(need)} KV pages, {allocator.num_free} free")
        out = np.zeros((len(ids), self.runner.config.hidden_size), np.float32)
        begin = 0
        while begin < len(ids):  # as many inputs at once as the free pages hold
            end, total = begin, 0
            while end < len(ids) and total + need[end] <= allocator.num_free:
                total += need[end]
                end += 1
            rows = [
                EmbedRow(x, allocator.allocate(n))
                for x, n in zip(ids[begin:end], need[begin:end], strict=True)
            ]
            try:
                out[begin:end] = self.runner.embed(
                    rows,
                    max_rows=self.scheduler.config.max_prefill_rows,
                    chunk=self.scheduler.config.prefill_chunk,
                )
            finally:
                for row in rows:
                    allocator.free(row.pages)
            begin = end
        where = {x: i for i, x in enumerate(unique)}
        return out[[where[tuple(x)] for x in given]]

    def step(self) -> list[StepEvent]:
        """Schedule, run the device work, and turn its results into per-request events."""
        out = self.scheduler.schedule()
        events: list[StepEvent] = []
        if out.prefill:
            events += self._run_prefill(out.prefill)
        if out.decode:
            events += self._run_decode(out.decode, out.decode_steps)
        # Before finished requests free their pages: one that ended in its prefill step still
        # leaves its prompt in the prefix cache.
        self.scheduler.register_computed(self.scheduler.running)
        for event in events:
            if event.output.finished:
                request = self._requests.pop((event.output.request_id, event.output.index))
                if all(seq.finished for seq in request.group):
                    self._groups.pop(request.request_id, None)
                self.scheduler.remove(request)
                self.stats.on_finish(request)
        self.stats.on_step(self.scheduler, out)
        self.stats.on_runner(self.runner)
        return events

    def _run_prefill(self, chunks: list[PrefillChunk]) -> list[StepEvent]:
        rows = []
        for c in chunks:
            r = c.request
            tokens = r.all_token_ids[c.start : c.start + c.num_tokens]
            samples = c.is_last and not r.output.token_ids and r.params.max_tokens > 0
            sampling = self._sampling_row(r, c.start + c.num_tokens) if samples else SamplingRow()
            rows.append(PrefillRow(tokens, c.start, r.pages, sampling))
        out = self.runner.prefill(rows)
        # A chunk recomputed after a preemption already has its prompt logprobs.
        wants = [
            c.request.output.prompt_logprobs is not None
            and len(c.request.output.prompt_logprobs) == c.start + 1
            for c in chunks
        ]
        if any(wants):
            targets = [
                c.request.prompt_token_ids[c.start + 1 : c.start + 1 + c.num_tokens] if w else []
                for c, w in zip(chunks, wants, strict=True)
            ]
            chosen, top_ids, top_lp = self.runner.prompt_logprobs(targets)
            for i, (c, row) in enumerate(zip(chunks, targets, strict=True)):
                k = c.request.params.prompt_logprobs
                for j, target in enumerate(row):
                    top = _top(top_ids[i, j], top_lp[i, j], k)
                    entry = TokenLogprob(target, float(chosen[i, j]), top)
                    c.request.output.prompt_logprobs.append(entry)
        events = []
        for i, c in enumerate(chunks):
            request = c.request
            request.num_computed = c.start + c.num_tokens
            if not c.is_last or request.output.token_ids:
                continue  # more prompt to go, or recomputing after a preemption
            self.stats.on_first_token(request)
            if request.params.max_tokens == 0:
                events.append(StepEvent(request.output, request.finish("length"), ()))
                continue
            token = int(out.token_ids[i])
            request.mirostat_mu = float(out.mirostat_mu[i])
            lp = self._logprob(request, token, out.logprobs[i], out.top_ids[i], out.top_logprobs[i])
            delta = self._append(request, token, lp)
            events.append(StepEvent(request.output, delta, (token,)))
        return events

    def _run_decode(self, requests: list[Request], num_steps: int) -> list[StepEvent]:
        in_use = {r.matcher.grammar for r in requests if r.matcher is not None}
        rows = [self._decode_row(r, in_use) for r in requests]
        slots = self.grammar_slots
        if slots.dirty:
            self.runner.load_grammar_tables(slots.byte_next, slots.masks, slots.complete)
            slots.dirty = False
        out = self.runner.decode(rows, num_steps=num_steps)
        events = []
        for i, request in enumerate(requests):
            delta, new = "", []
            free = _runs_free(request)
            for j in range(int(out.num_generated[i])):
                token = int(out.token_ids[i, j])
                if free and not request.matcher.accept_token(token):
                    break  # a free draw the trigger's constraint forbids: redrawn masked next step
                lp = self._logprob(
                    request, token, out.logprobs[i, j], out.top_ids[i, j], out.top_logprobs[i, j]
                )
                delta += self._append(request, token, lp, accepted=True if free else None)
                if free and not request.matcher.is_free():
                    break  # later draws ignored the mask that now applies
                new.append(token)
                if request.finished:
                    break  # anything generated past a stop string is dropped
            request.num_computed = request.num_tokens - 1
            request.mirostat_mu = float(out.mirostat_mu[i])
            events.append(StepEvent(request.output, delta, tuple(new)))
        return events

    def _append(
        self, request: Request, token: int, lp: TokenLogprob | None, *, accepted: bool | None = None
    ) -> str:
        """Record a generated token; a constrained request also advances its matcher (unless
        the caller already did: `accepted`), and ends as soon as its output is complete and
        nothing may follow."""
        matcher = request.matcher
        if accepted is None:
            accepted = matcher is None or matcher.accept_token(token)
        delta = request.append_token(token, lp, eos_ids=self.tokenizer.eos_ids)
        if matcher is not None and not request.finished:
            if not accepted or matcher.is_terminated() or matcher.is_complete():
                delta += request.finish("stop")
        return delta

    def _decode_row(self, request: Request, in_use: set[CompiledGrammar]) -> DecodeRow:
        params = request.params
        remaining = min(
            params.max_tokens - len(request.output.token_ids), request.max_len - request.num_tokens
        )
        matcher, grammar_state = request.matcher, -1
        if type(matcher) is Matcher:  # a regular constraint runs on device when it fits
            offset = self.grammar_slots.offset(matcher.grammar, in_use)
            if offset is not None:
                grammar_state = offset + matcher.state
        free = _runs_free(request)
        if matcher is not None and grammar_state < 0 and not free:
            remaining = min(remaining, 1)  # its next mask needs the host
        return DecodeRow(
            token_id=request.all_token_ids[-1],
            start=request.num_tokens - 1,
            pages=request.pages,
            sampling=self._sampling_row(request, request.num_tokens, host_mask=grammar_state < 0),
            remaining=remaining,
            grammar_state=grammar_state,
        )

    @staticmethod
    def _logprob(request: Request, token: int, chosen, top_ids, top_lp) -> TokenLogprob | None:
        k = request.params.logprobs
        if k is None:
            return None
        return TokenLogprob(token, max(float(chosen), MIN_LOGPROB), _top(top_ids, top_lp, k))


# Fields whose device stage is not built yet: a non-default value is refused, never ignored.
def _runs_free(request: Request) -> bool:
    """A lazy constraint whose next draw needs no mask (before its trigger) decodes k tokens
    unmasked on device; the host keeps them up to the first after which a mask applies (later
    ones are drawn again, masked, from the same per-position keys, so the tokens are those of
    one-token steps)."""
    matcher = request.matcher
    return (
        isinstance(matcher, LazyMatcher)
        and request.params.mirostat == 0  # its state would count the dropped draws
        and matcher.is_free()
    )


def sequence_seed(seed: int, index: int) -> int:
    """Seed of sequence `index` of a request seeded with `seed` (sequence 0 keeps it)."""
    return (seed + index * 0x9E3779B1) % 2**32


def num_pages_for(config: EngineConfig, page_bytes: int) -> int:
    return max(config.kv_cache_bytes // page_bytes, 2)


def max_pages_per_row(max_model_len: int, page_size: int) -> int:
    return math.ceil(max_model_len / page_size)
