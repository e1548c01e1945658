"""The page loop both attention kernels run inside a program: online softmax over K/V pages.

A page whose keys are all masked leaves the running max, sum and accumulator exactly unchanged,
and masked scores are selected away (never multiplied), so stale values in unused pages cannot
reach the output.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NO_WINDOW = 2**30  # the window of a layer without one: every earlier key is visible


def attend_pages(
    q: jax.Array,
    q_pos: jax.Array,
    *,
    k_ref,
    v_ref,
    table_ref,
    row: jax.Array,
    layer: jax.Array,
    kv_head: jax.Array,
    kv_len: jax.Array,
    window: jax.Array,
    first_page: jax.Array,
    last_page: jax.Array,
    scale: float,
    softcap: float,
) -> jax.Array:
    """Attend queries q [Q, D] at positions q_pos [Q] over pages [first_page, last_page) of `row`.

    k_ref, v_ref: [L, KH, N, S, D] refs read at (layer, kv_head, page); table_ref: [B, P] page
    table. Key j is visible to a query at p when j <= p, j < kv_len and p - j < window.
    Returns [Q, D] f32 (zeros for a query that sees no key).
    """
    num_q, d = q.shape
    page_size = k_ref.shape[3]
    q = q.astype(jnp.float32) * jnp.float32(scale)

    def body(p, carry):
        m, total, acc = carry
        page = table_ref[row, p]
        k = k_ref[layer, kv_head, page].astype(jnp.float32)  # [S, D]
        v = v_ref[layer, kv_head, page].astype(jnp.float32)
        s = jnp.dot(q, k.T, preferred_element_type=jnp.float32)  # [Q, S]
        if softcap > 0:
            s = jnp.float32(softcap) * jnp.tanh(s / jnp.float32(softcap))
        key_pos = p * page_size + jax.lax.broadcasted_iota(jnp.int32, (1, page_size), 1)
        visible = (key_pos <= q_pos[:, None]) & (key_pos < kv_len)
        visible &= key_pos > q_pos[:, None] - window
        s = jnp.where(visible, s, -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(s, axis=1))
        m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
        alpha = jnp.where(jnp.isfinite(m), jnp.exp(m - m_safe), 0.0)
        weights = jnp.where(visible, jnp.exp(s - m_safe[:, None]), 0.0)
        total = alpha * total + jnp.sum(weights, axis=1)
        acc = alpha[:, None] * acc + jnp.dot(weights, v, preferred_element_type=jnp.float32)
        return m_new, total, acc

    init = (
        jnp.full((num_q,), -jnp.inf, jnp.float32),
        jnp.zeros((num_q,), jnp.float32),
        jnp.zeros((num_q, d), jnp.float32),
    )
    _, total, acc = jax.lax.fori_loop(first_page, last_page, body, init)
    return acc / jnp.where(total == 0.0, 1.0, total)[:, None]
