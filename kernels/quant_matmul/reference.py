"""Reference (XLA) quantized matmuls: the paths the model runs on CPU, and the oracles of the
Pallas kernels in `kernel.py`.

Weights are `[in, out]` with one f32 scale per block of 32 or 64 input values (`scales
[in // block, out]`, the block size implied by the shapes):
int8 values, or int4 values in [-8, 7] packed two per byte along the input axis (row 2i in the
low nibble, row 2i + 1 in the high one), stored as `q + 8`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

BLOCK = 32
BLOCKS = (32, 64)  # the int8 block sizes weights come in (`loading/weights.py`)


def dequantize(w: jax.Array, scales: jax.Array | None) -> jax.Array:
    """`w[..., n, out]` (f32, or int8 with `scales[..., n // block, out]`) -> f32."""
    if scales is None:
        return w
    *lead, n, out = w.shape
    k = scales.shape[-2]
    blocks = w.reshape(*lead, k, n // k, out).astype(jnp.float32)
    return (blocks * scales[..., None, :]).reshape(w.shape)


def matmul_w8a8(x: jax.Array, w: jax.Array, scales: jax.Array) -> jax.Array:
    """`x @ W` for int8 W `[in, out]` with per-block scales `[in // block, out]`, quantizing `x`
    per block too, the way llama.cpp's Q8_0 dot products work (blocks of 32 there; 64 here
    for weights from 4-bit formats, see `loading/weights.py`).

    Batch-invariant by construction: a `fori_loop` over groups of K input blocks does one exact
    int8 x int8 -> int32 dot per block (`[R, 32] x [32, out]`, batched over the group), then
    `y += acc * (x_scale * w_scale)` in f32, block after block, always in block order. Every op
    is exact or elementwise, so a row's output does not depend on how many rows are in the call
    (decode bucket, prefill chunk), and no `[K, R, out]` intermediate is built (the f32
    epilogue of one batched per-block dot grew with rows x blocks). Groups of up to 6 blocks
    keep the loop short for small batches.
    """
    return matmul_w8a8_many(x, [(w, scales)])[0]


def matmul_w8a8_many(
    x: jax.Array, weights: Sequence[tuple[jax.Array, jax.Array]]
) -> list[jax.Array]:
    """`matmul_w8a8(x, w, scales)` for several weights of one input (q/k/v, gate/up) with the
    same block count: `x` quantized once and one block loop for all of them, each output
    bitwise what its own call gives (the same integer dots and the same per-element sums)."""
    n = x.shape[-1]
    k = weights[0][1].shape[0]
    if any(s.shape[0] != k or w.shape[0] != n for w, s in weights):
        raise ValueError("matmul_w8a8_many: weights must share the input size and block count")
    lead, block = x.shape[:-1], n // k
    group = max(g for g in range(1, 7) if k % g == 0)
    xb = x.reshape(-1, k, block)
    rows = xb.shape[0]
    x_scale = jnp.max(jnp.abs(xb), axis=-1) / 127.0  # [R, K]
    safe = jnp.where(x_scale == 0.0, 1.0, x_scale)
    xq = jnp.round(xb / safe[..., None]).astype(jnp.int8).reshape(rows, k // group, group, block)
    x_scale = x_scale.reshape(rows, k // group, group)
    wbs = [w.reshape(k // group, group, block, w.shape[1]) for w, _ in weights]
    sbs = [s.reshape(k // group, group, s.shape[1]) for _, s in weights]

    def blocks(i: jax.Array, ys: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        out = []
        for y, wb, sb in zip(ys, wbs, sbs, strict=True):
            acc = jnp.einsum("rgc,gco->gro", xq[:, i], wb[i], preferred_element_type=jnp.int32)
            for j in range(group):  # exact int32 per block, then scaled and added in block order
                y = y + acc[j].astype(jnp.float32) * (x_scale[:, i, j, None] * sb[i, j][None, :])
            out.append(y)
        return tuple(out)

    zeros = tuple(jnp.zeros((rows, w.shape[1]), jnp.float32) for w, _ in weights)
    ys = jax.lax.fori_loop(0, k // group, blocks, zeros)
    return [y.reshape(*lead, y.shape[-1]) for y in ys]


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
    """`x [..., in] @ W` for int4 W packed `[in // 2, out]` with per-block scales."""
    return jnp.einsum("...i,io->...o", x, dequantize(unpack_int4(packed), scales))
