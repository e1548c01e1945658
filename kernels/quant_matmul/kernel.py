"""Pallas matmuls of f32 activations by block-quantized weights, dequantized inside the kernel.

Grid `(M / block_m, N / block_n)`; each program walks the input axis in `block_k` steps, turning
one `[block_k, block_n]` weight tile (int8, or int4 unpacked from bytes) into f32 with its
per-32 scales right before the dot. Runs in interpret mode on CPU; TPU/GPU lowering is untested
here (no accelerator was available) and the tiles in `tuning.py` are untuned.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jaxserve.kernels.quant_matmul.reference import BLOCK
from jaxserve.kernels.tuning import quant_blocks
from jaxserve.kernels.validation import check


def _tile(w: jax.Array, scales: jax.Array) -> jax.Array:
    """int8 `[bk, bn]` and scales `[bk // 32, bn]` -> f32 `[bk, bn]`."""
    bk, bn = w.shape
    blocks = w.astype(jnp.float32).reshape(bk // BLOCK, BLOCK, bn)
    return (blocks * scales[:, None, :]).reshape(bk, bn)


def _int8_kernel(x_ref, w_ref, s_ref, *refs, block_k):
    o_ref = refs[-1]  # refs = (o_ref,) or (aliased out buffer, o_ref)

    def body(i, acc):
        x = x_ref[:, pl.ds(i * block_k, block_k)]
        w = w_ref[pl.ds(i * block_k, block_k), :]
        s = s_ref[pl.ds(i * (block_k // BLOCK), block_k // BLOCK), :]
        return acc + jnp.dot(x, _tile(w, s), preferred_element_type=jnp.float32)

    k = x_ref.shape[1]
    acc = jnp.zeros(o_ref.shape, jnp.float32)
    o_ref[...] = jax.lax.fori_loop(0, k // block_k, body, acc).astype(o_ref.dtype)


def _int4_kernel(x_ref, w_ref, s_ref, *refs, block_k):
    o_ref = refs[-1]

    def body(i, acc):
        x = x_ref[:, pl.ds(i * block_k, block_k)]
        packed = w_ref[pl.ds(i * (block_k // 2), block_k // 2), :]  # [bk / 2, bn] uint8
        lo = (packed & 15).astype(jnp.int8) - 8
        hi = (packed >> 4).astype(jnp.int8) - 8
        w = jnp.stack([lo, hi], axis=1).reshape(block_k, packed.shape[1])
        s = s_ref[pl.ds(i * (block_k // BLOCK), block_k // BLOCK), :]
        return acc + jnp.dot(x, _tile(w, s), preferred_element_type=jnp.float32)

    k = x_ref.shape[1]
    acc = jnp.zeros(o_ref.shape, jnp.float32)
    o_ref[...] = jax.lax.fori_loop(0, k // block_k, body, acc).astype(o_ref.dtype)


def _call(kernel, x, w, scales, k, n, bytes_w, interpret, blocks, out):
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    m = x2.shape[0]
    bm, bn, bk = blocks or quant_blocks(m, n, k)
    check(m % bm == 0 and n % bn == 0 and k % bk == 0, f"blocks {bm, bn, bk} vs {m, n, k}")
    check(bk % BLOCK == 0, f"block_k {bk} is not a multiple of {BLOCK}")
    rows_w = w.shape[0]
    out_spec = pl.BlockSpec((bm, bn), lambda i, j: (i, j))
    args = [x2, w, scales]
    in_specs = [
        pl.BlockSpec((bm, k), lambda i, j: (i, 0)),
        pl.BlockSpec((rows_w, bn), lambda i, j: (0, j)),
        pl.BlockSpec((k // BLOCK, bn), lambda i, j: (0, j)),
    ]
    if out is not None:
        args.append(out.reshape(m, n).astype(x.dtype))
        in_specs.append(out_spec)
    result = pl.pallas_call(
        functools.partial(kernel, block_k=bk),
        out_shape=jax.ShapeDtypeStruct((m, n), x.dtype),
        grid=(m // bm, n // bn),
        in_specs=in_specs,
        out_specs=out_spec,
        input_output_aliases={3: 0} if out is not None else {},
        interpret=interpret,
        cost_estimate=pl.CostEstimate(
            flops=2 * m * n * k + 2 * k * n * (m // bm),
            transcendentals=0,
            bytes_accessed=x2.size * 4 + bytes_w + scales.size * 4 + m * n * 4,
        ),
        name=kernel.__name__.strip("_"),
    )(*args)
    return result.reshape(*lead, n)


def quant_matmul(
    x: jax.Array,
    w: jax.Array,
    scales: jax.Array,
    *,
    blocks: tuple[int, int, int] | None = None,
    interpret: bool = False,
    out: jax.Array | None = None,
) -> jax.Array:
    """`x [..., in] @ W` for int8 W `[in, out]` with scales `[in // 32, out]` (f32 result).

    `blocks`: (block_m, block_n, block_k) tiles, default from `tuning.quant_blocks`; `out`: an
    optional `[..., out]` buffer written in place (aliased; tests poison it with NaN).
    """
    k, n = w.shape
    check(w.dtype == jnp.int8, f"w must be int8, got {w.dtype}")
    check(x.shape[-1] == k, f"x has {x.shape[-1]} inputs, w has {k}")
    check(scales.shape == (k // BLOCK, n), f"scales must be {(k // BLOCK, n)}, got {scales.shape}")
    return _call(_int8_kernel, x, w, scales, k, n, w.size, interpret, blocks, out)


def quant_matmul_int4(
    x: jax.Array,
    packed: jax.Array,
    scales: jax.Array,
    *,
    blocks: tuple[int, int, int] | None = None,
    interpret: bool = False,
    out: jax.Array | None = None,
) -> jax.Array:
    """`x [..., in] @ W` for int4 W packed two per byte `[in // 2, out]` (see `pack_int4`);
    `blocks` and `out` as in `quant_matmul`."""
    half, n = packed.shape
    k = 2 * half
    check(packed.dtype == jnp.uint8, f"packed weights must be uint8, got {packed.dtype}")
    check(x.shape[-1] == k, f"x has {x.shape[-1]} inputs, packed w has {k}")
    check(scales.shape == (k // BLOCK, n), f"scales must be {(k // BLOCK, n)}, got {scales.shape}")
    return _call(_int4_kernel, x, packed, scales, k, n, packed.size, interpret, blocks, out)
