"""Pallas matmuls of f32 activations by block-quantized weights, dequantized inside the kernel.

Grid `(M / block_m, N / block_n)`; each program walks the input axis in `block_k` steps, turning
one `[block_k, block_n]` weight tile (int8, or int4 unpacked from bytes) into f32 with its
per-block scales right before the dot. On TPU (Mosaic) and GPU (Triton) the rows are padded to the
target's tile and the tiles come from `tuning.quant_blocks` (sized to VMEM / shared memory,
untuned for speed); `interpret=True` runs the same kernel in interpret mode on CPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from jaxserve.kernels.quant_matmul.reference import BLOCKS
from jaxserve.kernels.targets import gpu_budget, tpu_budget
from jaxserve.kernels.tuning import quant_blocks
from jaxserve.kernels.validation import check, triton_params


def _tile(w: jax.Array, scales: jax.Array) -> jax.Array:
    """int8 `[bk, bn]` and scales `[bk // block, bn]` -> f32 `[bk, bn]`."""
    bk, bn = w.shape
    blocks = w.astype(jnp.float32).reshape(scales.shape[0], -1, bn)
    return (blocks * scales[:, None, :]).reshape(bk, bn)


def _int8_kernel(x_ref, w_ref, s_ref, *refs, block_k, block):
    o_ref = refs[-1]  # refs = (o_ref,) or (aliased out buffer, o_ref)

    def body(i, acc):
        x = x_ref[:, pl.ds(i * block_k, block_k)]
        w = w_ref[pl.ds(i * block_k, block_k), :]
        s = s_ref[pl.ds(i * (block_k // block), block_k // block), :]
        return acc + jnp.dot(x, _tile(w, s), preferred_element_type=jnp.float32)

    k = x_ref.shape[1]
    acc = jnp.zeros(o_ref.shape, jnp.float32)
    o_ref[...] = jax.lax.fori_loop(0, k // block_k, body, acc).astype(o_ref.dtype)


def _int4_kernel(x_ref, w_ref, s_ref, *refs, block_k, block):
    o_ref = refs[-1]

    def body(i, acc):
        x = x_ref[:, pl.ds(i * block_k, block_k)]
        packed = w_ref[pl.ds(i * (block_k // 2), block_k // 2), :]  # [bk / 2, bn] uint8
        lo = (packed & 15).astype(jnp.int8) - 8
        hi = (packed >> 4).astype(jnp.int8) - 8
        w = jnp.stack([lo, hi], axis=1).reshape(block_k, packed.shape[1])
        s = s_ref[pl.ds(i * (block_k // block), block_k // block), :]
        return acc + jnp.dot(x, _tile(w, s), preferred_element_type=jnp.float32)

    k = x_ref.shape[1]
    acc = jnp.zeros(o_ref.shape, jnp.float32)
    o_ref[...] = jax.lax.fori_loop(0, k // block_k, body, acc).astype(o_ref.dtype)


def _budget_check(target: str, bm: int, bn: int, bk: int, k: int, w_rows: int, block: int) -> None:
    if target == "tpu":  # x, w, scales and out blocks, each double-buffered
        nbytes = 2 * (bm * k * 4 + w_rows * bn + (k // block) * bn * 4 + bm * bn * 4)
        tpu_budget().check("quant_matmul", nbytes, f"blocks {bm} x {bn}, K {k}")
    elif target == "gpu":  # two stages of an x tile, a weight tile (as f32) and its scales
        nbytes = 2 * 4 * (bm * bk + bk * bn + (bk // block) * bn)
        gpu_budget().check("quant_matmul", nbytes, f"tiles {bm} x {bn} x {bk}")


def _call(kernel, x, w, scales, k, n, bytes_w, target, blocks, out):
    """`target`: "tpu", "gpu" (Triton) or "interpret"; rows are padded to the target's tile."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    m = x2.shape[0]
    interpret = target == "interpret"
    if blocks is None:
        blocks = quant_blocks(m, n, k, target=target)
    bm, bn, bk = blocks
    pad = -m % bm
    if pad:
        check(not interpret, f"blocks {bm, bn, bk} vs {m, n, k}")
        x2 = jnp.pad(x2, ((0, pad), (0, 0)))
    mp = m + pad
    check(n % bn == 0 and k % bk == 0, f"blocks {bm, bn, bk} vs {m, n, k}")
    block = k // scales.shape[0]
    check(bk % block == 0, f"block_k {bk} is not a multiple of {block}")
    rows_w = w.shape[0]
    _budget_check(target, bm, bn, bk, k, rows_w, block)
    out_spec = pl.BlockSpec((bm, bn), lambda i, j: (i, j))
    args = [x2, w, scales]
    in_specs = [
        pl.BlockSpec((bm, k), lambda i, j: (i, 0)),
        pl.BlockSpec((rows_w, bn), lambda i, j: (0, j)),
        pl.BlockSpec((k // block, bn), lambda i, j: (0, j)),
    ]
    if out is not None:
        args.append(out.reshape(m, n).astype(x.dtype))
        in_specs.append(out_spec)
    params = {"tpu": pltpu.CompilerParams(dimension_semantics=("parallel", "parallel"))}
    result = pl.pallas_call(
        functools.partial(kernel, block_k=bk, block=block),
        out_shape=jax.ShapeDtypeStruct((mp, n), x.dtype),
        grid=(mp // bm, n // bn),
        in_specs=in_specs,
        out_specs=out_spec,
        input_output_aliases={3: 0} if out is not None else {},
        interpret=interpret,
        compiler_params=params.get(target, triton_params() if target == "gpu" else None),
        cost_estimate=pl.CostEstimate(
            flops=2 * mp * n * k + 2 * k * n * (mp // bm),
            transcendentals=0,
            bytes_accessed=x2.size * 4 + bytes_w + scales.size * 4 + mp * n * 4,
        ),
        name=kernel.__name__.strip("_"),
    )(*args)
    return result[:m].reshape(*lead, n)


def _dispatch(kernel, x, w, scales, k, n, bytes_w, blocks, interpret, out):
    """Interpret mode on any backend, else the TPU or Triton build by lowering platform."""
    if interpret:
        return _call(kernel, x, w, scales, k, n, bytes_w, "interpret", blocks, out)

    def on(target):
        return lambda: _call(kernel, x, w, scales, k, n, bytes_w, target, blocks, None)

    return jax.lax.platform_dependent(tpu=on("tpu"), cuda=on("gpu"), rocm=on("gpu"))


def _check_scales(scales: jax.Array, k: int, n: int) -> None:
    shapes = [(k // b, n) for b in BLOCKS if k % b == 0]
    check(scales.shape in shapes, f"scales must be one of {shapes}, got {scales.shape}")


def quant_matmul(
    x: jax.Array,
    w: jax.Array,
    scales: jax.Array,
    *,
    blocks: tuple[int, int, int] | None = None,
    interpret: bool = False,
    out: jax.Array | None = None,
) -> jax.Array:
    """`x [..., in] @ W` for int8 W `[in, out]` with scales `[in // block, out]`, blocks of 32
    or 64 (f32 result).

    `blocks`: (block_m, block_n, block_k) tiles, default from `tuning.quant_blocks`; `out`: an
    optional `[..., out]` buffer written in place (aliased; tests poison it with NaN).
    """
    k, n = w.shape
    check(w.dtype == jnp.int8, f"w must be int8, got {w.dtype}")
    check(x.shape[-1] == k, f"x has {x.shape[-1]} inputs, w has {k}")
    _check_scales(scales, k, n)
    return _dispatch(_int8_kernel, x, w, scales, k, n, w.size, blocks, interpret, out)


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
    _check_scales(scales, k, n)
    return _dispatch(_int4_kernel, x, packed, scales, k, n, packed.size, blocks, interpret, out)
