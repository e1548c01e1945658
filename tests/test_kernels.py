"""Every Pallas kernel in interpret mode against its pure-jnp reference.

Inputs are random (never zeros); outputs are written into NaN-filled buffers, so an element a
kernel fails to write shows as NaN. Shapes cover ragged lengths, partial last pages, several page
sizes and GQA/MQA ratios.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxserve.kernels import (
    apply_bitmask,
    paged_attention,
    prefill_attention,
    quant_matmul,
    quant_matmul_int4,
    ref_apply_bitmask,
    ref_paged_attention,
    ref_prefill_attention,
    ref_quant_matmul,
    ref_quant_matmul_int4,
)
from jaxserve.kernels.quant_matmul import matmul_w8a8, matmul_w8a8_many, pack_int4

ATTN_TOL = 2e-5  # online softmax page by page vs one softmax: f32 rounding only


def _cache(rng, layers, kv_heads, num_pages, page_size, d):
    shape = (layers, kv_heads, num_pages, page_size, d)
    k = rng.standard_normal(shape).astype(np.float32)
    v = rng.standard_normal(shape).astype(np.float32)
    return jnp.asarray(k), jnp.asarray(v)


def _table(rng, rows, pages_per_row, num_pages):
    table = [rng.permutation(np.arange(1, num_pages))[:pages_per_row] for _ in range(rows)]
    return jnp.asarray(np.stack(table), jnp.int32)


def _poison(shape):
    return jnp.full(shape, jnp.nan, jnp.float32)


@pytest.mark.parametrize(
    ("page_size", "heads", "kv_heads", "window", "softcap"),
    [
        (4, 4, 4, None, 0.0),  # MHA
        (8, 6, 2, None, 0.0),  # GQA 3:1
        (4, 4, 1, None, 30.0),  # MQA, soft-capped
        (16, 8, 2, 5, 0.0),  # sliding window inside one page
        (4, 4, 2, 9, 0.0),  # window spanning pages: the first ones are skipped
    ],
)
def test_paged_decode_attention_matches_reference(page_size, heads, kv_heads, window, softcap):
    rng = np.random.default_rng(page_size * 10 + heads)
    rows, pages_per_row, d, layers = 4, 6, 16, 2
    num_pages = rows * pages_per_row + 3
    k, v = _cache(rng, layers, kv_heads, num_pages, page_size, d)
    table = _table(rng, rows, pages_per_row, num_pages)
    # 1 key; a partial page; exactly full pages; the whole row
    full = pages_per_row * page_size
    lengths = jnp.asarray([1, page_size + 3, 2 * page_size, full], jnp.int32)
    q = jnp.asarray(rng.standard_normal((rows, heads, d)), jnp.float32)
    args = dict(layer=jnp.int32(1), page_table=table, lengths=lengths, softcap=softcap)
    args["window"] = None if window is None else jnp.int32(window)
    got = paged_attention(q, k, v, interpret=True, out=_poison(q.shape), **args)
    want = ref_paged_attention(q, k, v, **args)
    assert not np.isnan(np.asarray(got)).any()
    np.testing.assert_allclose(got, want, rtol=ATTN_TOL, atol=ATTN_TOL)


@pytest.mark.parametrize(
    ("page_size", "heads", "kv_heads", "block_q", "window"),
    [
        (4, 4, 4, 8, None),
        (4, 6, 2, 4, None),
        (8, 4, 1, 2, None),
        (4, 4, 2, 4, 3),
        (8, 8, 2, 8, 6),
    ],
)
def test_chunked_prefill_attention_matches_reference(page_size, heads, kv_heads, block_q, window):
    rng = np.random.default_rng(page_size + 7 * heads + block_q)
    rows, pages_per_row, d, layers, chunk = 3, 8, 16, 1, 8
    num_pages = rows * pages_per_row + 2
    k, v = _cache(rng, layers, kv_heads, num_pages, page_size, d)
    table = _table(rng, rows, pages_per_row, num_pages)
    # a first chunk, a later partial chunk (padding queries after it), a chunk ending mid-page
    start = np.asarray([0, 2 * page_size + 1, 3 * page_size - 2])
    num_new = np.asarray([chunk, 5, 3])
    positions = jnp.asarray(start[:, None] + np.arange(chunk)[None, :], jnp.int32)
    kv_lens = jnp.asarray(start + num_new, jnp.int32)
    q = jnp.asarray(rng.standard_normal((rows, chunk, heads, d)), jnp.float32)
    args = dict(layer=jnp.int32(0), page_table=table, q_positions=positions, kv_lens=kv_lens)
    args["window"] = None if window is None else jnp.int32(window)
    got = prefill_attention(q, k, v, block_q=block_q, interpret=True, out=_poison(q.shape), **args)
    want = ref_prefill_attention(q, k, v, **args)
    assert not np.isnan(np.asarray(got)).any()
    np.testing.assert_allclose(got, want, rtol=ATTN_TOL, atol=ATTN_TOL)


def test_attention_kernels_refuse_bad_shapes():
    q = jnp.ones((2, 6, 8), jnp.float32)
    k = jnp.ones((1, 4, 5, 4, 8), jnp.float32)
    table = jnp.ones((2, 3), jnp.int32)
    with pytest.raises(ValueError, match="not a multiple"):
        paged_attention(q, k, k, layer=jnp.int32(0), page_table=table, lengths=jnp.ones(2))
    with pytest.raises(ValueError, match="int32"):
        paged_attention(
            q[:, :4], k, k, layer=jnp.int32(0), page_table=table.astype(jnp.float32),
            lengths=jnp.ones(2),
        )  # fmt: skip
    with pytest.raises(ValueError, match="block_q"):
        prefill_attention(
            jnp.ones((2, 6, 4, 8)), k, k, layer=jnp.int32(0), page_table=table,
            q_positions=jnp.zeros((2, 6), jnp.int32), kv_lens=jnp.ones(2, jnp.int32), block_q=4,
        )  # fmt: skip


def _int8_weights(rng, k, n, block=32):
    w = rng.integers(-127, 128, size=(k, n)).astype(np.int8)
    scales = rng.uniform(0.001, 0.02, size=(k // block, n)).astype(np.float32)
    return jnp.asarray(w), jnp.asarray(scales)


INT8_SHAPES = [
    (1, 64, 128, None, 32),
    (8, 256, 384, (8, 128, 64), 32),
    (24, 576, 256, (8, 256, 192), 32),
    (5, 96, 40, None, 32),
    (8, 576, 256, (8, 256, 192), 64),
    (2, 128, 64, None, 64),
]


@pytest.mark.parametrize(("m", "k", "n", "blocks", "block"), INT8_SHAPES)
def test_int8_matmul_matches_reference(m, k, n, blocks, block):
    rng = np.random.default_rng(m + k + n)
    x = jnp.asarray(rng.standard_normal((m, k)), jnp.float32)
    w, scales = _int8_weights(rng, k, n, block)
    got = quant_matmul(x, w, scales, blocks=blocks, interpret=True, out=_poison((m, n)))
    want = ref_quant_matmul(x, w, scales)
    assert not np.isnan(np.asarray(got)).any()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))


@pytest.mark.parametrize("block", [32, 64])
def test_w8a8_matmul_is_close_to_the_dequantized_product_and_row_invariant(block):
    """The CPU path quantizes activations per block too: close to the exact product, and a
    row's bits do not depend on the rows beside it."""
    rng = np.random.default_rng(block)
    x = jnp.asarray(rng.standard_normal((7, 576)), jnp.float32)
    w, scales = _int8_weights(rng, 576, 96, block)
    got = np.asarray(matmul_w8a8(x, w, scales))
    want = np.asarray(ref_quant_matmul(x, w, scales))
    np.testing.assert_allclose(got, want, atol=0.02 * float(np.abs(want).max()))
    for rows in (1, 3):
        np.testing.assert_array_equal(np.asarray(matmul_w8a8(x[:rows], w, scales)), got[:rows])


