"""Paged attention equals dense causal attention over the same keys, whatever the page order."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxserve.kernels.paged_attention import ref_attention as paged_attention

B, T, H, KH, D, S, P, N = (
    2,
    4,
    4,
    2,
    8,
    4,
    6,
    20,
)  # rows, queries, heads, kv heads, dim, page, pages/row, pool


def dense_reference(q, keys, values, q_pos, kv_len):
    """q [T, H, D], keys/values [L, KH, D] contiguous; causal and length masking."""
    rep = H // KH
    k, v = np.repeat(keys, rep, axis=1), np.repeat(values, rep, axis=1)
    s = np.einsum("thd,shd->hts", q, k) / np.sqrt(D)
    pos = np.arange(len(keys))
    mask = (pos[None, :] <= q_pos[:, None]) & (pos[None, :] < kv_len)
    s = np.where(mask[None], s, -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    return np.einsum("hts,shd->thd", w, v)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    lens=st.lists(st.integers(1, P * S - T), min_size=B, max_size=B),
    num_queries=st.sampled_from([1, T]),  # decode takes its own multiply-and-reduce path
)
def test_paged_attention_matches_contiguous(seed, lens, num_queries):
    rng = np.random.default_rng(seed)
    k_pages = rng.standard_normal((1, KH, N, S, D)).astype(np.float32)
    v_pages = rng.standard_normal((1, KH, N, S, D)).astype(np.float32)
    page_table = np.stack([rng.permutation(np.arange(1, N))[:P] for _ in range(B)]).astype(np.int32)
    q = rng.standard_normal((B, num_queries, H, D)).astype(np.float32)
    kv_lens = np.asarray(lens, np.int32) + num_queries
    q_pos = kv_lens[:, None] - num_queries + np.arange(num_queries, dtype=np.int32)[None, :]
    got = jax.jit(paged_attention)(
        jnp.asarray(q),
        jnp.asarray(k_pages),
        jnp.asarray(v_pages),
        layer=jnp.int32(0),
        page_table=jnp.asarray(page_table),
        q_positions=jnp.asarray(q_pos),
        kv_lens=jnp.asarray(kv_lens),
    )
    for b in range(B):
        keys = k_pages[0][:, page_table[b]].reshape(KH, -1, D).transpose(1, 0, 2)  # [P*S, KH, D]
        values = v_pages[0][:, page_table[b]].reshape(KH, -1, D).transpose(1, 0, 2)
        want = dense_reference(q[b], keys, values, q_pos[b], kv_lens[b])
        np.testing.assert_allclose(np.asarray(got[b]), want, atol=1e-5, rtol=1e-5)


def test_a_row_with_no_keys_gives_zeros_not_nan():
    q = jnp.ones((1, 1, H, D), jnp.float32)
    pages = jnp.full((1, KH, N, S, D), jnp.nan, jnp.float32).at[:, :, 1:].set(1.0)
    out = paged_attention(
        q,
        pages,
        pages,
        layer=jnp.int32(0),
        page_table=jnp.zeros((1, P), jnp.int32),
        q_positions=jnp.zeros((1, 1), jnp.int32),
        kv_lens=jnp.zeros((1,), jnp.int32),
    )
    assert not np.isnan(np.asarray(out)).any()


@pytest.mark.parametrize("window", [1, 3, 7])
def test_sliding_window_and_scale_match_dense(window):
    """A local layer sees keys with query - key < window; `scale` replaces 1/sqrt(D)."""
    rng = np.random.default_rng(window)
    k_pages = rng.standard_normal((2, KH, N, S, D)).astype(np.float32)
    v_pages = rng.standard_normal((2, KH, N, S, D)).astype(np.float32)
    page_table = np.stack([rng.permutation(np.arange(1, N))[:P] for _ in range(B)]).astype(np.int32)
    q = rng.standard_normal((B, T, H, D)).astype(np.float32)
    kv_lens = np.asarray([9, 17], np.int32)
    q_pos = kv_lens[:, None] - T + np.arange(T, dtype=np.int32)[None, :]
    got = paged_attention(
        jnp.asarray(q),
        jnp.asarray(k_pages),
        jnp.asarray(v_pages),
        layer=jnp.int32(1),
        page_table=jnp.asarray(page_table),
        q_positions=jnp.asarray(q_pos),
        kv_lens=jnp.asarray(kv_lens),
        scale=0.5,
        window=jnp.int32(window),
    )
    rep = H // KH
    for b in range(B):
        keys = k_pages[1][:, page_table[b]].reshape(KH, -1, D).transpose(1, 0, 2)
        values = v_pages[1][:, page_table[b]].reshape(KH, -1, D).transpose(1, 0, 2)
        k, v = np.repeat(keys, rep, axis=1), np.repeat(values, rep, axis=1)
        s = np.einsum("thd,shd->hts", q[b], k) * 0.5
        pos = np.arange(len(keys))
        dist = q_pos[b][:, None] - pos[None, :]
        mask = (dist >= 0) & (dist < window) & (pos[None, :] < kv_lens[b])
        s = np.where(mask[None], s, -np.inf)
        w = np.exp(s - s.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        want = np.einsum("hts,shd->thd", w, v)
        np.testing.assert_allclose(np.asarray(got[b]), want, atol=1e-5, rtol=1e-5)
