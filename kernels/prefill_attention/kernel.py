"""Pallas chunked-prefill attention: a chunk of new tokens per row attends, causally, to the
row's cached prefix pages and to itself (its own K/V already written to the cache), ragged across
rows.

`prefill_attention` runs, by platform: on TPU the kernel of `tpu.py` (pages streamed from HBM
into VMEM); on GPU the kernel below through Triton; with `interpret=True` the kernel below in
Pallas interpret mode (CPU tests).

Grid `(rows, kv_heads, query blocks)`: a program takes `block_q` queries times the query heads of
one kv head (padded to a power of two for Triton) and walks only the pages that hold keys some of
its queries can see (from the window start of its first query to its last query), one page per
iteration read straight from global memory.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jaxserve.kernels.online_softmax import NO_WINDOW, attend_pages
from jaxserve.kernels.prefill_attention.tpu import prefill_attention_tpu
from jaxserve.kernels.targets import gpu_budget
from jaxserve.kernels.tuning import prefill_block_q
from jaxserve.kernels.validation import check, check_paged, triton_params


def _prefill_kernel(
    layer_ref,
    window_ref,
    kv_lens_ref,
    table_ref,
    pos_ref,
    q_ref,
    k_ref,
    v_ref,
    *refs,
    scale,
    softcap,
):
    o_ref = refs[-1]  # refs = (o_ref,) or (aliased out buffer, o_ref)
    row, kv_head = pl.program_id(0), pl.program_id(1)
    page_size = k_ref.shape[3]
    _, _, block_q, g, d = q_ref.shape
    kv_len = kv_lens_ref[row]
    window = window_ref[0]
    pos = pos_ref[0]  # [block_q]
    q = q_ref[0, 0].reshape(block_q * g, d)
    q_pos = jnp.repeat(pos, g)
    last = jnp.minimum(jnp.max(pos) + 1, kv_len)
    out = attend_pages(
        q,
        q_pos,
        k_ref=k_ref,
        v_ref=v_ref,
        table_ref=table_ref,
        row=row,
        layer=layer_ref[0],
        kv_head=kv_head,
        kv_len=kv_len,
        window=window,
        first_page=jnp.maximum(jnp.min(pos) - window + 1, 0) // page_size,
        last_page=(last + page_size - 1) // page_size,
        scale=scale,
        softcap=softcap,
    )
    o_ref[0, 0] = out.reshape(block_q, g, d).astype(o_ref.dtype)


def prefill_attention(
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
    interpret: bool = False,
    out: jax.Array | None = None,
) -> jax.Array:
    """Chunked-prefill attention; same contract as `ref_prefill_attention`.

    q: [B, T, H, D] at q_positions [B, T] (int32); k_pages, v_pages: [L, KH, N, S, D];
    page_table: [B, P] int32; kv_lens: [B] keys cached per row including this chunk; window: []
    int32 or None. Queries past a row's length (padding) see keys up to `kv_lens` only.
    Returns [B, T, H, D]. On TPU the kernel of `tpu.py` (rows' positions must be consecutive,
    as the prefill step lays them out), on GPU this one through Triton; `interpret` runs this
    one in interpret mode, `out` then an optional [B, T, H, D] buffer written in place
    (aliased; tests poison it with NaN).
    """
    check_paged(q.shape[2], q.shape[3], k_pages, v_pages, page_table)
    t = q.shape[1]
    check(block_q is None or t % block_q == 0, f"block_q {block_q} does not divide the chunk {t}")
    args = dict(layer=layer, page_table=page_table, q_positions=q_positions, kv_lens=kv_lens)
    args.update(scale=scale, window=window, softcap=softcap)
    if interpret:
        return prefill_attention_gpu(
            q, k_pages, v_pages, block_q=block_q, interpret=True, out=out, **args
        )
    return jax.lax.platform_dependent(
        tpu=lambda: prefill_attention_tpu(q, k_pages, v_pages, **args),
        cuda=lambda: prefill_attention_gpu(q, k_pages, v_pages, block_q=block_q, **args),
        rocm=lambda: prefill_attention_gpu(q, k_pages, v_pages, block_q=block_q, **args),
    )


def prefill_attention_gpu(
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
    interpret: bool = False,
    out: jax.Array | None = None,
) -> jax.Array:
    """The kernel below, through Triton (or interpreted); `prefill_attention`'s contract."""
    b, t, h, d = q.shape
    check_paged(h, d, k_pages, v_pages, page_table)
    check(q_positions.shape == (b, t), f"q_positions must be [{b}, {t}], got {q_positions.shape}")
    check(kv_lens.shape == (b,), f"kv_lens must be [{b}], got {kv_lens.shape}")
    kv_heads, num_pages, page_size = k_pages.shape[1], page_table.shape[1], k_pages.shape[3]
    g = h // kv_heads
    gp = g if interpret else pl.next_power_of_2(g)

    def staged(bq: int) -> int:  # two stages of: queries, a page of K and V, its scores
        return 2 * 4 * (bq * gp * d + 2 * page_size * d + bq * gp * page_size)

    if interpret:
        block_q = block_q or prefill_block_q(t)
    else:
        check(page_size >= 16, f"Triton needs pages of at least 16 tokens, got {page_size}")
        budget = gpu_budget()
        block_q = block_q or prefill_block_q(t, fits=lambda bq: staged(bq) <= budget.nbytes)
        detail = f"{block_q} queries x {gp} heads, pages of {page_size} x {d}"
        budget.check("prefill_attention", staged(block_q), detail)
    check(t % block_q == 0, f"block_q {block_q} does not divide the chunk length {t}")
    scale = d**-0.5 if scale is None else scale
    window = jnp.int32(NO_WINDOW) if window is None else window
    keys = num_pages * page_size
    cost = pl.CostEstimate(
        flops=4 * b * t * h * keys * d,
        transcendentals=b * t * h * keys,
        bytes_accessed=2 * b * keys * kv_heads * d * k_pages.dtype.itemsize + 2 * q.size * 4,
    )
    whole = pl.no_block_spec
    q_spec = pl.BlockSpec((1, 1, block_q, gp, d), lambda r, k, i: (r, k, i, 0, 0))
    pos_spec = pl.BlockSpec((1, block_q), lambda r, k, i: (r, i))
    q5 = q.reshape(b, t, kv_heads, g, d).transpose(0, 2, 1, 3, 4)  # [B, KH, T, G, D]
    if gp != g:
        q5 = jnp.pad(q5, ((0, 0), (0, 0), (0, 0), (0, gp - g), (0, 0)))
    args = [
        jnp.reshape(layer, (1,)).astype(jnp.int32),
        jnp.reshape(window, (1,)).astype(jnp.int32),
        kv_lens.astype(jnp.int32),
        page_table,
        q_positions.astype(jnp.int32),
        q5,
        k_pages,
        v_pages,
    ]
    in_specs = [whole, whole, whole, whole, pos_spec, q_spec, whole, whole]
    if out is not None:
        args.append(out.reshape(b, t, kv_heads, g, d).transpose(0, 2, 1, 3, 4).astype(q.dtype))
        in_specs.append(q_spec)
    result = pl.pallas_call(
        functools.partial(_prefill_kernel, scale=float(scale), softcap=float(softcap)),
        out_shape=jax.ShapeDtypeStruct(q5.shape, q.dtype),
        grid=(b, kv_heads, t // block_q),
        in_specs=in_specs,
        out_specs=q_spec,
        input_output_aliases={len(args) - 1: 0} if out is not None else {},
        interpret=interpret,
        compiler_params=None if interpret else triton_params(),
        cost_estimate=cost,
        name="paged_prefill_attention",
    )(*args)
    return result[:, :, :, :g].transpose(0, 2, 1, 3, 4).reshape(b, t, h, d)
