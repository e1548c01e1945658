"""Reference attention over the paged KV cache (pure jnp): the path XLA runs on CPU, and the
oracle of the Pallas kernels in `kernels/paged_attention` and `kernels/prefill_attention`.

Cache layout `[L, KH, N, S, D]`: layers, kv heads, pages, slots per page, head dim; each
(layer, kv head, page) is one contiguous `[S, D]` row.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxserve.kernels.paged_attention.exact import gather_pages, masked_exp


def ref_attention(
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
    """Reference attention over a paged cache (pure jnp).

    q: [B, T, H, D] at q_positions [B, T]; k_pages, v_pages: [L, KH, N, S, D], read at `layer`
    (one gather straight from the stacked cache, never a copy of a whole layer); page_table: [B, P];
    kv_lens: [B] tokens cached per row (including this step's). Key j of a row is visible to a query
    at position p when j <= p and j < kv_len, and with `window` (an int32 scalar, traced so that
    scanned layers can differ) also p - j < window. Scores are scaled by `scale` (default
    1/sqrt(D)) and, with `softcap > 0`, capped to `softcap * tanh(score / softcap)`.
    Returns [B, T, H, D].
    """
    b, t, h, d = q.shape
    kh = k_pages.shape[1]
    # The gather copies whole [S, D] rows and lands keys as [B, KH, P*S, D], the layout the dots
    # want (no transpose).
    keys = gather_pages(k_pages, layer, page_table).astype(jnp.float32)
    values = gather_pages(v_pages, layer, page_table).astype(jnp.float32)
    qg = q.reshape(b, t, kh, h // kh, d)
    # One query per row (decode): the products are tiny matrices, which XLA CPU runs faster as a
    # fused multiply-and-reduce than as batched dots.
    decode = t == 1
    if decode:
        scores = jnp.sum(qg[:, 0, :, :, None, None, :] * keys[:, :, None, None], axis=-1)
    else:
        scores = jnp.einsum("BTKGD,BKSD->BKGTS", qg, keys)
    scores = scores / jnp.sqrt(jnp.float32(d)) if scale is None else scores * jnp.float32(scale)
    if softcap > 0:
        scores = jnp.float32(softcap) * jnp.tanh(scores / jnp.float32(softcap))
    key_pos = jnp.arange(keys.shape[2], dtype=jnp.int32)
    # Select, never multiply: stale or NaN values in unused pages must not reach the output.
    in_cache = key_pos[None, :] < kv_lens[:, None]  # [B, P*S]
    values = jnp.where(in_cache[:, None, :, None], values, 0.0)
    weights = masked_exp(scores, q_positions=q_positions, kv_lens=kv_lens, window=window)
    denom = jnp.sum(weights, axis=-1, keepdims=True)
    weights = weights / jnp.where(denom == 0.0, 1.0, denom)
    if decode:
        out = jnp.sum(weights[:, :, :, 0, :, None] * values[:, :, None], axis=-2)[:, None]
    else:
        out = jnp.einsum("BKGTS,BKSD->BTKGD", weights, values)
    return out.reshape(b, t, h, d)


def ref_paged_attention(
    q: jax.Array,
    k_pages: jax.Array,
    v_pages: jax.Array,
    *,
    layer: jax.Array,
    page_table: jax.Array,
    lengths: jax.Array,
    scale: float | None = None,
    window: jax.Array | None = None,
    softcap: float = 0.0,
) -> jax.Array:
    """Decode attention: one query per row, at position `lengths - 1`.

    q: [B, H, D]; k_pages, v_pages: [L, KH, N, S, D]; page_table: [B, P]; lengths: [B] keys
    cached per row (the query's own included). Returns [B, H, D].
    """
    out = ref_attention(
        q[:, None],
        k_pages,
        v_pages,
        layer=layer,
        page_table=page_table,
        q_positions=(lengths - 1)[:, None],
        kv_lens=lengths,
        scale=scale,
        window=window,
        softcap=softcap,
    )
    return out[:, 0]
