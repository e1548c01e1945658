"""Shared Flax NNX layers: linear (f32, or int8 with per-32 scales), RMSNorm, embedding, RoPE,
paged attention.

Weights keep GGUF's `(out, in)` order; int8 weights carry one scale per 32 input values and are
dequantized inside the jitted step, right before their matmul.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxserve.weights import BLOCK, QuantArray, Weight


def dequantize(w: jax.Array, scales: jax.Array | None) -> jax.Array:
    """`w[..., n, out]` (f32, or int8 with `scales[..., n // 32, out]`) -> f32."""
    if scales is None:
        return w
    *lead, n, out = w.shape
    blocks = w.reshape(*lead, n // BLOCK, BLOCK, out).astype(jnp.float32)
    return (blocks * scales[..., None, :]).reshape(w.shape)


# Up to this many activation rows (decode), int8 weights are multiplied by int8-quantized
# activations with int32 accumulation per 32-block; above it, dequantizing once is cheaper.
W8A8_MAX_ROWS = 64


def matmul_w8a8(x: jax.Array, w: jax.Array, scales: jax.Array) -> jax.Array:
    """`x @ W` for int8 W `[in, out]` with per-32 scales `[in // 32, out]`, quantizing `x` per
    32-block too.

    Each 32-block product accumulates exactly in int32 and is scaled by (weight scale x
    activation scale), the way llama.cpp's Q8_0 dot products work. Blocks lead the weight
    layout (`[K, 32, out]`), which is what makes XLA CPU's int8 dot fast here.
    """
    lead, (n, out) = x.shape[:-1], w.shape
    k = n // BLOCK
    xb = x.reshape(-1, k, BLOCK)
    x_scale = jnp.max(jnp.abs(xb), axis=-1) / 127.0  # [R, K]
    safe = jnp.where(x_scale == 0.0, 1.0, x_scale)
    xq = jnp.round(xb / safe[..., None]).astype(jnp.int8)
    acc = jnp.einsum("rkc,kco->kro", xq, w.reshape(k, BLOCK, out), preferred_element_type=jnp.int32)
    y = jnp.einsum("kro,ko,rk->ro", acc.astype(jnp.float32), scales, x_scale)
    return y.reshape(*lead, out)


class Linear(nnx.Module):
    """`y = x @ W (+ b)` with W `[in, out]` stored f32, or int8 with scales `[in // 32, out]`."""

    def __init__(self, weight: Weight, bias: np.ndarray | None = None) -> None:
        if isinstance(weight, QuantArray):
            self.w = nnx.Param(jnp.asarray(weight.q))
            self.scales = nnx.Param(jnp.asarray(weight.scales))
        else:
            self.w = nnx.Param(jnp.asarray(weight, dtype=jnp.float32))
            self.scales = None
        self.bias = None if bias is None else nnx.Param(jnp.asarray(bias, dtype=jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.scales is None:
            y = jnp.einsum("...i,io->...o", x, self.w[...])
        elif math.prod(x.shape[:-1]) <= W8A8_MAX_ROWS:
            y = matmul_w8a8(x, self.w[...], self.scales[...])
        else:
            y = jnp.einsum("...i,io->...o", x, dequantize(self.w[...], self.scales[...]))
        if self.bias is None:
            return y
        return y + self.bias[...].reshape((1,) * (y.ndim - 1) + self.bias.shape)


class Embedding(nnx.Module):
    """Token embedding stored `[hidden, vocab]`; `attend` reuses it as a tied output head."""

    def __init__(self, weight: Weight) -> None:
        self.table = Linear(weight)

    def __call__(self, token_ids: jax.Array) -> jax.Array:
        rows = jnp.moveaxis(jnp.take(self.table.w[...], token_ids, axis=1), 0, -1)  # [*ids, E]
        if self.table.scales is None:
            return rows
        scales = jnp.moveaxis(jnp.take(self.table.scales[...], token_ids, axis=1), 0, -1)
        blocks = rows.reshape(*rows.shape[:-1], -1, BLOCK).astype(jnp.float32)
        return (blocks * scales[..., None]).reshape(rows.shape)

    def attend(self, x: jax.Array) -> jax.Array:
        return self.table(x)


class RMSNorm(nnx.Module):
    def __init__(self, weight: np.ndarray, *, eps: float) -> None:
        self.weight = nnx.Param(jnp.asarray(weight, dtype=jnp.float32))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        var = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
        weight = self.weight[...]
        return (
            x * jax.lax.rsqrt(var + self.eps) * weight.reshape((1,) * (x.ndim - 1) + weight.shape)
        )


def rope_interleaved(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotate pairs `(x[2i], x[2i+1])` by `pos * inv_freq[i]` (ggml's NORM RoPE).

    x: [B, T, H, D]; positions: [B, T]; inv_freq: [D/2].
    """
    angles = (
        positions.astype(jnp.float32)[..., None, None] * inv_freq[None, None, None]
    )  # [B,T,1,D/2]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return out.reshape(x.shape)


