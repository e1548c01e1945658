"""Per-token uncertainty (device): how spread the model's distribution was where a token was drawn.

For each row: the entropy (nats) of the raw distribution, the entropy of the distribution the row
drew from (after its restrictions and chain stages; for a greedy row, before the argmax), and the
margin between the raw distribution's two most likely tokens (logprob of the first minus the
second's: 0 = a tie, large = confident).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NUM_MEASURES = 3  # entropy, processed entropy, top-2 margin


def entropy(logits: jax.Array) -> jax.Array:
    """logits [B, V] (-inf = removed) -> the entropy of softmax(logits) per row [B], in nats."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    p = jnp.exp(logp)
    return -jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1)


def margin(logits: jax.Array) -> jax.Array:
    """logits [B, V] -> logprob of the most likely token minus that of the second [B]."""
    top = jax.lax.top_k(jax.nn.log_softmax(logits, axis=-1), 2)[0]
    return top[:, 0] - top[:, 1]


def measures(raw: jax.Array, processed: jax.Array, want: jax.Array) -> jax.Array:
    """[B, NUM_MEASURES] f32: entropy of `raw`, entropy of `processed`, top-2 margin of `raw`;
    zeros (and nothing computed) when no row `want`s them."""
    b = raw.shape[0]

    def compute(_):
        return jnp.stack([entropy(raw), entropy(processed), margin(raw)], axis=-1)

    return jax.lax.cond(
        jnp.any(want), compute, lambda _: jnp.zeros((b, NUM_MEASURES), jnp.float32), None
    )
