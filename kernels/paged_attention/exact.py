"""Batch-invariant attention over the paged cache: every dot is an exact int8 x int8 -> int32 dot.

A float dot's rounding depends on how the backend tiles it, and XLA CPU tiles by the call's
shape (rows, batch, keys), so the same query would get other bits in another batch, chunk or
page bucket. Here both products of attention (q.k and p.v) run on integers: each f32 operand is
rounded to a 15-bit fixed-point value per vector (one scale per query, key, value row and per
probability row), split as `hi * 128 + lo` into two int8 parts, and multiplied exactly with int32
accumulation, whose sum does not depend on order. Only elementwise ops and exact max / integer
reductions remain, so a query's output depends on its own keys alone. The fixed-point rounding
is ~2^-15 of each vector's largest entry, finer than an f16 KV cache.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

LIMIT = 127 * 128  # fixed-point magnitude: hi in [-127, 127], lo in [-64, 63]
DENOM_ONE = 2**18  # the denominator's fixed point: 4096 keys of 1.0 stay below 2^31


def split(x: jax.Array, axis: int = -1) -> tuple[jax.Array, jax.Array, jax.Array]:
    """x f32 -> (hi, lo, scale): `x ~= scale * (128 * hi + lo)` along `axis`, hi and lo int8."""
    amax = jnp.max(jnp.abs(x), axis=axis, keepdims=True)
    scale = jnp.where(amax > 0.0, amax / LIMIT, 1.0)
    fixed = jnp.round(x / scale).astype(jnp.int32)
    lo = jnp.remainder(fixed + 64, 128) - 64
    hi = (fixed - lo) // 128
    return hi.astype(jnp.int8), lo.astype(jnp.int8), scale


def _int_dot(spec: str, a_hi, a_lo, b_hi, b_lo, contract_axes: tuple[int, int]) -> jax.Array:
    """`128 * (a_hi . b_hi) + (a_hi . b_lo + a_lo . b_hi)` as f32, each dot exact in int32; the
    two cross terms share one dot over the concatenated contraction axis."""
    hh = jnp.einsum(spec, a_hi, b_hi, preferred_element_type=jnp.int32)
    a_cat = jnp.concatenate([a_hi, a_lo], axis=contract_axes[0])
    b_cat = jnp.concatenate([b_lo, b_hi], axis=contract_axes[1])
    cross = jnp.einsum(spec, a_cat, b_cat, preferred_element_type=jnp.int32)
    return hh.astype(jnp.float32) * 128.0 + cross.astype(jnp.float32)


def exact_attention(
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
    softcap: float = 0.0,
) -> jax.Array:
    """`ref_attention`'s contract (q [B, T, H, D] over [L, KH, N, S, D] pages -> [B, T, H, D]),
    computed so that each query's output is bitwise independent of the batch, the chunk length,
    the page bucket and whether it is decoded or prefilled."""
    b, t, h, d = q.shape
    num_layers, kh, num_pages, _, _ = k_pages.shape
    heads = jnp.arange(kh, dtype=jnp.int32)[None, :, None]
    rows = ((layer * kh + heads) * num_pages + page_table[:, None, :]).reshape(-1)  # [B*KH*P]
    keys = jnp.take(k_pages.reshape(num_layers * kh * num_pages, -1), rows, axis=0)
    values = jnp.take(v_pages.reshape(num_layers * kh * num_pages, -1), rows, axis=0)
    keys = keys.reshape(b, kh, -1, d)  # [B, KH, K, D], K = P * S
    values = values.reshape(b, kh, -1, d)
    key_pos = jnp.arange(keys.shape[2], dtype=jnp.int32)
    in_cache = key_pos[None, :] < kv_lens[:, None]  # [B, K]
    # Select, never multiply: stale or NaN values in unused pages must not reach the output.
    keys = jnp.where(in_cache[:, None, :, None], keys, 0.0)
    values = jnp.where(in_cache[:, None, :, None], values, 0.0)

    qg = q.reshape(b, t, kh, h // kh, d).transpose(0, 2, 3, 1, 4)  # [B, KH, G, T, D]
    q_hi, q_lo, q_scale = split(qg)
    k_hi, k_lo, k_scale = split(keys)
    raw = _int_dot("bkgtd,bksd->bkgts", q_hi, q_lo, k_hi, k_lo, (-1, -1))
    k_scale = k_scale[..., 0][:, :, None, None, :]  # [B, KH, 1, 1, K]
    scores = raw * 128.0 * q_scale * k_scale
    scores = scores / jnp.sqrt(jnp.float32(d)) if scale is None else scores * jnp.float32(scale)
    if softcap > 0:
        scores = jnp.float32(softcap) * jnp.tanh(scores / jnp.float32(softcap))
    visible = (key_pos[None, None, :] <= q_positions[:, :, None]) & in_cache[:, None, :]
    if window is not None:
        visible &= key_pos[None, None, :] > q_positions[:, :, None] - window
    visible = visible[:, None, None]  # [B, 1, 1, T, K]
    scores = jnp.where(visible, scores, -jnp.inf)
    row_max = jnp.max(scores, axis=-1, keepdims=True)
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    p = jnp.where(visible, jnp.exp(scores - row_max), 0.0)  # [B, KH, G, T, K], max 1
    denom = jnp.sum(jnp.round(p * DENOM_ONE).astype(jnp.int32), axis=-1, keepdims=True)

    v_hi, v_lo, v_scale = split(values)  # per key: fold its scale into p
    weighted = p * v_scale[..., 0][:, :, None, None, :]
    p_hi, p_lo, p_scale = split(weighted)
    num = _int_dot("bkgts,bksd->bkgtd", p_hi, p_lo, v_hi, v_lo, (-1, -2))
    out = num * 128.0 * p_scale / jnp.maximum(denom, 1).astype(jnp.float32) * DENOM_ONE
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)
