"""Model runner: owns the device state (params, KV cache, compiled step), pads host work to buckets.

The engine hands it plain-Python rows; it builds device arrays in a fixed set of shapes, runs the
jitted step, and returns numpy results in one host transfer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxserve.config import ModelConfig
from jaxserve.kv_cache import NULL_PAGE, KVCache
from jaxserve.step import StepBatch, StepOutput, make_step

ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
TOKEN_BUCKETS = (1, 16, 32, 64, 128, 256, 512)


@dataclass(frozen=True)
class RowWork:
    """One row of a step: `token_ids` continue a sequence that already has `start` cached tokens."""

    token_ids: Sequence[int]
    start: int
    pages: Sequence[int]
    temperature: float = 0.0
    seed: int = 0
    target_ids: Sequence[int] | None = None  # next-token targets (prompt logprobs)


def bucket(n: int, sizes: Sequence[int]) -> int:
    for size in sizes:
        if n <= size:
            return size
    raise ValueError(f"{n} exceeds the largest bucket {sizes[-1]}")


def _pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


class ModelRunner:
    """Runs padded steps of one model over one paged KV cache."""

    def __init__(
        self,
        model: nnx.Module,
        config: ModelConfig,
        *,
        num_pages: int,
        page_size: int,
        seed: int = 0,
    ) -> None:
        graphdef, self.params = nnx.split(model)
        self.config = config
        self.page_size = page_size
        self.num_pages = num_pages
        self._step = make_step(graphdef)
        self.kv = KVCache.zeros(config, num_pages=num_pages, page_size=page_size)
        self.key = jax.random.key(seed)
        self.max_prefill_tokens = TOKEN_BUCKETS[-1]

    @staticmethod
    def bytes_per_page(config: ModelConfig, page_size: int) -> int:
        return KVCache.bytes_per_page(config, page_size)

    def run(self, rows: Sequence[RowWork], *, with_prompt_logprobs: bool = False) -> StepOutput:
        """Run one step over `rows` (all prefill chunks or all single decode tokens).

        Returns numpy arrays for the real rows (padding rows and tokens sliced off).
        """
        num_tokens = bucket(max(len(r.token_ids) for r in rows), TOKEN_BUCKETS)
        # A one-row decode would take XLA's matrix-vector path, whose numerics differ from the
        # batched one: decode always runs at least two rows.
        min_rows = 2 if num_tokens == 1 else 1
        num_rows = bucket(max(len(rows), min_rows), ROW_BUCKETS)
        num_pages = _pow2(max(len(r.pages) for r in rows))
        batch = self._pack(rows, num_rows=num_rows, num_tokens=num_tokens, num_pages=num_pages)
        self.kv, out = self._step(
            self.params, self.kv, batch, self.key, with_prompt_logprobs=with_prompt_logprobs
        )
        out = jax.device_get(out)
        n = len(rows)
        return StepOutput(*(np.asarray(a)[:n] for a in jax.tree.leaves(out)))

    def _pack(
        self, rows: Sequence[RowWork], *, num_rows: int, num_tokens: int, num_pages: int
    ) -> StepBatch:
        token_ids = np.zeros((num_rows, num_tokens), np.int32)
        target_ids = np.full((num_rows, num_tokens), -1, np.int32)
        start = np.zeros(num_rows, np.int32)
        num_new = np.zeros(num_rows, np.int32)
        page_table = np.full((num_rows, num_pages), NULL_PAGE, np.int32)
        temperature = np.zeros(num_rows, np.float32)
        seeds = np.zeros(num_rows, np.uint32)
        for i, r in enumerate(rows):
            n = len(r.token_ids)
            token_ids[i, :n] = r.token_ids
            if r.target_ids is not None:
                target_ids[i, :n] = r.target_ids
            start[i] = r.start
            num_new[i] = n
            page_table[i, : len(r.pages)] = r.pages
            temperature[i] = r.temperature
            seeds[i] = r.seed
        return StepBatch(
            token_ids=jnp.asarray(token_ids),
            start=jnp.asarray(start),
            num_new=jnp.asarray(num_new),
            page_table=jnp.asarray(page_table),
            temperature=jnp.asarray(temperature),
            seeds=jnp.asarray(seeds),
            target_ids=jnp.asarray(target_ids),
        )
