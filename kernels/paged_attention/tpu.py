"""TPU decode attention: one query per row, K/V pages streamed from HBM (see `tpu_pages`).

Grid `(rows, kv_heads)`, both parallel. A program holds the query heads of one kv head (padded
to a multiple of 8 sublanes) and walks the key blocks of its row that hold visible keys (a
sliding window skips the blocks behind it); layer, window, lengths and the flattened page table
arrive as scalar prefetch, so block bounds and page ids are SMEM scalars.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from jaxserve.kernels.online_softmax import NO_WINDOW
from jaxserve.kernels.targets import tpu_budget
from jaxserve.kernels.tpu_pages import (
    PageStream,
    finish,
    initial,
    page_scratch,
    scratch_bytes,
    softmax_step,
    stream_blocks,
    vmem_lanes,
)
from jaxserve.kernels.tuning import tpu_pages_per_block
from jaxserve.kernels.validation import check, check_paged


def _kernel(
    layer_ref, window_ref, lengths_ref, table_ref, q_ref, k_hbm, v_hbm, o_ref, k_buf, v_buf, sems,
    *, scale, softcap, pages_per_row,
):  # fmt: skip
    row, kv_head = pl.program_id(0), pl.program_id(1)
    per_block = k_buf.shape[1] * k_buf.shape[2]
    length, window = lengths_ref[row], window_ref[0]
    pages = PageStream(
        k_hbm, v_hbm, k_buf, v_buf, sems, table_ref,
        row=row, pages_per_row=pages_per_row, layer=layer_ref[0], kv_head=kv_head,
    )  # fmt: skip
    q = q_ref[0, 0].astype(jnp.float32) * jnp.float32(scale)  # [G, D]
    q_pos = jnp.full((q.shape[0], 1), length - 1, jnp.int32)

    def step(carry, k, v, block):
        key_pos = block * per_block + jax.lax.broadcasted_iota(jnp.int32, (1, per_block), 1)
        return softmax_step(
            carry, q, q_pos, k, v, key_pos, kv_len=length, window=window, softcap=softcap
        )

    first = jnp.maximum(length - window, 0) // per_block
    last = (length + per_block - 1) // per_block
    carry = stream_blocks(pages, first, last, step, initial(*q.shape))
    o_ref[0, 0] = finish(carry).astype(o_ref.dtype)


def paged_attention_tpu(
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
    pages_per_block: int | None = None,
    interpret: bool = False,
) -> jax.Array:
    """Decode attention on TPU; the contract of `ref_paged_attention`. `interpret`: run in the
    TPU interpreter (DMAs and semaphores simulated) on any backend."""
    b, h, d = q.shape
    check_paged(h, d, k_pages, v_pages, page_table)
    check(lengths.shape == (b,), f"lengths must be [{b}], got {lengths.shape}")
    kv_heads, page_size = k_pages.shape[1], k_pages.shape[3]
    pages_per_row = page_table.shape[1]
    g = h // kv_heads
    gp = -(-g // 8) * 8
    ppb = pages_per_block or tpu_pages_per_block(page_size, pages_per_row)
    scale = d**-0.5 if scale is None else scale
    window = jnp.int32(NO_WINDOW) if window is None else window
    if not interpret:
        lanes = vmem_lanes(d)
        blocks = 2 * 2 * gp * lanes * 4  # q and out blocks, double-buffered
        scratch = scratch_bytes(ppb, page_size, d, k_pages.dtype.itemsize)
        tpu_budget().check(
            "paged_attention", blocks + scratch, f"{ppb} pages of {page_size} x {d} per block"
        )
    q4 = q.reshape(b, kv_heads, g, d)
    if gp != g:
        q4 = jnp.pad(q4, ((0, 0), (0, 0), (0, gp - g), (0, 0)))
    heads = pl.BlockSpec((1, 1, gp, d), lambda r, k, *_: (r, k, 0, 0))
    hbm = pl.BlockSpec(memory_space=pl.ANY)
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=4,
        grid=(b, kv_heads),
        in_specs=[heads, hbm, hbm],
        out_specs=heads,
        scratch_shapes=page_scratch(ppb, page_size, d, k_pages.dtype),
    )
    kernel = functools.partial(
        _kernel, scale=float(scale), softcap=float(softcap), pages_per_row=pages_per_row
    )
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct(q4.shape, q.dtype),
        grid_spec=grid_spec,
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel")),
        interpret=pltpu.InterpretParams() if interpret else False,
        name="paged_decode_attention_tpu",
    )(
        jnp.reshape(layer, (1,)).astype(jnp.int32),
        jnp.reshape(window, (1,)).astype(jnp.int32),
        lengths.astype(jnp.int32),
        page_table.reshape(-1),
        q4,
        k_pages,
        v_pages,
    )
    return out[:, :, :g].reshape(b, h, d)
