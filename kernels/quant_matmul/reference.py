"""Reference (XLA) quantized matmuls: the paths the model runs on CPU, and the oracles of the
Pallas kernels in `kernel.py`.

Weights are `[in, out]` with one f32 scale per 32 input values (`scales [in // 32, out]`):
int8 values, or int4 values in [-8, 7] packed two per byte along the input axis (row 2i in the
low nibble, row 2i + 1 in the high one), stored as `q + 8`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

BLOCK = 32


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


def pack_int4(q: jax.Array) -> jax.Array:
    """int values in [-8, 7], `[..., n, out]` (n even) -> uint8 `[..., n // 2, out]`."""
    biased = (q.astype(jnp.int32) + 8).astype(jnp.uint8)
    return biased[..., 0::2, :] | (biased[..., 1::2, :] << 4)


def unpack_int4(packed: jax.Array) -> jax.Array:
    """uint8 `[..., n // 2, out]` -> int8 `[..., n, out]` in [-8, 7]."""
    lo = (packed & 15).astype(jnp.int8) - 8
    hi = (packed >> 4).astype(jnp.int8) - 8
    *lead, half, out = packed.shape
    return jnp.stack([lo, hi], axis=-2).reshape(*lead, 2 * half, out)


def ref_quant_matmul(x: jax.Array, w: jax.Array, scales: jax.Array) -> jax.Array:
    """`x [..., in] @ dequantize(w, scales)` for int8 `w [in, out]`, exact in f32."""
    return jnp.einsum("...i,io->...o", x, dequantize(w, scales))


def ref_quant_matmul_int4(x: jax.Array, packed: jax.Array, scales: jax.Array) -> jax.Array:
    """`x [..., in] @ W` for int4 W packed `[in // 2, out]` with per-32 scales."""
    return jnp.einsum("...i,io->...o", x, dequantize(unpack_int4(packed), scales))
