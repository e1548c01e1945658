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
    """logits: [B, V]; temperature, seeds, positions: [B] (temperature 0 = greedy) -> ids [B].

    A row's draw inverts its softmax CDF at one uniform number from its own key: one random
    number per row instead of V Gumbel draws, and nothing random at all when every row is greedy.
    """
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def draw(_) -> jax.Array:
        safe_t = jnp.where(temperature > 0, temperature, 1.0)
        probs = jax.nn.softmax(logits / safe_t[:, None], axis=-1)
        cdf = jnp.cumsum(probs, axis=-1)
        u = jax.vmap(lambda k: jax.random.uniform(k, (), minval=1e-7))(
            row_keys(key, seeds, positions)
        )
        ids = jnp.sum(cdf < (u * cdf[:, -1])[:, None], axis=-1).astype(jnp.int32)
        ids = jnp.minimum(ids, logits.shape[-1] - 1)
        return jnp.where(temperature > 0, ids, greedy)

    return jax.lax.cond(jnp.any(temperature > 0), draw, lambda _: greedy, None)


def logprobs_of(logits: jax.Array, token_ids: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """logits [..., V], ids [...] -> (chosen [...], top_ids [..., K], top_logprobs [..., K])."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    safe_ids = jnp.clip(token_ids, 0, logits.shape[-1] - 1)
    chosen = jnp.take_along_axis(logp, safe_ids[..., None], axis=-1)[..., 0]
    top_logprobs, top_ids = jax.lax.top_k(logp, TOP_LOGPROBS_MAX)
    return chosen, top_ids.astype(jnp.int32), top_logprobs
