"""Shared Flax NNX layers: linear (f32 or int8 + per-32 scales), RMSNorm, embedding, RoPE, paged attention.

Weights keep GGUF's `(out, in)` order; int8 weights carry one scale per 32 input values and are
dequantized inside the jitted step, right before their matmul.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxserve.weights import BLOCK, QuantArray, Weight


def dequantize(w: jax.Array, scales: jax.Array | None) -> jax.Array:
    """`w[..., n]` (f32, or int8 with `scales[..., n // 32]`) -> f32."""
    if scales is None:
        return w
    blocks = w.reshape(*w.shape[:-1], -1, BLOCK).astype(jnp.float32)
    return (blocks * scales[..., None]).reshape(w.shape)


class Linear(nnx.Module):
    """`y = x @ W.T` with W `[out, in]` stored f32, or int8 with scales `[out, in // 32]`."""

    def __init__(self, weight: Weight) -> None:
        if isinstance(weight, QuantArray):
            self.w = nnx.Param(jnp.asarray(weight.q))
            self.scales = nnx.Param(jnp.asarray(weight.scales))
        else:
            self.w = nnx.Param(jnp.asarray(weight, dtype=jnp.float32))
            self.scales = None

    def __call__(self, x: jax.Array) -> jax.Array:
        scales = None if self.scales is None else self.scales[...]
        return jnp.einsum("...i,oi->...o", x, dequantize(self.w[...], scales))


class Embedding(nnx.Module):
    """Token embedding `[vocab, hidden]`; `attend` reuses it as a tied output head."""

    def __init__(self, weight: Weight) -> None:
        self.table = Linear(weight)

    def __call__(self, token_ids: jax.Array) -> jax.Array:
        rows = self.table.w[...][token_ids]
        if self.table.scales is None:
            return rows
        return dequantize(rows, self.table.scales[...][token_ids])

    def attend(self, x: jax.Array) -> jax.Array:
        return self.table(x)


class RMSNorm(nnx.Module):
    def __init__(self, weight: np.ndarray, *, eps: float) -> None:
        self.weight = nnx.Param(jnp.asarray(weight, dtype=jnp.float32))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        var = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
        weight = self.weight[...]
        return x * jax.lax.rsqrt(var + self.eps) * weight.reshape((1,) * (x.ndim - 1) + weight.shape)


def rope_interleaved(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotate pairs `(x[2i], x[2i+1])` by `pos * theta**(-2i/d)` (ggml's NORM RoPE).

    x: [B, T, H, D]; positions: [B, T].
    """
    d = x.shape[-1]
    inv_freq = theta ** (-jnp.arange(0, d, 2, dtype=jnp.float32) / d)  # [D/2]
    angles = positions.astype(jnp.float32)[..., None, None] * inv_freq[None, None, None]  # [B,T,1,D/2]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return out.reshape(x.shape)


def paged_attention(
    q: jax.Array,
    k_pages: jax.Array,
    v_pages: jax.Array,
    *,
    page_table: jax.Array,
    q_positions: jax.Array,
    kv_lens: jax.Array,
) -> jax.Array:
    """Reference attention over a paged cache (pure jnp).

    q: [B, T, H, D] at q_positions [B, T]; k_pages, v_pages: [N, S, KH, D]; page_table: [B, P];
    kv_lens: [B] tokens cached per row (including this step's). Key j of a row is visible to a query
    at position p when j <= p and j < kv_len. Returns [B, T, H, D].
    """
    b, t, h, d = q.shape
    _, page_size, kh, _ = k_pages.shape
    keys = k_pages[page_table].reshape(b, -1, kh, d)  # [B, P*S, KH, D]
    values = v_pages[page_table].reshape(b, -1, kh, d)
    qg = q.reshape(b, t, kh, h // kh, d)
    scores = jnp.einsum("BTKGD,BSKD->BKGTS", qg, keys) / jnp.sqrt(jnp.float32(d))
    key_pos = jnp.arange(keys.shape[1], dtype=jnp.int32)
    visible = (key_pos[None, None, :] <= q_positions[:, :, None]) & (
        key_pos[None, None, :] < kv_lens[:, None, None]
    )  # [B, T, S]
    visible = visible[:, None, None]  # [B, 1, 1, T, S]
    scores = jnp.where(visible, scores, -jnp.inf)
    row_max = jnp.max(scores, axis=-1, keepdims=True)
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    weights = jnp.where(visible, jnp.exp(scores - row_max), 0.0)
    denom = jnp.sum(weights, axis=-1, keepdims=True)
    weights = weights / jnp.where(denom == 0.0, 1.0, denom)
    out = jnp.einsum("BKGTS,BSKD->BTKGD", weights, values)
    return out.reshape(b, t, h, d)
