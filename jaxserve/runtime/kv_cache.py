"""Device-side KV cache and the per-token page layout of one step (registered pytrees)."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from jaxserve.config import ModelConfig

# Page 0 is never handed to a request: padded tokens write there, and unused page-table entries
# point there (masked by kv_lens), so padding never touches a live page.
NULL_PAGE = 0


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class KVCache:
    k: jax.Array  # [L, KH, N, S, D] f32: each (layer, kv head, page) is one contiguous [S, D]
    v: jax.Array  # [L, KH, N, S, D] f32

    @classmethod
    def zeros(cls, config: ModelConfig, *, num_pages: int, page_size: int) -> KVCache:
        shape = (config.num_layers, config.num_kv_heads, num_pages, page_size, config.head_dim)
        return cls(k=jnp.zeros(shape, jnp.float32), v=jnp.zeros(shape, jnp.float32))

    @staticmethod
    def bytes_per_page(config: ModelConfig, page_size: int) -> int:
        return 2 * 4 * config.num_layers * page_size * config.num_kv_heads * config.head_dim


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class TokenLayout:
    """Where each token of a step sits: its position and the page slot its K/V is written to."""

    positions: jax.Array  # [B, T] int32
    write_page: jax.Array  # [B, T] int32 (NULL_PAGE for padding tokens)
    write_slot: jax.Array  # [B, T] int32
    page_table: jax.Array  # [B, P] int32
    kv_lens: jax.Array  # [B] int32, cached tokens per row after this step

    @classmethod
    def build(
        cls,
        *,
        start: jax.Array,
        num_new: jax.Array,
        num_tokens: int,
        page_table: jax.Array,
        page_size: int,
    ) -> TokenLayout:
        """start: [B] tokens already cached; num_new: [B] valid tokens this step (<= num_tokens)."""
        offsets = jnp.arange(num_tokens, dtype=jnp.int32)[None, :]
        positions = start[:, None] + offsets  # [B, T]
        valid = offsets < num_new[:, None]
        page_index = jnp.where(valid, positions // page_size, 0)
        pages = jnp.take_along_axis(page_table, page_index, axis=1)
        return cls(
            positions=positions,
            write_page=jnp.where(valid, pages, NULL_PAGE),
            write_slot=positions % page_size,
            page_table=page_table,
            kv_lens=start + num_new,
        )
