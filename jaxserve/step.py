"""The pure jitted step: model forward over the paged KV cache, then sampling.

`step(params, kv, batch, key) -> (kv, out)` with `kv` donated. One function serves prefill chunks
(T > 1 tokens per row) and decode (T = 1); the shapes of `batch` pick the compiled variant.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from jaxserve.kv_cache import KVCache, TokenLayout
from jaxserve.sampler import logprobs_of, sample


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class StepBatch:
    token_ids: jax.Array  # [B, T] int32
    start: jax.Array  # [B] int32, tokens already in the cache
    num_new: jax.Array  # [B] int32, valid tokens of this step (0 for a padding row)
    page_table: jax.Array  # [B, P] int32
    temperature: jax.Array  # [B] f32 (0 = greedy)
    seeds: jax.Array  # [B] uint32
    target_ids: jax.Array  # [B, T] int32, next prompt token per position (prompt logprobs)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class StepOutput:
    token_ids: jax.Array  # [B] int32, sampled after each row's last valid token
    logprobs: jax.Array  # [B] f32, logprob of the sampled token
    top_ids: jax.Array  # [B, K] int32
    top_logprobs: jax.Array  # [B, K] f32
    prompt_logprobs: jax.Array  # [B, T] f32 logprob of target_ids ([B, 0] when not asked)
    prompt_top_ids: jax.Array  # [B, T, K] int32
    prompt_top_logprobs: jax.Array  # [B, T, K] f32


StepFn = Callable[..., tuple[KVCache, StepOutput]]


def make_step(graphdef: nnx.GraphDef) -> StepFn:
    """Build the jitted step for one model structure (`graphdef` from `nnx.split(model)`)."""

    def step(
        params: nnx.State,
        kv: KVCache,
        batch: StepBatch,
        key: jax.Array,
        *,
        with_prompt_logprobs: bool,
    ) -> tuple[KVCache, StepOutput]:
        """Run `batch` through the model, write its K/V into `kv`, sample one token per row.

        params: model state; kv: donated paged cache; key: root PRNG key (per-row keys fold in
        each row's seed and position). `with_prompt_logprobs` (static) adds the logprob of each
        `target_ids` entry and the top-K distribution at every position.
        """
        model = nnx.merge(graphdef, params)
        b, t = batch.token_ids.shape
        layout = TokenLayout.build(
            start=batch.start,
            num_new=batch.num_new,
            num_tokens=t,
            page_table=batch.page_table,
            page_size=kv.k.shape[2],
        )
        h, (k, v) = model.hidden(batch.token_ids, (kv.k, kv.v), layout)
        last = jnp.clip(batch.num_new - 1, 0, t - 1)
        logits = model.logits(h[jnp.arange(b), last])  # [B, V]
        next_ids = sample(
            logits,
            temperature=batch.temperature,
            seeds=batch.seeds,
            positions=layout.kv_lens,
            key=key,
        )
        chosen, top_ids, top_logprobs = logprobs_of(logits, next_ids)
        if with_prompt_logprobs:
            p_chosen, p_top_ids, p_top = logprobs_of(model.logits(h), batch.target_ids)
        else:
            p_chosen = jnp.zeros((b, 0), jnp.float32)
            p_top_ids = jnp.zeros((b, 0, top_ids.shape[-1]), jnp.int32)
            p_top = jnp.zeros((b, 0, top_ids.shape[-1]), jnp.float32)
        out = StepOutput(next_ids, chosen, top_ids, top_logprobs, p_chosen, p_top_ids, p_top)
        return KVCache(k=k, v=v), out

    return jax.jit(step, static_argnames=("with_prompt_logprobs",), donate_argnames=("kv",))
