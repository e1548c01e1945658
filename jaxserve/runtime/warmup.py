"""Compiling a runner's buckets before they are needed: all at once (`warmup`) or one at a
time (`warm`, what the engine's background warm-up calls while it is idle)."""

from __future__ import annotations

import sys
import time

import jax
import numpy as np

from jaxserve.engine.rows import (
    DECODE_ROW_BUCKETS,
    PREFILL_ROW_BUCKETS,
    TOKEN_BUCKETS,
    VERIFY_ROW_BUCKETS,
    DecodeRow,
    PrefillRow,
    bucket,
    prefill_chunk_cap,
)
from jaxserve.runtime.distributed import mirrored
from jaxserve.runtime.kv_cache import COPY_PAIRS, NULL_PAGE
from jaxserve.sampling.rows import SamplingRow


class WarmUp:
    """The warm-up half of `ModelRunner` (it supplies the steps, batches and buckets)."""

    @mirrored
    def warmup(
        self,
        *,
        max_rows: int,
        max_prefill_rows: int,
        max_chunk: int,
        max_batched_tokens: int,
        num_steps: int,
    ) -> int:
        """Compile every bucket the engine can use; returns the number of shapes compiled."""
        shapes = self.warmup_shapes(
            max_rows=max_rows,
            max_prefill_rows=max_prefill_rows,
            max_chunk=max_chunk,
            max_batched_tokens=max_batched_tokens,
        )
        started = time.perf_counter()
        for n, shape in enumerate(shapes, start=1):
            self.warm(shape, num_steps=num_steps)
            elapsed = time.perf_counter() - started
            print(
                f"\rwarm-up: {n}/{len(shapes)} shapes compiled ({elapsed:.0f} s)",
                end="",
                file=sys.stderr,
            )
        print(file=sys.stderr)
        self.warmed_up()
        return len(shapes)

    def warmup_shapes(
        self, *, max_rows: int, max_prefill_rows: int, max_chunk: int, max_batched_tokens: int
    ) -> list[tuple[str, int, int, int]]:
        """Every (kind, rows, tokens, pages) bucket the engine can use, small ones first (the
        shapes short requests need compile early when warming up in the background). Prompts
        share a prefill call only while rows x tokens stays within `max_batched_tokens`."""
        shapes = []
        for rows in DECODE_ROW_BUCKETS[
            : DECODE_ROW_BUCKETS.index(bucket(max_rows, DECODE_ROW_BUCKETS)) + 1
        ]:
            shapes += [("decode", rows, 1, pages) for pages in self.page_buckets]
        if self.verify_width:
            most = bucket(min(max_rows, self.verify_rows), VERIFY_ROW_BUCKETS)
            for rows in VERIFY_ROW_BUCKETS[: VERIFY_ROW_BUCKETS.index(most) + 1]:
                width = self.verify_width
                shapes += [("verify", rows, width, pages) for pages in self.page_buckets]
        for rows in PREFILL_ROW_BUCKETS[
            : PREFILL_ROW_BUCKETS.index(bucket(max_prefill_rows, PREFILL_ROW_BUCKETS)) + 1
        ]:
            cap = prefill_chunk_cap(rows, max_batched_tokens, max_chunk)
            if not cap:
                break
            for tokens in TOKEN_BUCKETS[: TOKEN_BUCKETS.index(bucket(cap, TOKEN_BUCKETS)) + 1]:
                shapes += [
                    ("prefill", rows, tokens, pages)
                    for pages in self.page_buckets
                    if pages * self.page_size > tokens // 2  # a chunk in this bucket fits
                ]
        return sorted(shapes, key=lambda s: (s[3], s[1], s[2]))

    def warm(self, shape: tuple[str, int, int, int], *, num_steps: int) -> None:
        """Compile one bucket ahead of time: lowered and compiled, not run, so a large bucket
        costs its compile (or its load from the persistent cache) and no computation. Later
        calls in that shape reuse the executable. Across processes the bucket is run on null
        pages instead: every process runs it, so their collectives match."""
        kind, rows, tokens, pages = shape
        null = [NULL_PAGE] * pages
        if jax.process_count() > 1:  # every process runs it, collectives included
            return self._warm_by_running(kind, rows, tokens, null, num_steps)
        if kind == "decode":
            batch = self.decode_batch([DecodeRow(0, 0, null, SamplingRow(), remaining=0)] * rows)
            self._guard("decode", batch.token_ids.shape, batch.page_table.shape, num_steps)
            args = (self.params, self.kv, batch, self.key, self.grammar)
            self.steps.decode.lower(*args, num_steps=num_steps).compile()
            if rows == DECODE_ROW_BUCKETS[0] and pages == self.page_buckets[0]:
                self._warm_copy()
        elif kind == "verify":
            rows_ = [PrefillRow([0] * tokens, 0, null)] * rows
            batch = self.prefill_batch(rows_, num_tokens=tokens, row_buckets=VERIFY_ROW_BUCKETS)
            self._guard("verify", batch.token_ids.shape, batch.page_table.shape)
            states = self._rows(np.full(batch.token_ids.shape[0], -1, np.int32))
            args = (self.params, self.kv, batch, self.key, self.grammar, states)
            self.steps.verify.lower(*args).compile()
        else:
            batch = self.prefill_batch([PrefillRow([0] * tokens, 0, null)] * rows)
            num_rows, num_tokens = batch.token_ids.shape
            self._guard("prefill", batch.token_ids.shape, batch.page_table.shape)
            self.steps.prefill.lower(self.params, self.kv, batch, self.key).compile()
            _, hidden, _ = self._pool_args(num_rows, num_tokens)
            targets = self._rows(np.full((num_rows, num_tokens), -1, np.int32))
            self._guard("prompt_logprobs", (num_rows, num_tokens))
            self.steps.prompt_logprobs.lower(self.params, hidden, targets).compile()
            self._guard("pool", (rows, tokens))
            self.steps.pool.lower(*self._pool_args(rows, tokens)).compile()

    def _warm_copy(self) -> None:
        """The page copy of a beam's fork (one shape)."""
        pairs = self._shared(np.zeros((COPY_PAIRS, 2), np.int32))
        self._guard("copy_pages", COPY_PAIRS)
        self.steps.copy_pages.lower(self.kv, pairs).compile()

    def _warm_by_running(self, kind, rows, tokens, null, num_steps) -> None:
        if kind == "decode":
            if rows == DECODE_ROW_BUCKETS[0] and null == [NULL_PAGE] * self.page_buckets[0]:
                self.copy_pages([(NULL_PAGE, NULL_PAGE)])
            self.decode(
                [DecodeRow(0, 0, null, SamplingRow(), remaining=0)] * rows, num_steps=num_steps
            )
        elif kind == "verify":
            self.verify([PrefillRow([0] * tokens, 0, null)] * rows, num_tokens=tokens)
        else:
            self.prefill([PrefillRow([0] * tokens, 0, null, prompt_targets=[0])] * rows)
            self._guard("pool", (rows, tokens))
            self.steps.pool(*self._pool_args(rows, tokens))

    def warmed_up(self) -> None:
        """Every bucket is compiled: later compiles count as recompiles (`stats`)."""
        self.compiled_at_warmup = self.num_compiled()
        self.num_real_tokens = self.num_padded_tokens = 0