def rope_neox(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotate pairs `(x[i], x[i + D/2])` by `pos * inv_freq[i]` (ggml's NEOX RoPE).

    x: [B, T, H, D]; positions: [B, T]; inv_freq: [D/2] (an array, so a scanned layer can bring
    its own base).
    """
    angles = positions.astype(jnp.float32)[..., None, None] * inv_freq[None, None, None]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


def paged_attention(
    q: jax.Array,
    k_pages: jax.Array,
    v_pages: jax.Array,
    *,
    layer: jax.Array,
    page_table: jax.Array,
    q_positions: jax.Array,
    kv_lens: jax.Array,
    scale: float | None = None,
    window: jax.Array | None = None,
) -> jax.Array:
    """Reference attention over a paged cache (pure jnp).

    q: [B, T, H, D] at q_positions [B, T]; k_pages, v_pages: [L, KH, N, S, D], read at `layer`
    (one gather straight from the stacked cache, never a copy of a whole layer); page_table: [B, P];
    kv_lens: [B] tokens cached per row (including this step's). Key j of a row is visible to a query
    at position p when j <= p and j < kv_len, and with `window` (an int32 scalar, traced so that
    scanned layers can differ) also p - j < window. Scores are scaled by `scale` (default
    1/sqrt(D)). Returns [B, T, H, D].
    """
    b, t, h, d = q.shape
    num_layers, kh, num_pages, _, _ = k_pages.shape
    # Each (layer, kv head, page) is one contiguous [S, D] row of the flattened cache: the gather
    # copies whole rows and lands keys as [B, KH, P*S, D], the layout the dots want (no transpose).
    heads = jnp.arange(kh, dtype=jnp.int32)[None, :, None]
    rows = ((layer * kh + heads) * num_pages + page_table[:, None, :]).reshape(-1)  # [B*KH*P]
    keys = jnp.take(k_pages.reshape(num_layers * kh * num_pages, -1), rows, axis=0)
    values = jnp.take(v_pages.reshape(num_layers * kh * num_pages, -1), rows, axis=0)
    keys = keys.reshape(b, kh, -1, d)  # [B, KH, P*S, D]
    values = values.reshape(b, kh, -1, d)
    qg = q.reshape(b, t, kh, h // kh, d)
    # One query per row (decode): the products are tiny matrices, which XLA CPU runs faster as a
    # fused multiply-and-reduce than as batched dots.
    decode = t == 1
    if decode:
        scores = jnp.sum(qg[:, 0, :, :, None, None, :] * keys[:, :, None, None], axis=-1)
    else:
        scores = jnp.einsum("BTKGD,BKSD->BKGTS", qg, keys)
    scores = scores / jnp.sqrt(jnp.float32(d)) if scale is None else scores * jnp.float32(scale)
    key_pos = jnp.arange(keys.shape[2], dtype=jnp.int32)
    # Select, never multiply: stale or NaN values in unused pages must not reach the output.
    in_cache = key_pos[None, :] < kv_lens[:, None]  # [B, P*S]
    values = jnp.where(in_cache[:, None, :, None], values, 0.0)
    visible = (key_pos[None, None, :] <= q_positions[:, :, None]) & (
        key_pos[None, None, :] < kv_lens[:, None, None]
    )  # [B, T, S]
    if window is not None:
        visible &= key_pos[None, None, :] > q_positions[:, :, None] - window
    visible = visible[:, None, None]  # [B, 1, 1, T, S]
    scores = jnp.where(visible, scores, -jnp.inf)
    row_max = jnp.max(scores, axis=-1, keepdims=True)
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    weights = jnp.where(visible, jnp.exp(scores - row_max), 0.0)
    denom = jnp.sum(weights, axis=-1, keepdims=True)
    weights = weights / jnp.where(denom == 0.0, 1.0, denom)
    if decode:
        out = jnp.sum(weights[:, :, :, 0, :, None] * values[:, :, None], axis=-2)[:, None]
    else:
        out = jnp.einsum("BKGTS,BKSD->BTKGD", weights, values)
    return out.reshape(b, t, h, d)
