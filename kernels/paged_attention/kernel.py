"""Pallas decode attention over the paged KV cache: one query per row, online softmax over pages.

Grid `(rows, kv_heads)`: each program takes the `q_heads / kv_heads` query heads that share one
kv head (GQA/MQA), walks only the row's pages that hold visible keys (a sliding window skips the
pages behind it) and writes their output. The cache and page table are passed whole and read page
by page inside the kernel; runs in interpret mode on CPU. Lowering on TPU (Mosaic) and GPU
(Triton) is untested here (no accelerator was available); on TPU a cache larger than VMEM would
need `pl.ANY` memory and explicit page DMAs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jaxserve.kernels.online_softmax import attend_pages
from jaxserve.kernels.validation import check, check_paged

NO_WINDOW = 2**30


def _decode_kernel(
    layer_ref, window_ref, lengths_ref, table_ref, q_ref, k_ref, v_ref, *refs, scale, softcap
):
    o_ref = refs[-1]  # refs = (o_ref,) or (aliased out buffer, o_ref)
    row, kv_head = pl.program_id(0), pl.program_id(1)
    page_size = k_ref.shape[3]
    length = lengths_ref[row]
    window = window_ref[0]
    q = q_ref[0, 0]  # [G, D]
    q_pos = jnp.full((q.shape[0],), length - 1, jnp.int32)
    out = attend_pages(
        q,
        q_pos,
        k_ref=k_ref,
        v_ref=v_ref,
        table_ref=table_ref,
        row=row,
        layer=layer_ref[0],
        kv_head=kv_head,
        kv_len=length,
        window=window,
        first_page=jnp.maximum(length - window, 0) // page_size,
        last_page=(length + page_size - 1) // page_size,
        scale=scale,
        softcap=softcap,
    )
    o_ref[0, 0] = out.astype(o_ref.dtype)


def paged_attention(
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
    interpret: bool = False,
    out: jax.Array | None = None,
) -> jax.Array:
    """Decode attention; same contract as `ref_paged_attention`.

    `out`: an optional [B, H, D] buffer the result is written into (aliased): tests pass one
    filled with NaN, so any element the kernel fails to write shows.

    q: [B, H, D]; k_pages, v_pages: [L, KH, N, S, D]; layer: [] int32; page_table: [B, P] int32;
    lengths: [B] int32 keys per row (the query's own included; a row of length 0 gives zeros);
    window: [] int32 or None; softcap: attention-logit soft cap (0: none). Returns [B, H, D].
    """
    b, h, d = q.shape
    check_paged(h, d, k_pages, v_pages, page_table)
    check(lengths.shape == (b,), f"lengths must be [{b}], got {lengths.shape}")
    kv_heads, num_pages, page_size = k_pages.shape[1], page_table.shape[1], k_pages.shape[3]
    g = h // kv_heads
    scale = d**-0.5 if scale is None else scale
    window = jnp.int32(NO_WINDOW) if window is None else window
    keys = b * num_pages * page_size
    cost = pl.CostEstimate(
        flops=4 * b * h * num_pages * page_size * d,
        transcendentals=b * h * num_pages * page_size,
        bytes_accessed=2 * keys * kv_heads * d * k_pages.dtype.itemsize + 2 * q.size * 4,
    )
    whole = pl.no_block_spec
    heads = pl.BlockSpec((1, 1, g, d), lambda r, k: (r, k, 0, 0))
    args = [
        jnp.reshape(layer, (1,)).astype(jnp.int32),
        jnp.reshape(window, (1,)).astype(jnp.int32),
        lengths.astype(jnp.int32),
        page_table,
        q.reshape(b, kv_heads, g, d),
        k_pages,
        v_pages,
    ]
    in_specs = [whole, whole, whole, whole, heads, whole, whole]
    if out is not None:
        args.append(out.reshape(b, kv_heads, g, d).astype(q.dtype))
        in_specs.append(heads)
    result = pl.pallas_call(
        functools.partial(_decode_kernel, scale=float(scale), softcap=float(softcap)),
        out_shape=jax.ShapeDtypeStruct((b, kv_heads, g, d), q.dtype),
        grid=(b, kv_heads),
        in_specs=in_specs,
        out_specs=heads,
        input_output_aliases={len(args) - 1: 0} if out is not None else {},
        interpret=interpret,
        cost_estimate=cost,
        name="paged_decode_attention",
    )(*args)
    return result.reshape(b, h, d)
