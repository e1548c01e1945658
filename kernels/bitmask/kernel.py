"""Pallas token-bitmask application, fused with the temperature scale.

Grid `(rows, V / block_v)`: each program unpacks `block_v / 32` mask words into lanes and selects
(never multiplies) so a masked token is exactly -inf. The vocabulary is padded to a multiple of
`block_v` and sliced back. On GPU it runs through Triton; on TPU the XLA reference runs instead
(the unpack spreads each 32-bit word over 32 lanes, a relayout Mosaic does not lower, and XLA
fuses unpack and select into one pass anyway); `interpret=True` runs the kernel on CPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jaxserve.kernels.bitmask.reference import ref_apply_bitmask
from jaxserve.kernels.tuning import bitmask_block_v
from jaxserve.kernels.validation import check, triton_params


def _bitmask_kernel(logits_ref, words_ref, inv_t_ref, *refs):
    o_ref = refs[-1]  # refs = (o_ref,) or (aliased out buffer, o_ref)
    words = words_ref[...]  # [1, block_v / 32]
    shifts = jax.lax.broadcasted_iota(jnp.int32, (1, words.shape[1], 32), 2)
    bits = ((words[:, :, None] >> shifts) & 1).reshape(o_ref.shape)
    scaled = logits_ref[...] * inv_t_ref[...]
    o_ref[...] = jnp.where(bits != 0, scaled, -jnp.inf).astype(o_ref.dtype)


def apply_bitmask(
    logits: jax.Array,
    bitmask: jax.Array,
    inv_temperature: jax.Array | None = None,
    *,
    block_v: int | None = None,
    interpret: bool = False,
    out: jax.Array | None = None,
) -> jax.Array:
    """Same contract as `ref_apply_bitmask`: logits [B, V], bitmask [B, ceil(V / 32)] int32;
    `out`: an optional [B, V] buffer written in place (aliased; tests poison it with NaN)."""
    b, v = logits.shape
    words = -(-v // 32)
    check(bitmask.shape == (b, words), f"bitmask must be {(b, words)}, got {bitmask.shape}")
    check(bitmask.dtype == jnp.int32, f"bitmask must be int32, got {bitmask.dtype}")
    if interpret:
        return _call(logits, bitmask, inv_temperature, block_v, out, interpret=True)
    gpu = lambda: _call(logits, bitmask, inv_temperature, block_v, None, interpret=False)  # noqa: E731
    return jax.lax.platform_dependent(
        tpu=lambda: ref_apply_bitmask(logits, bitmask, inv_temperature), cuda=gpu, rocm=gpu
    )


def _call(logits, bitmask, inv_temperature, block_v, out, *, interpret):
    b, v = logits.shape
    words = -(-v // 32)
    padded = words * 32
    block_v = block_v or bitmask_block_v(padded)
    check(block_v % 32 == 0 and padded % block_v == 0, f"block_v {block_v} vs vocab {padded}")
    inv_t = jnp.ones((b,), logits.dtype) if inv_temperature is None else inv_temperature
    x = jnp.pad(logits, ((0, 0), (0, padded - v)))
    column = pl.BlockSpec((1, block_v), lambda r, j: (r, j))
    args = [x, bitmask, inv_t.reshape(b, 1).astype(logits.dtype)]
    in_specs = [
        column,
        pl.BlockSpec((1, block_v // 32), lambda r, j: (r, j)),
        pl.BlockSpec((1, 1), lambda r, j: (r, 0)),
    ]
    if out is not None:
        args.append(jnp.pad(out.astype(logits.dtype), ((0, 0), (0, padded - v))))
        in_specs.append(column)
    result = pl.pallas_call(
        _bitmask_kernel,
        out_shape=jax.ShapeDtypeStruct((b, padded), logits.dtype),
        grid=(b, padded // block_v),
        in_specs=in_specs,
        out_specs=column,
        input_output_aliases={3: 0} if out is not None else {},
        interpret=interpret,
        compiler_params=None if interpret else triton_params(),
        cost_estimate=pl.CostEstimate(
            flops=3 * b * padded, transcendentals=0, bytes_accessed=b * padded * 8 + b * words * 4
        ),
        name="apply_bitmask",
    )(*args)
    return result[:, :v]
