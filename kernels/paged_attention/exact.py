"""Batch-invariant attention over the paged cache: every dot is an exact int8 x int8 -> int32 dot.

A float dot's rounding depends on how the backend tiles it, and XLA CPU tiles by the call's
shape (rows, batch, keys), so the same query would get other bits in another batch, chunk or
page bucket. Here both products of attention (q.k and p.v) run on integers: each f32 operand is
rounded to a 15-bit fixed-point value per vector (one scale per query, key, value row and per
probability row), split as `hi * 128 + lo` into two int8 parts, and multiplied exactly with int32
accumulation, whose sum does not depend on order. Keys and values are split once, when they are
written to the cache (`split`), so a step reads half the bytes of an f32 cache. Only elementwise
ops and exact max / integer reductions remain, so a query's output depends on its own keys
alone. The fixed-point rounding is ~2^-15 of each vector's largest entry, finer than an f16 KV
cache.
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


def _int_dot(spec: str, a_hi, a_lo, b_hi, b_lo) -> jax.Array:
    """`128 * (a_hi . b_hi) + (a_hi . b_lo + a_lo . b_hi)` as f32, each dot exact in int32 (the
    `lo . lo` term is below the fixed-point rounding and left out)."""

    def dot(a: jax.Array, b: jax.Array) -> jax.Array:
        return jnp.einsum(spec, a, b, preferred_element_type=jnp.int32)

    cross = dot(a_hi, b_lo) + dot(a_lo, b_hi)  # int32: exact in any order
    return dot(a_hi, b_hi).astype(jnp.float32) * 128.0 + cross.astype(jnp.float32)


def gather_pages(pages: jax.Array, layer: jax.Array, page_table: jax.Array) -> jax.Array:
    """The pages of each row at `layer`: [L, KH, N, S, ...] -> [B, KH, P * S, ...], one gather
    straight from the stacked cache (each (layer, kv head, page) is one contiguous row)."""
    num_layers, kh, num_pages, page_size = pages.shape[:4]
    rest = pages.shape[4:]
    heads = jnp.arange(kh, dtype=jnp.int32)[None, :, None]
    rows = ((layer * kh + heads) * num_pages + page_table[:, None, :]).reshape(-1)  # [B*KH*P]
    flat = pages.reshape(num_layers * kh * num_pages, -1)
    b = page_table.shape[0]
    return jnp.take(flat, rows, axis=0).reshape(b, kh, -1, *rest)


def masked_exp(
    scores: jax.Array, *, q_positions: jax.Array, kv_lens: jax.Array, window: jax.Array | None
) -> jax.Array:
    """`exp(score - row max)` over the keys each query sees, 0 elsewhere (selected, never
    multiplied, so stale keys cannot leak). scores [B, KH, G, T, K]; key j is visible to a query
    at p when j <= p, j < kv_len and, with `window`, p - j < window."""
    key_pos = jnp.arange(scores.shape[-1], dtype=jnp.int32)
    visible = (key_pos[None, None, :] <= q_positions[:, :, None]) & (
        key_pos[None, None, :] < kv_lens[:, None, None]
    )  # [B, T, K]
    if window is not None:
        visible &= key_pos[None, None, :] > q_positions[:, :, None] - window
    visible = visible[:, None, None]  # [B, 1, 1, T, K]
    scores = jnp.where(visible, scores, -jnp.inf)
    row_max = jnp.max(scores, axis=-1, keepdims=True)
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    return jnp.where(visible, jnp.exp(scores - row_max), 0.0)


def exact_attention(
    q: jax.Array,
    k_pages: tuple[jax.Array, jax.Array, jax.Array],
    v_pages: tuple[jax.Array, jax.Array, jax.Array],
    *,
    layer: jax.Array,
    page_table: jax.Array,
    q_positions: jax.Array,
    kv_lens: jax.Array,
    scale: float | None = None,
    window: jax.Array | None = None,
    softcap: float = 0.0,
) -> jax.Array:
    """`ref_attention`'s contract (q [B, T, H, D] -> [B, T, H, D]) over a cache stored split:
    `k_pages` and `v_pages` are (hi [L, KH, N, S, D] int8, lo int8, scale [L, KH, N, S] f32),
    as `split` makes them when K/V are written. Each query's output is bitwise independent of
    the batch, the chunk length, the page bucket and whether it is decoded or prefilled."""
    b, t, h, d = q.shape
    kh = k_pages[0].shape[1]
    k_hi, k_lo, k_scale = (gather_pages(x, layer, page_table) for x in k_pages)
    v_hi, v_lo, v_scale = (gather_pages(x, layer, page_table) for x in v_pages)
    key_pos = jnp.arange(k_hi.shape[2], dtype=jnp.int32)
    in_cache = key_pos[None, :] < kv_lens[:, None]  # [B, K], K = P * S
    # Select, never multiply: stale values in unused pages must not reach the output.
    k_hi, k_lo, v_hi, v_lo = (
        jnp.where(in_cache[:, None, :, None], x, jnp.int8(0)) for x in (k_hi, k_lo, v_hi, v_lo)
    )
    v_scale = jnp.where(in_cache[:, None, :], v_scale, 0.0)  # [B, KH, K]

    qg = q.reshape(b, t, kh, h // kh, d).transpose(0, 2, 3, 1, 4)  # [B, KH, G, T, D]
    q_hi, q_lo, q_scale = split(qg)
    raw = _int_dot("bkgtd,bksd->bkgts", q_hi, q_lo, k_hi, k_lo)
    scores = raw * 128.0 * q_scale * k_scale[:, :, None, None, :]
    scores = scores / jnp.sqrt(jnp.float32(d)) if scale is None else scores * jnp.float32(scale)
    if softcap > 0:
        scores = jnp.float32(softcap) * jnp.tanh(scores / jnp.float32(softcap))
    p = masked_exp(scores, q_positions=q_positions, kv_lens=kv_lens, window=window)  # max 1
    denom = jnp.sum(jnp.round(p * DENOM_ONE).astype(jnp.int32), axis=-1, keepdims=True)

    # v = v_scale * (128 v_hi + v_lo) per key: fold the key's scale into p, then split p.
    p_hi, p_lo, p_scale = split(p * v_scale[:, :, None, None, :])
    num = _int_dot("bkgts,bksd->bkgtd", p_hi, p_lo, v_hi, v_lo)
    out = num * 128.0 * p_scale / jnp.maximum(denom, 1).astype(jnp.float32) * DENOM_ONE
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)
