"""The TPU attention kernels (pages streamed from HBM through double-buffered VMEM) in the TPU
interpreter, which simulates their DMAs and semaphores and fills uninitialized VMEM with NaN,
against the pure-jnp references: ragged lengths, partial last pages, windows, GQA/MQA, several
pages per streamed block."""

from __future__ import annotations

import importlib

import jax.numpy as jnp
import numpy as np
import pytest

from jaxserve.kernels import ref_paged_attention, ref_prefill_attention

decode_tpu = importlib.import_module("jaxserve.kernels.paged_attention.tpu").paged_attention_tpu
prefill_tpu = importlib.import_module(
    "jaxserve.kernels.prefill_attention.tpu"
).prefill_attention_tpu
TOL = 2e-5


def _cache(rng, shape):
    return (jnp.asarray(rng.standard_normal(shape), jnp.float32) for _ in range(2))


def _table(rng, rows, pages_per_row, num_pages):
    table = [rng.permutation(np.arange(1, num_pages))[:pages_per_row] for _ in range(rows)]
    return jnp.asarray(np.stack(table), jnp.int32)


@pytest.mark.parametrize(
    ("page_size", "heads", "kv_heads", "window", "softcap", "per_block"),
    [
        (4, 4, 4, None, 0.0, 1),  # MHA, one page per block
        (8, 6, 2, None, 0.0, 2),  # GQA 3:1
        (4, 4, 1, None, 30.0, 4),  # MQA, soft-capped
        (16, 8, 2, 5, 0.0, 2),  # window inside one page
        (4, 4, 2, 9, 0.0, 2),  # window spanning blocks: the first ones are skipped
    ],
)
def test_tpu_decode_attention_matches_reference(
    page_size, heads, kv_heads, window, softcap, per_block
):
    rng = np.random.default_rng(page_size * 10 + heads)
    rows, pages_per_row, d, layers = 4, 6, 16, 2
    num_pages = rows * pages_per_row + 3
    k, v = _cache(rng, (layers, kv_heads, num_pages, page_size, d))
    lengths = jnp.asarray([1, page_size * pages_per_row, 2 * page_size + 1, 0], jnp.int32)
    args = dict(
        layer=jnp.int32(1),
        page_table=_table(rng, rows, pages_per_row, num_pages),
        lengths=lengths,
        window=None if window is None else jnp.int32(window),
        softcap=softcap,
    )
    q = jnp.asarray(rng.standard_normal((rows, heads, d)), jnp.float32)
    got = decode_tpu(q, k, v, interpret=True, pages_per_block=per_block, **args)
    want = ref_paged_attention(q, k, v, **args)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=TOL, rtol=TOL)


@pytest.mark.parametrize(
    ("page_size", "heads", "kv_heads", "block_q", "window", "cache_dtype"),
    [
        (4, 4, 4, 8, None, jnp.float32),
        (8, 6, 2, 8, None, jnp.float32),
        (4, 4, 1, 16, 7, jnp.float32),
        (16, 8, 2, 8, 5, jnp.bfloat16),
    ],
)
def test_tpu_prefill_attention_matches_reference(
    page_size, heads, kv_heads, block_q, window, cache_dtype
):
    rng = np.random.default_rng(page_size + heads)
    rows, pages_per_row, d, layers, t = 3, 8, 16, 2, 16
    num_pages = rows * pages_per_row + 3
    k, v = (x.astype(cache_dtype) for x in _cache(rng, (layers, kv_heads, num_pages, page_size, d)))
    start = np.array([0, 5, page_size * pages_per_row - t - 3])
    num_new = np.array([t, 9, t])  # the middle row is padded past its 9 tokens
    args = dict(
        layer=jnp.int32(1),
        page_table=_table(rng, rows, pages_per_row, num_pages),
        q_positions=jnp.asarray(start[:, None] + np.arange(t)[None], jnp.int32),
        kv_lens=jnp.asarray(start + num_new, jnp.int32),
        window=None if window is None else jnp.int32(window),
    )
    q = jnp.asarray(rng.standard_normal((rows, t, heads, d)), jnp.float32)
    got = prefill_tpu(q, k, v, block_q=block_q, pages_per_block=2, interpret=True, **args)
    want = ref_prefill_attention(q, k, v, **args)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=TOL, rtol=TOL)
