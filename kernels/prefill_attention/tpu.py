"""TPU chunked-prefill attention: query blocks of each row against its pages, streamed from HBM.

Grid `(rows, kv_heads, query blocks)`. A program takes `block_q` consecutive queries times the
query heads of one kv head, as one `[G * block_q, D]` matrix (so the MXU sees G * block_q rows),
and walks the key blocks from the window start of its first query to its last query. A chunk's
positions are consecutive (`start + t`, as every prefill step lays them out), so each program's
positions and key range follow from the row's start, an SMEM scalar; no position array is a block.
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
from jaxserve.kernels.tuning import tpu_block_q, tpu_pages_per_block
from jaxserve.kernels.validation import check, check_paged


def _kernel(
    layer_ref, window_ref, kv_lens_ref, start_ref, table_ref, q_ref, k_hbm, v_hbm, o_ref,
    k_buf, v_buf, sems, *, scale, softcap, pages_per_row,
):  # fmt: skip
    row, kv_head, qb = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    _, _, g, block_q, d = q_ref.shape
    per_block = k_buf.shape[1] * k_buf.shape[2]
    kv_len, window = kv_lens_ref[row], window_ref[0]
    pages = PageStream(
        k_hbm, v_hbm, k_buf, v_buf, sems, table_ref,
        row=row, pages_per_row=pages_per_row, layer=layer_ref[0], kv_head=kv_head,
    )  # fmt: skip
    lo = start_ref[row] + qb * block_q  # position of this program's first query
    q = q_ref[0, 0].reshape(g * block_q, d).astype(jnp.float32) * jnp.float32(scale)
    q_pos = lo + jax.lax.broadcasted_iota(jnp.int32, (g * block_q, 1), 0) % block_q

    def step(carry, k, v, block):
        key_pos = block * per_block + jax.lax.broadcasted_iota(jnp.int32, (1, per_block), 1)
        return softmax_step(
            carry, q, q_pos, k, v, key_pos, kv_len=kv_len, window=window, softcap=softcap
        )

    first = jnp.maximum(lo - window + 1, 0) // per_block
    last = (jnp.minimum(lo + block_q, kv_len) + per_block - 1) // per_block
    carry = stream_blocks(pages, first, last, step, initial(g * block_q, d))
    o_ref[0, 0] = finish(carry).reshape(g, block_q, d).astype(o_ref.dtype)


def prefill_attention_tpu(
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
    block_q: int | None = None,
    pages_per_block: int | None = None,
    interpret: bool = False,
) -> jax.Array:
    """Chunked-prefill attention on TPU; the contract of `ref_prefill_attention`, for rows whose
    positions are consecutive (`q_positions[r, t] = q_positions[r, 0] + t`). `interpret`: run in
    the TPU interpreter on any backend."""
    b, t, h, d = q.shape
    check_paged(h, d, k_pages, v_pages, page_table)
    check(q_positions.shape == (b, t), f"q_positions must be [{b}, {t}], got {q_positions.shape}")
    check(kv_lens.shape == (b,), f"kv_lens must be [{b}], got {kv_lens.shape}")
    kv_heads, page_size = k_pages.shape[1], k_pages.shape[3]
    pages_per_row = page_table.shape[1]
    g = h // kv_heads
    block_q = block_q or tpu_block_q(t)
    check(t % block_q == 0, f"block_q {block_q} does not divide the chunk length {t}")
    ppb = pages_per_block or tpu_pages_per_block(page_size, pages_per_row)
    scale = d**-0.5 if scale is None else scale
    window = jnp.int32(NO_WINDOW) if window is None else window
    if not interpret:
        lanes = vmem_lanes(d)
        rows = g * block_q
        # q and out blocks double-buffered, the online-softmax state, one block of scores
        blocks = 2 * 2 * rows * lanes * 4 + rows * (lanes + 256) * 4 + rows * ppb * page_size * 4
        scratch = scratch_bytes(ppb, page_size, d, k_pages.dtype.itemsize)
        tpu_budget().check(
            "prefill_attention", blocks + scratch, f"{block_q} queries x {g} heads, {ppb} pages"
        )
    q5 = q.reshape(b, t, kv_heads, g, d).transpose(0, 2, 3, 1, 4)  # [B, KH, G, T, D]
    q_spec = pl.BlockSpec((1, 1, g, block_q, d), lambda r, k, i, *_: (r, k, 0, i, 0))
    hbm = pl.BlockSpec(memory_space=pl.ANY)
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=5,
        grid=(b, kv_heads, t // block_q),
        in_specs=[q_spec, hbm, hbm],
        out_specs=q_spec,
        scratch_shapes=page_scratch(ppb, page_size, d, k_pages.dtype),
    )
    kernel = functools.partial(
        _kernel, scale=float(scale), softcap=float(softcap), pages_per_row=pages_per_row
    )
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct(q5.shape, q.dtype),
        grid_spec=grid_spec,
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")
        ),
        interpret=pltpu.InterpretParams() if interpret else False,
        name="paged_prefill_attention_tpu",
    )(
        jnp.reshape(layer, (1,)).astype(jnp.int32),
        jnp.reshape(window, (1,)).astype(jnp.int32),
        kv_lens.astype(jnp.int32),
        q_positions[:, 0].astype(jnp.int32),
        page_table.reshape(-1),
        q5,
        k_pages,
        v_pages,
    )
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)
