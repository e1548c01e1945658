"""Device-side KV cache and the per-token page layout of one step (registered pytrees)."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from jaxserve.config import ModelConfig
from jaxserve.kernels.paged_attention.exact import block_size, pack

# Page 0 is never handed to a request: padded tokens write there, and unused page-table entries
# point there (masked by kv_lens), so padding never touches a live page.
NULL_PAGE = 0
COPY_PAIRS = 16  # page copies per device call (one compiled shape)


def kv_format_for(weights: str, kernels: str) -> str:
    """The cache format the engine keeps for a weight format and kernel mode: int8 weights on
    the reference path cache int8 blocks (q8_0) the batch-invariant attention multiplies,
    bf16 weights cache bf16, anything else f32."""
    if weights == "int8" and kernels == "reference":
        return "q8_0"
    return "bf16" if weights == "bf16" else "f32"


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class KVCache:
    """Per layer K and V pages, in one of two formats (`ModelConfig.kv_format`):

    - "f32" / "bf16": `k`, `v` are the values (the Pallas kernels and float weights read them;
      bf16 with bf16 weights, the accelerator default);
    - "q8_0": each cached key / value vector is stored once, when written, as int8 blocks
      of 32 values with one f32 scale each (llama.cpp's q8_0 KV cache), which
      `exact_attention` multiplies with integer dots: `k`, `v` hold the int8 values,
      `k_scale`, `v_scale` the scales of each (layer, kv head, page, slot). A little over a
      quarter of the bytes of f32, and nothing re-quantized per step.
    """

    k: jax.Array  # [L, KH, N, S, D] f32 / bf16 / int8; one row per (l, kh, page)
    v: jax.Array
    k_scale: jax.Array | None = None  # [L, KH, N, S, D / 32] f32
    v_scale: jax.Array | None = None

    @property
    def is_quantized(self) -> bool:
        return self.k_scale is not None

    @classmethod
    def zeros(cls, config: ModelConfig, *, num_pages: int, page_size: int) -> KVCache:
        shape = (config.num_layers, config.num_kv_heads, num_pages, page_size, config.head_dim)
        if config.kv_format in ("f32", "bf16"):
            dtype = jnp.float32 if config.kv_format == "f32" else jnp.bfloat16
            return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype))
        parts = [jnp.zeros(shape, jnp.int8) for _ in range(2)]
        blocks = (*shape[:-1], config.head_dim // block_size(config.head_dim))
        scales = [jnp.ones(blocks, jnp.float32) for _ in range(2)]
        return cls(*parts, *scales)

    @staticmethod
    def bytes_per_page(config: ModelConfig, page_size: int) -> int:
        d = config.head_dim
        if config.kv_format in ("f32", "bf16"):
            pair = 2 * d * (4 if config.kv_format == "f32" else 2)
        else:  # int8 keys and values and their f32 block scales
            pair = 2 * (d + 4 * (d // block_size(d)))
        return config.num_layers * page_size * config.num_kv_heads * pair

    def write(self, layer: jax.Array, layout: TokenLayout, k: jax.Array, v: jax.Array) -> KVCache:
        """Store k, v [B, T, KH, D] (f32) at `layer`, in each token's (page, slot)."""
        at = (layer, slice(None), layout.write_page, layout.write_slot)
        if not self.is_quantized:
            dtype = self.k.dtype
            return KVCache(
                k=self.k.at[at].set(k.astype(dtype)), v=self.v.at[at].set(v.astype(dtype))
            )
        (k, k_scale), (v, v_scale) = pack(k), pack(v)
        return KVCache(
            k=self.k.at[at].set(k),
            v=self.v.at[at].set(v),
            k_scale=self.k_scale.at[at].set(k_scale),
            v_scale=self.v_scale.at[at].set(v_scale),
        )


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
