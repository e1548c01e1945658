"""Pallas decode attention over the paged KV cache: one query per row, online softmax over pages.

`paged_attention` runs, by platform: on TPU the kernel of `tpu.py` (pages streamed from HBM
into VMEM); on GPU the kernel below through Triton; with `interpret=True` the kernel below in
Pallas interpret mode (CPU tests).

Grid `(rows, kv_heads)`: each program takes the `q_heads / kv_heads` query heads that share one
kv head (GQA/MQA, padded to 16 rows, Triton's smallest dot), walks only the row's pages that
hold visible keys (a sliding window skips the pages behind it) and writes their output. Under
Triton the cache and page table are pointers into global memory, read one page per iteration;
only the dot operands of a page pass through shared memory.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jaxserve.kernels.online_softmax import NO_WINDOW, attend_pages
from jaxserve.kernels.paged_attention.tpu import paged_attention_tpu
from jaxserve.kernels.targets import gpu_budget
from jaxserve.kernels.validation import check, check_paged, triton_params


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

    q: [B, H, D]; k_pages, v_pages: [L, KH, N, S, D]; layer: [] int32; page_table: [B, P] int32;
    lengths: [B] int32 keys per row (the query's own included; a row of length 0 gives zeros);
    window: [] int32 or None; softcap: attention-logit soft cap (0: none). Returns [B, H, D].
    On TPU the kernel of `tpu.py`, on GPU this one through Triton; `interpret` runs this one in
    interpret mode. `out` (interpret mode): a [B, H, D] buffer the result is written into
    (aliased): tests pass one filled with NaN, so any element the kernel fails to write shows.
    """
    check_paged(q.shape[1], q.shape[2], k_pages, v_pages, page_table)
    args = dict(layer=layer, page_table=page_table, lengths=lengths, scale=scale)
    args.update(window=window, softcap=softcap)
    if interpret:
        return paged_attention_gpu(q, k_pages, v_pages, interpret=True, out=out, **args)
    return jax.lax.platform_dependent(
        tpu=lambda: paged_attention_tpu(q, k_pages, v_pages, **args),
        cuda=lambda: paged_attention_gpu(q, k_pages, v_pages, **args),
        rocm=lambda: paged_attention_gpu(q, k_pages, v_pages, **args),
    )


def paged_attention_gpu(
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
    """The kernel below, through Triton (or interpreted); `paged_attention`'s contract."""
    b, h, d = q.shape
    check_paged(h, d, k_pages, v_pages, page_table)
    check(lengths.shape == (b,), f"lengths must be [{b}], got {lengths.shape}")
    kv_heads, num_pages, page_size = k_pages.shape[1], page_table.shape[1], k_pages.shape[3]
    g = h // kv_heads
    gp = g if interpret else max(16, pl.next_power_of_2(g))
    if not interpret:
        check(page_size >= 16, f"Triton needs pages of at least 16 tokens, got {page_size}")
        # per stage: q, one page of K and V, the page's scores
        staged = 4 * (gp * d + 2 * page_size * d + gp * page_size)
        gpu_budget().check("paged_attention", 2 * staged, f"pages of {page_size} x {d}")
    scale = d**-0.5 if scale is None else scale
    window = jnp.int32(NO_WINDOW) if window is None else window
    keys = b * num_pages * page_size
    cost = pl.CostEstimate(
        flops=4 * b * h * num_pages * page_size * d,
        transcendentals=b * h * num_pages * page_size,
        bytes_accessed=2 * keys * kv_heads * d * k_pages.dtype.itemsize + 2 * q.size * 4,
    )
    whole = pl.no_block_spec
    heads = pl.BlockSpec((1, 1, gp, d), lambda r, k: (r, k, 0, 0))
    q4 = q.reshape(b, kv_heads, g, d)
    args = [
        jnp.reshape(layer, (1,)).astype(jnp.int32),
        jnp.reshape(window, (1,)).astype(jnp.int32),
        lengths.astype(jnp.int32),
        page_table,
        jnp.pad(q4, ((0, 0), (0, 0), (0, gp - g), (0, 0))) if gp != g else q4,
        k_pages,
        v_pages,
    ]
    in_specs = [whole, whole, whole, whole, heads, whole, whole]
    if out is not None:
        args.append(out.reshape(b, kv_heads, g, d).astype(q.dtype))
        in_specs.append(heads)
    result = pl.pallas_call(
        functools.partial(_decode_kernel, scale=float(scale), softcap=float(softcap)),
        out_shape=jax.ShapeDtypeStruct((b, kv_heads, gp, d), q.dtype),
        grid=(b, kv_heads),
        in_specs=in_specs,
        out_specs=heads,
        input_output_aliases={len(args) - 1: 0} if out is not None else {},
        interpret=interpret,
        compiler_params=None if interpret else triton_params(),
        cost_estimate=cost,
        name="paged_decode_attention",
    )(*args)
    return result[:, :, :g].reshape(b, h, d)
