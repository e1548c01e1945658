"""Batch-invariant attention over the paged cache: every dot is an exact int8 x int8 -> int32 dot.

A float dot's rounding depends on how the backend tiles it, and XLA CPU tiles by the call's
shape (rows, batch, keys), so the same query would get other bits in another batch, chunk or
page bucket. Here both products of attention (q.k and p.v) run on integers: each f32 operand is
rounded to a 15-bit fixed-point value per vector (one scale per query, key, value row and per
probability row), split as `hi * 128 + lo` into two int8 parts, and multiplied exactly with int32
accumulation, whose sum does not depend on order. Keys and values are split once, when they are
written to the cache, side by side as `[hi | lo]` (`pack`), so a step reads half the bytes of an
f32 cache and each product is one integer dot over stacked operands. Only elementwise
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


def pack(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x f32 `[..., D]` -> (`[hi | lo]` int8 `[..., 2D]`, scale `[...]`): the cache's format."""
    hi, lo, scale = split(x)
    return jnp.concatenate([hi, lo], axis=-1), scale[..., 0]


def _combine(hi_hi: jax.Array, hi_lo: jax.Array, lo_hi: jax.Array) -> jax.Array:
    """`128 * hi.hi + (hi.lo + lo.hi)` in f32 from exact int32 products (the `lo.lo` term is
    below the fixed-point rounding and left out)."""
    cross = hi_lo + lo_hi  # int32: exact in any order
    return hi_hi.astype(jnp.float32) * 128.0 + cross.astype(jnp.float32)


def _dot(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.int32)


# The integer products are exact however they are grouped, so each shape takes the grouping that
# runs fastest without changing a bit. One query per row (decode): one dot of `[a_hi; a_lo]`
# against the whole packed operand (a quarter of the work is the unused lo.lo, but decode's dots
# are small and bound by the number of calls). Query chunks (prefill): three dots over its halves.


def _scores(q_hi: jax.Array, q_lo: jax.Array, keys: jax.Array, *, stacked: bool) -> jax.Array:
    """q [B, KH, G, T, D] . keys `[hi | lo]` [B, KH, K, 2D] -> [B, KH, G, T, K]."""
    d = q_hi.shape[-1]
    if not stacked:
        k_hi, k_lo = keys[..., :d], keys[..., d:]
        spec = "bkgtd,bksd->bkgts"
        return _combine(_dot(spec, q_hi, k_hi), _dot(spec, q_hi, k_lo), _dot(spec, q_lo, k_hi))
    b, kh, k = keys.shape[:3]
    rows = keys.reshape(b, kh, 2 * k, d)  # row 2s: key s's hi part, row 2s + 1: its lo part
    both = _dot("bkxgtd,bksd->bkxgts", jnp.stack([q_hi, q_lo], axis=2), rows)
    both = both.reshape(*both.shape[:-1], k, 2)
    return _combine(both[:, :, 0, ..., 0], both[:, :, 0, ..., 1], both[:, :, 1, ..., 0])


def _weighted(p_hi: jax.Array, p_lo: jax.Array, values: jax.Array, *, stacked: bool) -> jax.Array:
    """p [B, KH, G, T, K] . values `[hi | lo]` [B, KH, K, 2D] -> [B, KH, G, T, D]."""
    d = values.shape[-1] // 2
    if not stacked:
        v_hi, v_lo = values[..., :d], values[..., d:]
        spec = "bkgts,bksd->bkgtd"
        return _combine(_dot(spec, p_hi, v_hi), _dot(spec, p_hi, v_lo), _dot(spec, p_lo, v_hi))
    both = _dot("bkxgts,bksd->bkxgtd", jnp.stack([p_hi, p_lo], axis=2), values)
    return _combine(both[:, :, 0, ..., :d], both[:, :, 0, ..., d:], both[:, :, 1, ..., :d])


def gather_pages(pages: jax.Array, layer: jax.Array, page_table: jax.Array) -> jax.Array:
    """The pages of each row at `layer`: [L, KH, N, S, ...] -> [B, KH, P * S, ...], one gather
    straight from the stacked cache (each (layer, kv head, page) is one contiguous row)."""
    num_layers, kh, num_pages, page_size = pages.shape[:4]
    rest = pages.shape[4:]
    heads = jnp.arange(kh, dtype=jnp.int32)[None, :, None]
    rows = ((layer * kh + heads) * num_pages + page_table[:, None, :]).reshape(-1)  # [B*KH*P]
    flat = pages.reshape(num_layers * kh * num_pages, -1)
    b = page_table.shape[0]
    words = pages.dtype.itemsize < 4 and flat.shape[1] * pages.dtype.itemsize % 4 == 0
    if words:  # XLA CPU gathers element by element: move int8 rows as 32-bit words
        flat = jax.lax.bitcast_convert_type(
            flat.reshape(flat.shape[0], -1, 4 // pages.dtype.itemsize), jnp.int32
        )
    out = jnp.take(flat, rows, axis=0, mode="clip")
    if words:
        out = jax.lax.bitcast_convert_type(out, pages.dtype)
    return out.reshape(b, kh, -1, *rest)


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
    k_pages: tuple[jax.Array, jax.Array],
    v_pages: tuple[jax.Array, jax.Array],
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
    `k_pages` and `v_pages` are (`[hi | lo]` [L, KH, N, S, 2D] int8, scale [L, KH, N, S] f32),
    as `pack` makes them when K/V are written. Each query's output is bitwise independent of
    the batch, the chunk length, the page bucket and whether it is decoded or prefilled."""
    b, t, h, d = q.shape
    kh = k_pages[0].shape[1]
    # [hi | lo] of every key and value in one gather each. Unused slots need no select:
    # their scores are masked before the softmax and their probabilities are exactly 0,
    # so stale int8 values add exact zeros (only the f32 value scales are selected).
    keys, k_scale = (gather_pages(x, layer, page_table) for x in k_pages)  # [B, KH, K, 2D]
    values, v_scale = (gather_pages(x, layer, page_table) for x in v_pages)
    key_pos = jnp.arange(keys.shape[2], dtype=jnp.int32)
    in_cache = key_pos[None, :] < kv_lens[:, None]  # [B, K], K = P * S
    v_scale = jnp.where(in_cache[:, None, :], v_scale, 0.0)  # [B, KH, K]

    qg = q.reshape(b, t, kh, h // kh, d).transpose(0, 2, 3, 1, 4)  # [B, KH, G, T, D]
    q_hi, q_lo, q_scale = split(qg)
    raw = _scores(q_hi, q_lo, keys, stacked=t == 1)
    scores = raw * 128.0 * q_scale * k_scale[:, :, None, None, :]
    scores = scores / jnp.sqrt(jnp.float32(d)) if scale is None else scores * jnp.float32(scale)
    if softcap > 0:
        scores = jnp.float32(softcap) * jnp.tanh(scores / jnp.float32(softcap))
    p = masked_exp(scores, q_positions=q_positions, kv_lens=kv_lens, window=window)  # max 1
    denom = jnp.sum(jnp.round(p * DENOM_ONE).astype(jnp.int32), axis=-1, keepdims=True)

    # v = v_scale * (128 v_hi + v_lo) per key: fold the key's scale into p, then split p.
    p_hi, p_lo, p_scale = split(p * v_scale[:, :, None, None, :])
    num = _weighted(p_hi, p_lo, values, stacked=t == 1)
    out = num * 128.0 * p_scale / jnp.maximum(denom, 1).astype(jnp.float32) * DENOM_ONE
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)
