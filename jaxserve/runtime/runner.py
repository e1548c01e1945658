"""Model runner: owns the device state (params, KV cache, compiled steps), pads work to buckets.

The engine hands it plain-Python rows; it builds device arrays in a fixed set of shapes, runs a
jitted step, and returns numpy results in one host transfer. `warmup` compiles every bucket.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from jaxserve.config import ModelConfig
from jaxserve.engine.device import (
    DecodeResult,
    PrefillResult,
    ProbeResult,
    PromptLogprobs,
    VerifyResult,
)
from jaxserve.engine.mappings import CLEAR_AT, MIN_DROP, mapping_use
from jaxserve.engine.rows import (
    DECODE_ROW_BUCKETS,
    NO_PROBE,
    PREFILL_ROW_BUCKETS,
    TOKEN_BUCKETS,
    VERIFY_ROW_BUCKETS,
    DecodeRow,
    EmbedRow,
    PrefillRow,
    bucket,
    page_buckets,
)
from jaxserve.runtime import parallel
from jaxserve.runtime.compile_cache import release_lowerings
from jaxserve.runtime.distributed import mirrored
from jaxserve.runtime.hooks import DeviceHooks
from jaxserve.runtime.kv_cache import COPY_PAIRS, NULL_PAGE, KVCache
from jaxserve.runtime.step import DecodeBatch, PrefillBatch, RowInputs, make_steps
from jaxserve.runtime.warmup import WarmUp
from jaxserve.sampling.chain import LogitsHook
from jaxserve.sampling.grammar import DeviceGrammarTables
from jaxserve.sampling.rows import SamplingRow, pack
from jaxserve.sampling.tensors import SamplingTensors

log = logging.getLogger(__name__)


class ModelRunner(WarmUp):
    """Runs padded steps of one model over one paged KV cache."""

    def __init__(
        self,
        model: nnx.Module,
        config: ModelConfig,
        *,
        num_pages: int,
        page_size: int,
        max_pages_per_row: int,
        seed: int = 0,
        hook: LogitsHook | None = None,
        grammar_states: int = 0,
        token_bytes: Sequence[bytes] = (),
        mesh: Mesh | None = None,
        capture_slots: int = 0,
        steering_slots: int = 0,
        lora_slots: int = 0,
        lora_rank: int = 0,
        verify_width: int = 0,
        verify_rows: int = 0,
    ) -> None:
        """`grammar_states`: capacity of the on-device constraint tables (0: constraints are
        masked from the host only); `token_bytes`: each token's bytes, for walking them;
        `capture_slots`: layers a row may capture (hidden states, logit lens) at once;
        `steering_slots`: steering vectors the device table holds; `lora_slots`, `lora_rank`:
        the LoRA adapters it holds and their largest rank (all 0: no hooks compiled in);
        `mesh`: a (data, model) mesh to shard parameters, the KV cache and batches over
        (`jaxserve.runtime.parallel`), None for one device."""
        graphdef, self.params = nnx.split(model)
        self.mesh = mesh
        self.mirror = None  # a `distributed.Broadcaster` on the leader of several processes
        self._depth = 0
        if mesh is not None:
            self.params = parallel.put_tree(
                self.params, parallel.param_shardings(self.params, mesh)
            )
        self.config = config
        self.page_size = page_size
        self.num_pages = num_pages
        self.page_buckets = page_buckets(max_pages_per_row)
        kv_sharding = None if mesh is None else parallel.kv_sharding(mesh)
        self.steps = make_steps(
            graphdef, hook, num_tokens=len(token_bytes) or None, kv_sharding=kv_sharding
        )
        self.kv = KVCache.zeros(config, num_pages=num_pages, page_size=page_size)
        self.key = jax.random.key(seed)
        if mesh is not None:
            self.kv = parallel.put_tree(self.kv, kv_sharding)
            key_data = np.asarray(jax.random.key_data(self.key))
            self.key = jax.random.wrap_key_data(parallel.put(key_data, parallel.replicated(mesh)))
        self.num_real_tokens = 0  # tokens computed for requests
        self.num_padded_tokens = 0  # token slots computed, padding included
        self.compiled_at_warmup: int | None = None
        # step shapes run since the compiled steps were last dropped (`_guard`)
        self._shapes: set[tuple] = set()
        self.grammar_states = grammar_states
        self.grammar = self._grammar_tables(token_bytes)
        self.capture_slots = capture_slots
        self.steering_slots = steering_slots
        self.lora_slots, self.lora_rank = lora_slots, lora_rank
        self.verify_width, self.verify_rows = verify_width, verify_rows  # speculative checks
        self.hooks = DeviceHooks(
            config,
            capture_slots=capture_slots,
            steering_slots=steering_slots,
            lora_slots=lora_slots,
            lora_rank=lora_rank,
            put_rows=self._rows,
            put_shared=self._shared,
        )
        self._probe = self.hooks.probe

    @mirrored
    def load_steering(self, table: np.ndarray) -> None:
        self.hooks.load_steering(table)

    @mirrored
    def load_lora(self, slot: int, pairs: dict) -> None:
        self.hooks.load_lora(slot, pairs)

    def close(self) -> None:
        """The runner is done: release what the process keeps of its compiled programs."""
        release_lowerings()

    def _rows(self, x: np.ndarray) -> jax.Array:
        """A per-row host array on device: rows split over the mesh's `data` axis if any."""
        if self.mesh is None:
            return jnp.asarray(x)
        return parallel.put(x, parallel.row_sharding(self.mesh, x.shape[0]))

    def _shared(self, x: np.ndarray) -> jax.Array:
        """A host array every device reads whole (replicated on a mesh)."""
        if self.mesh is None:
            return jnp.asarray(x)
        return parallel.put(x, parallel.replicated(self.mesh))

    def _fetch(self, tree):
        """Device results on the host (gathered from every process of a multi-process mesh)."""
        if jax.process_count() == 1:
            return jax.device_get(tree)
        return multihost_utils.process_allgather(tree, tiled=True)

    def _host(self, out, n: int) -> list[np.ndarray]:
        """One device-to-host transfer of a pytree's leaves, padding rows sliced off."""
        return [np.asarray(a)[:n] for a in jax.tree.leaves(self._fetch(out))]

    def _grammar_tables(self, token_bytes: Sequence[bytes]) -> DeviceGrammarTables:
        capacity = max(self.grammar_states, 1)
        words = (self.config.vocab_size + 31) // 32
        longest = max((len(b) for b in token_bytes), default=1) if self.grammar_states else 1
        data = np.zeros((self.config.vocab_size, max(longest, 1)), np.uint8)
        lens = np.zeros(self.config.vocab_size, np.int32)
        for i, b in enumerate(token_bytes if self.grammar_states else ()):
            data[i, : len(b)] = np.frombuffer(b, np.uint8)
            lens[i] = len(b)
        return DeviceGrammarTables(
            byte_next=self._shared(np.zeros((capacity, 256), np.int32)),
            masks=self._shared(np.zeros((capacity, words), np.int32)),
            complete=self._shared(np.zeros(capacity, bool)),
            token_bytes=self._shared(data),
            token_lens=self._shared(lens),
        )

    @mirrored
    def load_grammar_tables(
        self, byte_next: np.ndarray, masks: np.ndarray, complete: np.ndarray
    ) -> None:
        """Replace the on-device constraint tables (`[grammar_states, ...]` global ids)."""
        if byte_next.shape != self.grammar.byte_next.shape:
            raise ValueError(f"tables must have {self.grammar_states} states")
        self.grammar = dataclasses.replace(
            self.grammar,
            byte_next=self._shared(byte_next),
            masks=self._shared(masks),
            complete=self._shared(complete),
        )

    def _guard(self, kind: str, *shape: object) -> None:
        """Before a step runs at a shape it may not have compiled: when the process is close to
        its limit on memory mappings (`engine/mappings.py`), drop every compiled step first, so
        that compiling this one cannot abort the process (dropped shapes recompile on their next
        use, from the persistent compilation cache when there is one)."""
        key = (kind, *shape)
        if key in self._shapes:
            return
        use = mapping_use() if len(self._shapes) >= MIN_DROP else None
        if use is not None and use > CLEAR_AT:
            log.warning(
                "%.0f%% of vm.max_map_count is mapped: dropping %d compiled step shapes",
                100 * use,
                len(self._shapes),
            )
            steps = self.steps
            for step in (
                steps.prefill,
                steps.prompt_logprobs,
                steps.decode,
                steps.pool,
                steps.verify,
                steps.copy_pages,
            ):
                step.clear_cache()
            self._shapes.clear()
        self._shapes.add(key)

    def num_compiled(self) -> int:
        """Step traces so far, one per compiled shape (a count that must stay flat after
        warm-up)."""
        return self.steps.traces.count

    @staticmethod
    def bytes_per_page(config: ModelConfig, page_size: int) -> int:
        return KVCache.bytes_per_page(config, page_size)

    def prefill_batch(
        self,
        rows: Sequence[PrefillRow],
        *,
        num_tokens: int | None = None,
        row_buckets: Sequence[int] = PREFILL_ROW_BUCKETS,
    ) -> PrefillBatch:
        """The padded device batch of prefill chunks, one per row (`num_tokens`: a fixed width
        instead of the token bucket)."""
        if num_tokens is None:
            num_tokens = bucket(max(len(r.token_ids) for r in rows), TOKEN_BUCKETS)
        num_rows = bucket(len(rows), row_buckets)
        num_pages = bucket(max(len(r.pages) for r in rows), self.page_buckets)
        token_ids = np.zeros((num_rows, num_tokens), np.int32)
        start, num_new = np.zeros(num_rows, np.int32), np.zeros(num_rows, np.int32)
        page_table = np.full((num_rows, num_pages), NULL_PAGE, np.int32)
        for i, r in enumerate(rows):
            token_ids[i, : len(r.token_ids)] = r.token_ids
            start[i], num_new[i] = r.start, len(r.token_ids)
            page_table[i, : len(r.pages)] = r.pages
        sampling, row_inputs = self._sampling([r.sampling for r in rows], num_rows, num_pages)
        return PrefillBatch(
            *map(self._rows, (token_ids, start, num_new, page_table)),
            sampling,
            row_inputs,
            self._probe([r.probe for r in rows], num_rows),
        )

    @mirrored
    def prefill(self, rows: Sequence[PrefillRow]) -> PrefillResult:
        """Prefill chunks, one per row; returns each row's sampled token and, when a row has
        `prompt_targets`, the prompt logprobs of every row (numpy)."""
        batch = self.prefill_batch(rows)
        self._guard("prefill", batch.token_ids.shape, batch.page_table.shape)
        self.kv, out = self.steps.prefill(self.params, self.kv, batch, self.key)
        self.num_real_tokens += sum(len(r.token_ids) for r in rows)
        self.num_padded_tokens += batch.token_ids.size
        prompt = None
        if any(r.prompt_targets for r in rows):
            target_ids = np.full(batch.token_ids.shape, -1, np.int32)
            for i, r in enumerate(rows):
                target_ids[i, : len(r.prompt_targets)] = r.prompt_targets
            self._guard("prompt_logprobs", target_ids.shape)
            scores = self.steps.prompt_logprobs(self.params, out.hidden, self._rows(target_ids))
            prompt = PromptLogprobs(*self._host(scores, len(rows)))
        s = out.sampled
        sampled = (
            s.token_ids,
            s.logprobs,
            s.top_ids,
            s.top_logprobs,
            s.mirostat_mu,
            s.nonfinite,
            s.uncertainty,
        )
        probe = hidden = None
        if out.probe is not None and any(r.probe.keep for r in rows):
            p = out.probe
            kept = (p.captured, p.lens_ids, p.lens_logprobs, out.hidden)
            *fields, hidden = self._host(kept, len(rows))
            probe = ProbeResult(*fields)
        result = PrefillResult(*self._host(sampled, len(rows)), prompt=prompt, probe=probe)
        return dataclasses.replace(result, hidden=hidden)

    @mirrored
    def embed(self, rows: Sequence[EmbedRow], *, max_rows: int, chunk: int) -> np.ndarray:
        """Each row's final hidden states (after the final norm), mean-pooled over its tokens and
        L2-normalized: `[len(rows), hidden]` float32.

        Runs the prefill step over chunks of at most `chunk` tokens and `max_rows` rows, so the
        shapes are prefill's. A row's vector does not depend on the rows beside it (the model's
        numerics are batch-invariant); rows of the same chunk shapes are batched together so no
        row waits through chunks it does not have.
        """
        out = np.zeros((len(rows), self.config.hidden_size), np.float32)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, r in enumerate(rows):
            num_chunks = math.ceil(len(r.token_ids) / chunk)
            last = bucket(len(r.token_ids) - (num_chunks - 1) * chunk, TOKEN_BUCKETS)
            groups.setdefault((num_chunks, last), []).append(i)
        size = max(min(max_rows, PREFILL_ROW_BUCKETS[-1]), 1)
        for members in groups.values():
            for at in range(0, len(members), size):
                batch = members[at : at + size]
                out[batch] = self._embed_batch([rows[i] for i in batch], chunk)
        return out

    def _embed_batch(self, rows: Sequence[EmbedRow], chunk: int) -> np.ndarray:
        num_rows = bucket(len(rows), PREFILL_ROW_BUCKETS)
        num_pages = bucket(max(len(r.pages) for r in rows), self.page_buckets)
        page_table = np.full((num_rows, num_pages), NULL_PAGE, np.int32)
        for i, r in enumerate(rows):
            page_table[i, : len(r.pages)] = r.pages
        sampling, row_inputs = self._sampling([SamplingRow()] * len(rows), num_rows, num_pages)
        sums = self._rows(np.zeros((num_rows, self.config.hidden_size), np.float32))
        for start in range(0, max(len(r.token_ids) for r in rows), chunk):
            pieces = [r.token_ids[start : start + chunk] for r in rows]
            num_tokens = bucket(max(len(p) for p in pieces), TOKEN_BUCKETS)
            token_ids = np.zeros((num_rows, num_tokens), np.int32)
            starts, num_new = np.zeros(num_rows, np.int32), np.zeros(num_rows, np.int32)
            for i, piece in enumerate(pieces):
                token_ids[i, : len(piece)] = piece
                starts[i], num_new[i] = (start, len(piece)) if piece else (0, 0)
            arrays = map(self._rows, (token_ids, starts, num_new, page_table))
            probe = self._probe([NO_PROBE] * len(rows), num_rows)
            batch = PrefillBatch(*arrays, sampling, row_inputs, probe)
            self._guard("prefill", token_ids.shape, page_table.shape)
            self._guard("pool", token_ids.shape)
            self.kv, out = self.steps.prefill(self.params, self.kv, batch, self.key)
            sums = self.steps.pool(sums, out.hidden, self._rows(num_new))
            self.num_real_tokens += int(num_new.sum())
            self.num_padded_tokens += num_rows * num_tokens
        lengths = np.array([len(r.token_ids) for r in rows], np.float64)
        mean = np.asarray(self._fetch(sums), np.float64)[: len(rows)] / lengths[:, None]
        norms = np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
        return (mean / norms).astype(np.float32)

    def decode_batch(self, rows: Sequence[DecodeRow]) -> DecodeBatch:
        """The padded device batch of decode rows."""
        num_rows = bucket(len(rows), DECODE_ROW_BUCKETS)
        num_pages = bucket(max(len(r.pages) for r in rows), self.page_buckets)
        token_ids = np.zeros(num_rows, np.int32)
        start, remaining = np.zeros(num_rows, np.int32), np.zeros(num_rows, np.int32)
        grammar_state = np.full(num_rows, -1, np.int32)
        page_table = np.full((num_rows, num_pages), NULL_PAGE, np.int32)
        for i, r in enumerate(rows):
            token_ids[i], start[i], remaining[i] = r.token_id, r.start, r.remaining
            grammar_state[i] = r.grammar_state
            page_table[i, : len(r.pages)] = r.pages
        sampling, row_inputs = self._sampling([r.sampling for r in rows], num_rows, num_pages)
        arrays = map(self._rows, (token_ids, start, page_table, remaining, grammar_state))
        probe = self._probe([r.probe for r in rows], num_rows)
        return DecodeBatch(*arrays, sampling, row_inputs, probe)

    @mirrored
    def decode(self, rows: Sequence[DecodeRow], *, num_steps: int) -> DecodeResult:
        """Up to `num_steps` tokens for each row in one device call (numpy results)."""
        batch = self.decode_batch(rows)
        self._guard("decode", batch.token_ids.shape, batch.page_table.shape, num_steps)
        self.kv, out = self.steps.decode(
            self.params, self.kv, batch, self.key, self.grammar, num_steps=num_steps
        )
        probe = None
        if out.probe is not None and any(r.probe.keep for r in rows):
            p = out.probe
            kept = (p.captured, p.lens_ids, p.lens_logprobs, p.final)
            probe = ProbeResult(*self._host(kept, len(rows)))
        out = DecodeResult(*self._host(dataclasses.replace(out, probe=None), len(rows)))
        out = dataclasses.replace(out, probe=probe)
        self.num_real_tokens += int(out.num_generated.sum())
        self.num_padded_tokens += batch.token_ids.shape[0] * int(out.num_generated.max(initial=0))
        return out

    @mirrored
    def copy_pages(self, pairs: Sequence[tuple[int, int]]) -> None:
        """Copy pages (source, destination) of the KV cache, `COPY_PAIRS` per device call."""
        for i in range(0, len(pairs), COPY_PAIRS):
            chunk = list(pairs[i : i + COPY_PAIRS])
            chunk += [(NULL_PAGE, NULL_PAGE)] * (COPY_PAIRS - len(chunk))
            self._guard("copy_pages", COPY_PAIRS)
            self.kv = self.steps.copy_pages(self.kv, self._shared(np.asarray(chunk, np.int32)))

    @mirrored
    def verify(self, rows: Sequence[PrefillRow], *, num_tokens: int) -> VerifyResult:
        """Speculative check: each row's last token and drafts (at most `num_tokens`, a fixed
        width), the draw after each position (`runtime.step`'s `verify`)."""
        batch = self.prefill_batch(rows, num_tokens=num_tokens, row_buckets=VERIFY_ROW_BUCKETS)
        self._guard("verify", batch.token_ids.shape, batch.page_table.shape)
        states = np.full(batch.token_ids.shape[0], -1, np.int32)
        states[: len(rows)] = [r.grammar_state for r in rows]
        args = (self.params, self.kv, batch, self.key, self.grammar, self._rows(states))
        self.kv, out = self.steps.verify(*args)
        self.num_real_tokens += sum(len(r.token_ids) for r in rows)
        self.num_padded_tokens += batch.token_ids.size
        return VerifyResult(*self._host(out, len(rows)))

    def _sampling(
        self, rows: Sequence[SamplingRow], num_rows: int, num_pages: int
    ) -> tuple[SamplingTensors, RowInputs]:
        t, state, want_logprobs = pack(
            rows,
            num_rows=num_rows,
            history_width=num_pages * self.page_size,
            vocab=self.config.vocab_size,
        )
        tensors = SamplingTensors(**{k: self._rows(v) for k, v in t.items()})
        inputs = RowInputs(
            **{k: self._rows(v) for k, v in state.items()},
            want_logprobs=self._rows(want_logprobs),
        )
        return tensors, inputs

    def _pool_args(self, rows: int, tokens: int) -> tuple[jax.Array, ...]:
        e = self.config.hidden_size
        return (
            self._rows(np.zeros((rows, e), np.float32)),
            self._rows(np.zeros((rows, tokens, e), np.float32)),
            self._rows(np.zeros(rows, np.int32)),
        )