def test_w8a8_projections_of_one_input_share_a_loop_with_the_same_bits():
    """q/k/v and gate/up run as one block loop: each output is bitwise its own call's."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((2, 5, 576)), jnp.float32)
    weights = [_int8_weights(rng, 576, n, 64) for n in (576, 192, 192)]
    together = jax.jit(matmul_w8a8_many)(x, weights)
    for (w, scales), got in zip(weights, together, strict=True):
        np.testing.assert_array_equal(
            np.asarray(got), np.asarray(jax.jit(matmul_w8a8)(x, w, scales))
        )
    with pytest.raises(ValueError, match="block count"):
        matmul_w8a8_many(x, [weights[0], _int8_weights(rng, 576, 64, 32)])


@pytest.mark.parametrize(
    ("m", "k", "n", "blocks"), [(2, 64, 128, None), (16, 320, 256, (8, 128, 160))]
)
def test_int4_matmul_matches_reference(m, k, n, blocks):
    rng = np.random.default_rng(k + n)
    x = jnp.asarray(rng.standard_normal((3, m, k)), jnp.float32)  # leading dims flatten
    packed = pack_int4(jnp.asarray(rng.integers(-8, 8, size=(k, n)), jnp.int32))
    scales = jnp.asarray(rng.uniform(0.01, 0.1, size=(k // 32, n)), jnp.float32)
    got = quant_matmul_int4(
        x, packed, scales, blocks=blocks, interpret=True, out=_poison((3, m, n))
    )
    want = ref_quant_matmul_int4(x, packed, scales)
    assert got.shape == (3, m, n) and not np.isnan(np.asarray(got)).any()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))


def test_quant_matmul_refuses_mismatched_scales():
    w, scales = _int8_weights(np.random.default_rng(0), 64, 32)
    with pytest.raises(ValueError, match="scales"):
        quant_matmul(jnp.ones((2, 64)), w, scales[:, :-1], interpret=True)
    with pytest.raises(ValueError, match="scales"):  # neither 32- nor 64-value blocks
        quant_matmul(jnp.ones((2, 64)), w, jnp.concatenate([scales] * 2), interpret=True)
    with pytest.raises(ValueError, match="uint8"):
        quant_matmul_int4(jnp.ones((2, 64)), w[:32], scales, interpret=True)


@pytest.mark.parametrize(
    ("rows", "vocab", "block_v"), [(3, 100, None), (2, 4096, 1024), (4, 1000, 32)]
)
def test_bitmask_matches_reference(rows, vocab, block_v):
    rng = np.random.default_rng(vocab)
    logits = jnp.asarray(rng.standard_normal((rows, vocab)) * 3 + 0.5, jnp.float32)
    words = jnp.asarray(rng.integers(-(2**31), 2**31, size=(rows, -(-vocab // 32))), jnp.int32)
    inv_t = jnp.asarray(rng.uniform(0.5, 2.0, rows), jnp.float32)
    got = apply_bitmask(
        logits, words, inv_t, block_v=block_v, interpret=True, out=_poison(logits.shape)
    )
    want = ref_apply_bitmask(logits, words, inv_t)
    assert not np.isnan(np.asarray(got)).any()
    np.testing.assert_array_equal(got, want)  # a select and one multiply: bitwise equal
    allowed = np.isfinite(np.asarray(want))
    assert 0.3 < allowed.mean() < 0.7  # random words: about half the tokens pass
