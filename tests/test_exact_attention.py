"""The batch-invariant attention: close to float attention, and a query's output is bitwise the
same whatever else is computed with it (rows, chunk length, page bucket, decode or prefill)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxserve.kernels.paged_attention import ref_attention
from jaxserve.kernels.paged_attention.exact import exact_attention, pack

H, KH, D, S, N, L = 6, 2, 64, 16, 40, 2  # heads, kv heads, dim, page size, pool, layers
PAGES = [7, 3, 12, 30, 21, 9]  # the row under test: 6 pages, 96 key slots
LENGTH = 90  # keys cached for it


def cache(seed: int = 0) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(seed)
    k = rng.standard_normal((L, KH, N, S, D)).astype(np.float32) * 2.0
    v = rng.standard_normal((L, KH, N, S, D)).astype(np.float32)
    k[:, :, 0] = 1e4  # the null page holds garbage: it must never reach an output
    v[:, :, 0] = -1e4
    return jnp.asarray(k), jnp.asarray(v)


K, V = cache()
QUERIES = jnp.asarray(np.random.default_rng(1).standard_normal((LENGTH, H, D)).astype(np.float32))


@jax.jit
def run_exact(q, page_table, q_positions, kv_lens):
    return exact_attention(
        q,
        pack(K),
        pack(V),
        layer=jnp.int32(1),
        page_table=page_table,
        q_positions=q_positions,
        kv_lens=kv_lens,
    )


@jax.jit
def run_float(q, page_table, q_positions, kv_lens):
    return ref_attention(
        q, K, V, layer=jnp.int32(1), page_table=page_table, q_positions=q_positions, kv_lens=kv_lens
    )


def query_output(rows: int, chunk: int, width: int, position: int, run=run_exact) -> np.ndarray:
    """The output for QUERIES[position] of the row under test, computed as the last query of a
    chunk of `chunk` queries in a batch of `rows` rows with `width`-page tables."""
    rng = np.random.default_rng(rows * 1000 + chunk * 10 + width)
    q = rng.standard_normal((rows, chunk, H, D)).astype(np.float32)
    q[0] = np.asarray(QUERIES[position - chunk + 1 : position + 1])
    table = np.zeros((rows, width), np.int32)
    table[0, : len(PAGES)] = PAGES
    for r in range(1, rows):
        table[r, :width] = rng.integers(1, N, width)
    positions = np.arange(chunk, dtype=np.int32)[None] + position - chunk + 1
    positions = np.repeat(positions, rows, axis=0)
    lens = np.full(rows, position + 1, np.int32)
    lens[1:] = rng.integers(chunk, chunk + 4 * S, rows - 1)
    out = run(*(jnp.asarray(x) for x in (q, table, positions, lens)))
    return np.asarray(out)[0, -1]


@pytest.mark.parametrize(
    ("rows", "chunk", "width"),
    [(1, 1, 8), (3, 1, 16), (32, 1, 8), (1, 16, 8), (2, 64, 16), (4, 32, 64), (1, 80, 8)],
)
def test_a_query_gets_the_same_bits_in_any_batch_chunk_or_page_bucket(rows, chunk, width):
    position = LENGTH - 1
    alone = query_output(2, 1, 8, position)  # one decode step beside one other row
    np.testing.assert_array_equal(query_output(rows, chunk, width, position), alone)


def test_float_attention_fails_that_check():
    """The comparison above can fail: float attention decodes and prefills with other roundings."""
    position = LENGTH - 1
    decoded = query_output(2, 1, 8, position, run=run_float)
    prefilled = query_output(1, 16, 8, position, run=run_float)
    np.testing.assert_allclose(decoded, prefilled, atol=1e-5)
    assert not np.array_equal(decoded, prefilled)


def dequantized(x: jax.Array) -> jax.Array:
    q, scale = pack(x)
    blocks = q.reshape(*scale.shape, -1).astype(jnp.float32) * scale[..., None]
    return blocks.reshape(x.shape)


def test_exact_attention_stays_close_to_float_attention():
    position = np.arange(LENGTH, dtype=np.int32)[None]
    table = jnp.asarray(np.array([PAGES], np.int32))
    args = dict(layer=jnp.int32(1), page_table=table, q_positions=jnp.asarray(position))
    lens = jnp.asarray([LENGTH], jnp.int32)
    q = QUERIES[None]
    ours = np.asarray(run_exact(q, table, jnp.asarray(position), lens))
    assert np.isfinite(ours).all()
    # Over the cache as stored (q8_0 blocks), the integer dots with 15-bit queries and
    # probabilities are as close as an f16 computation.
    stored = np.asarray(ref_attention(q, dequantized(K), dequantized(V), kv_lens=lens, **args))
    np.testing.assert_allclose(ours, stored, atol=2e-3)
    assert np.abs(ours - stored).mean() < 1e-4
    # Against the float cache, the int8 blocks add a q8_0 cache's rounding (~1% of a block's
    # largest entry; these keys, 2x a standard normal, make scores of up to ~30).
    ref = np.asarray(ref_attention(q, K, V, kv_lens=lens, **args))
    err = np.abs(ours - ref)
    assert err.max() < 5e-2 and err.mean() < 5e-3
    assert not np.array_equal(ours, ref)  # quantized, not float: close, not equal
