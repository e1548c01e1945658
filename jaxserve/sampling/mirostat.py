"""Mirostat v1 and v2 (Basu et al. 2021, as llama.cpp implements them).

Each row keeps a surprise budget `mu` (initially 2 * tau) across steps: the truncation keeps
tokens whose surprise fits the budget, and after the draw `mu -= eta * (surprise - tau)`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxserve.sampling.select import kth_largest
from jaxserve.sampling.tensors import SamplingTensors

NEG_INF = float("-inf")
V1_CANDIDATES = 100  # m: tokens used to estimate the Zipf exponent (v1)


def _v1_k(logits: jax.Array, mu: jax.Array) -> jax.Array:
    """v1's k from the Zipf exponent s estimated over the m most likely tokens."""
    vocab = logits.shape[-1]
    m = min(V1_CANDIDATES, vocab)
    # top_k over the raw logits: over a fused log_softmax XLA's CPU backend falls back to a
    # full sort (~300 ms at 32 x 49k).
    top = jax.lax.top_k(logits, m)[0]  # [B, m]
    top_logp = top - jax.nn.logsumexp(logits, axis=-1, keepdims=True)
    i = jnp.arange(m - 1, dtype=jnp.float32)
    t_i = jnp.log((i + 2) / (i + 1))[None, :]
    b_i = top_logp[:, :-1] - top_logp[:, 1:]
    ok = jnp.isfinite(b_i)
    s_hat = jnp.sum(jnp.where(ok, t_i * b_i, 0.0), -1) / jnp.maximum(
        jnp.sum(jnp.where(ok, t_i * t_i, 0.0), -1), 1e-12
    )
    s_hat = jnp.maximum(s_hat, 1e-3)
    eps = s_hat - 1.0
    eps = jnp.where(jnp.abs(eps) < 1e-6, 1e-6, eps)
    k = ((eps * 2.0**mu) / (1.0 - float(vocab) ** (-eps))) ** (1.0 / s_hat)
    return jnp.clip(jnp.nan_to_num(k, nan=1.0, posinf=vocab), 1, vocab).astype(jnp.int32)


def truncate(logits: jax.Array, t: SamplingTensors, mu: jax.Array) -> jax.Array:
    """Rows with mirostat 1 keep their top-k(mu); rows with 2 keep tokens with surprise <= mu
    (always the most likely one); other rows pass through."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    top = logits >= jnp.max(logits, axis=-1, keepdims=True)
    keep_v2 = (-logp / jnp.log(2.0) <= mu[:, None]) | top

    def with_v1(_):
        k = jnp.where(t.mirostat == 1, _v1_k(logits, mu), logits.shape[-1])
        return logits >= kth_largest(logits, k)[:, None]

    keep_v1 = jax.lax.cond(jnp.any(t.mirostat == 1), with_v1, lambda _: top | True, None)
    keep = jnp.where((t.mirostat == 1)[:, None], keep_v1, keep_v2)
    return jnp.where((t.mirostat == 0)[:, None] | keep, logits, NEG_INF)


def update(truncated: jax.Array, ids: jax.Array, t: SamplingTensors, mu: jax.Array) -> jax.Array:
    """mu after drawing `ids` from the truncated, renormalized distribution."""
    logp = jax.nn.log_softmax(truncated, axis=-1)
    chosen = jnp.take_along_axis(logp, ids[:, None], axis=-1)[:, 0]
    surprise = -chosen / jnp.log(2.0)
    new_mu = mu - t.mirostat_eta * (surprise - t.mirostat_tau)
    return jnp.where(t.mirostat > 0, new_mu, mu)
