"""Batch-invariant attention over the paged cache: every dot is an exact int8 x int8 -> int32 dot.

A float dot's rounding depends on how the backend tiles it, and XLA CPU tiles by the call's
shape (rows, batch, keys), so the same query would get other bits in another batch, chunk or
page bucket. Here both products of attention (q.k and p.v) run on integers. Keys and values are
quantized once, when written to the cache (`pack`): int8 blocks of 32 values with one f32 scale
each, llama.cpp's q8_0 KV cache. The other operand of each product (the query, and each row of
probabilities with the value scales folded in) is rounded to a 15-bit fixed-point value per
vector and split as `hi * 128 + lo` into two int8 parts; the two halves are stacked into one
integer dot per product and block, whose int32 sums do not depend on order. Only elementwise
ops, exact max / integer reductions and block sums in a fixed order remain, so a query's output
depends on its own keys alone.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

BLOCK = 32  # values per cache scale, at most (`block_size`): llama.cpp's q8_0 KV blocks
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


def block_size(head_dim: int) -> int:
    """Values per cache scale: blocks of 32 (teacher-forced agreement with llama.cpp on Gemma 3's
    256-value heads fell from 99.6% to 99.0% with blocks of 64)."""
    return math.gcd(head_dim, BLOCK)


def pack(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x f32 `[..., D]` -> (int8 `[..., D]`, scale `[..., D // block]`): `x ~= scale * q`
    with one scale per block of each vector (its largest entry maps to 127), the cache's
    format."""
    d = x.shape[-1]
    blocks = x.reshape(*x.shape[:-1], d // block_size(d), block_size(d))
    amax = jnp.max(jnp.abs(blocks), axis=-1)
    scale = jnp.where(amax > 0.0, amax / 127.0, 1.0)
    return jnp.round(blocks / scale[..., None]).astype(jnp.int8).reshape(x.shape), scale


def _stacked(spec: str, hi: jax.Array, lo: jax.Array, cached: jax.Array) -> jax.Array:
    """`128 * hi.c + lo.c` in f32 for a split operand (`hi`, `lo` [B, KH, C, ...]) against int8
    cache blocks: one exact int32 dot over the stacked halves, combined elementwise."""
    both = jnp.einsum(spec, jnp.stack([hi, lo], axis=3), cached, preferred_element_type=jnp.int32)
    return both[:, :, :, 0].astype(jnp.float32) * 128.0 + both[:, :, :, 1].astype(jnp.float32)


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
    """`ref_attention`'s contract (q [B, T, H, D] -> [B, T, H, D]) over a quantized cache:
    `k_pages` and `v_pages` are (int8 [L, KH, N, S, D], scales [L, KH, N, S, D / 32] f32), as
    `pack` makes them when K/V are written. Each query's output is bitwise independent of
    the batch, the chunk length, the page bucket and whether it is decoded or prefilled."""
    b, t, h, d = q.shape
    kh = k_pages[0].shape[1]
    # Every key and value in one gather each. Unused slots need no select:
    # their scores are masked before the softmax and their probabilities are exactly 0,
    # so stale int8 values add exact zeros (only the f32 value scales are selected).
    keys, k_scale = (gather_pages(x, layer, page_table) for x in k_pages)  # [B, KH, K, D]
    values, v_scale = (gather_pages(x, layer, page_table) for x in v_pages)
    key_pos = jnp.arange(keys.shape[2], dtype=jnp.int32)
    in_cache = key_pos[None, :] < kv_lens[:, None]  # [B, K], K = P * S
    v_scale = jnp.where(in_cache[:, None, :, None], v_scale, 0.0)  # [B, KH, K, C]

    c = k_scale.shape[-1]  # scale blocks per vector
    keys = keys.reshape(*keys.shape[:3], c, d // c)  # [B, KH, K, C, D / C]
    values = values.reshape(keys.shape)

    qg = q.reshape(b, t, kh, h // kh, d).transpose(0, 2, 3, 1, 4)  # [B, KH, G, T, D]
    q_hi, q_lo, q_scale = split(qg)
    q_hi, q_lo = (
        x.reshape(b, kh, -1, t, c, d // c).transpose(0, 1, 4, 2, 3, 5) for x in (q_hi, q_lo)
    )
    raw = _stacked("bkcxgtd,bkscd->bkcxgts", q_hi, q_lo, keys)  # [B, KH, C, G, T, K]
    k_scale = k_scale.transpose(0, 1, 3, 2)[:, :, :, None, None, :]  # [B, KH, C, 1, 1, K]
    scores = raw[:, :, 0] * k_scale[:, :, 0]
    for j in range(1, c):  # blocks added in order: the same bits in any batch
        scores = scores + raw[:, :, j] * k_scale[:, :, j]
    scores = scores * q_scale
    scores = scores / jnp.sqrt(jnp.float32(d)) if scale is None else scores * jnp.float32(scale)
    if softcap > 0:
        scores = jnp.float32(softcap) * jnp.tanh(scores / jnp.float32(softcap))
    p = masked_exp(scores, q_positions=q_positions, kv_lens=kv_lens, window=window)  # max 1
    denom = jnp.sum(jnp.round(p * DENOM_ONE).astype(jnp.int32), axis=-1, keepdims=True)

    # value block j of key s is v_scale[s, j] * v[s, j]: fold that scale into p, then split p.
    v_scale = v_scale.transpose(0, 1, 3, 2)[:, :, :, None, None, :]  # [B, KH, C, 1, 1, K]
    p_hi, p_lo, p_scale = split(p[:, :, None] * v_scale)  # [B, KH, C, G, T, K]
    num = _stacked("bkcxgts,bkscd->bkcxgtd", p_hi, p_lo, values) * p_scale  # [B, KH, C, G, T, D/C]
    out = num / jnp.maximum(denom[:, :, None], 1).astype(jnp.float32) * DENOM_ONE
    return out.transpose(0, 4, 1, 3, 2, 5).reshape(b, t, h, d)
