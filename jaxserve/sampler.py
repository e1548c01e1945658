"""Device-side sampling: per-row temperature draw keyed by (seed, position), plus logprobs.

Every per-request value is a `[B]` array, so a mixed batch never recompiles.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

TOP_LOGPROBS_MAX = 20  # static top-k width; the host slices what each request asked for


def row_keys(key: jax.Array, seeds: jax.Array, positions: jax.Array) -> jax.Array:
    """`fold_in(fold_in(key, seed), position)` per row: a row's draw never depends on neighbours."""
    return jax.vmap(lambda s, p: jax.random.fold_in(jax.random.fold_in(key, s), p))(
        seeds, positions
    )


def sample(
    logits: jax.Array,
    *,
    temperature: jax.Array,
    seeds: jax.Array,
    positions: jax.Array,
    key: jax.Array,
) -> jax.Array:
    """logits: [B, V]; temperature, seeds, positions: [B] (temperature 0 = greedy) -> ids [B]."""
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    safe_t = jnp.where(temperature > 0, temperature, 1.0)
    keys = row_keys(key, seeds, positions)
    drawn = jax.vmap(jax.random.categorical)(keys, logits / safe_t[:, None]).astype(jnp.int32)
    return jnp.where(temperature > 0, drawn, greedy)


def logprobs_of(logits: jax.Array, token_ids: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """logits [..., V], ids [...] -> (chosen [...], top_ids [..., K], top_logprobs [..., K])."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    safe_ids = jnp.clip(token_ids, 0, logits.shape[-1] - 1)
    chosen = jnp.take_along_axis(logp, safe_ids[..., None], axis=-1)[..., 0]
    top_logprobs, top_ids = jax.lax.top_k(logp, TOP_LOGPROBS_MAX)
    return chosen, top_ids.astype(jnp.int32), top_logprobs
