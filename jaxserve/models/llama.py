"""Llama-family decoder (Llama 2/3, SmolLM, ...) as Flax NNX modules over a paged KV cache.

The layers are one `LlamaBlock` whose parameters are stacked over a leading layer axis; `Llama`
runs them with `lax.scan`, carrying the whole KV cache so each layer updates its pages in place.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxserve.config import ModelConfig
from jaxserve.kv_cache import TokenLayout
from jaxserve.models.layers import Embedding, Linear, RMSNorm, paged_attention, rope_interleaved
from jaxserve.weights import LayerWeights, ModelWeights


class LlamaBlock(nnx.Module):
    """One pre-norm transformer layer: GQA attention with RoPE, then a SwiGLU MLP."""

    def __init__(self, config: ModelConfig, w: LayerWeights) -> None:
        self.config = config
        self.attn_norm = RMSNorm(w["attn_norm"], eps=config.norm_eps)
        self.q = Linear(w["attn_q"])
        self.k = Linear(w["attn_k"])
        self.v = Linear(w["attn_v"])
        self.o = Linear(w["attn_output"])
        self.mlp_norm = RMSNorm(w["ffn_norm"], eps=config.norm_eps)
        self.gate = Linear(w["ffn_gate"])
        self.up = Linear(w["ffn_up"])
        self.down = Linear(w["ffn_down"])

    def __call__(
        self, x: jax.Array, kv: tuple[jax.Array, jax.Array], layer: jax.Array, layout: TokenLayout
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """x: [B, T, E]; kv: all (K, V) pages [L, KH, N, S, D], updated in place at `layer`."""
        c = self.config
        b, t, _ = x.shape
        h = self.attn_norm(x)
        q = self.q(h).reshape(b, t, c.num_heads, c.head_dim)
        k = self.k(h).reshape(b, t, c.num_kv_heads, c.head_dim)
        v = self.v(h).reshape(b, t, c.num_kv_heads, c.head_dim)
        q = rope_interleaved(q, layout.positions, c.rope_theta)
        k = rope_interleaved(k, layout.positions, c.rope_theta)
        # Cache layout [L, KH, N, S, D]: the (page, slot) index pair spans [B, T], heads follow.
        k_all = kv[0].at[layer, :, layout.write_page, layout.write_slot].set(k)
        v_all = kv[1].at[layer, :, layout.write_page, layout.write_slot].set(v)
        attn = paged_attention(
            q,
            k_all,
            v_all,
            layer=layer,
            page_table=layout.page_table,
            q_positions=layout.positions,
            kv_lens=layout.kv_lens,
        )
        x = x + self.o(attn.reshape(b, t, -1))
        h = self.mlp_norm(x)
        x = x + self.down(jax.nn.silu(self.gate(h)) * self.up(h))
        return x, (k_all, v_all)


LAYER_TENSORS = (
    "attn_norm",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_norm",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
)


class Llama(nnx.Module):
    """Embedding -> scanned `LlamaBlock`s -> final norm -> (tied) output head."""

    def __init__(self, config: ModelConfig, w: ModelWeights) -> None:
        self.config = config
        self.embed = Embedding(w.embedding)
        self.layers = LlamaBlock(config, w.layers)  # every parameter has a leading layer axis
        self.norm = RMSNorm(w.output_norm, eps=config.norm_eps)
        self.head = None if w.output is None else Linear(w.output)

    def hidden(
        self, token_ids: jax.Array, kv: tuple[jax.Array, jax.Array], layout: TokenLayout
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """token_ids: [B, T]; kv: (K, V) [L, KH, N, S, D]. Returns final-normed hidden [B, T, E]."""
        x = self.embed(token_ids)
        block_def, block_state = nnx.split(self.layers)

        def body(carry, xs):
            x, kv = carry
            layer_state, layer = xs
            x, kv = nnx.merge(block_def, layer_state)(x, kv, layer, layout)
            return (x, kv), None

        layers = jnp.arange(self.config.num_layers, dtype=jnp.int32)
        (x, kv), _ = jax.lax.scan(body, (x, kv), (block_state, layers))
        return self.norm(x), kv

    def logits(self, h: jax.Array) -> jax.Array:
        """h: [..., E] -> logits [..., V] (f32)."""
        return self.embed.attend(h) if self.head is None else self.head(h)
