"""Input checks shared by the kernels' public wrappers (shapes and dtypes, at trace time)."""

from __future__ import annotations

import jax


def check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def check_paged(
    q_heads: int, head_dim: int, k_pages: jax.Array, v_pages: jax.Array, page_table: jax.Array
) -> None:
    """K/V pages `[L, KH, N, S, D]` of one shape, a GQA/MQA head ratio, an int32 page table."""
    check(k_pages.ndim == 5, f"k_pages must be [L, KH, N, S, D], got {k_pages.shape}")
    check(k_pages.shape == v_pages.shape, f"k/v pages differ: {k_pages.shape} {v_pages.shape}")
    check(k_pages.shape[4] == head_dim, f"head_dim {head_dim} != cache {k_pages.shape[4]}")
    kv_heads = k_pages.shape[1]
    check(q_heads % kv_heads == 0, f"{q_heads} query heads are not a multiple of {kv_heads}")
    check(page_table.ndim == 2, f"page_table must be [B, P], got {page_table.shape}")
    check(page_table.dtype == jax.numpy.int32, f"page_table must be int32, got {page_table.dtype}")


def triton_params():
    """The compiler parameters that select Pallas's Triton backend on GPU (not Mosaic GPU)."""
    from jax.experimental.pallas import triton as pltriton

    return pltriton.CompilerParams(num_warps=4, num_stages=2)
