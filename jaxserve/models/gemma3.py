"""Gemma 3 decoder as Flax NNX modules over a paged KV cache, numerics as llama.cpp runs the GGUF.

Differences from Llama: embeddings scaled by sqrt(hidden); RMSNorm on q and k per head; RMSNorm
after attention and after the MLP (before each residual add); GeGLU MLP (tanh GELU); NeoX RoPE;
interleaved sliding-window (local) and global layers with their own RoPE bases; optional final
logit soft-capping. The GGUF's norm weights already include Gemma's `1 + w` offset (llama.cpp's
converter adds it), so the plain `RMSNorm` applies them as they are.

Local and global layers run the same code in one `lax.scan`: each layer's window and RoPE
frequencies come in as scanned arrays. Every layer keeps its keys in the shared paged cache; a
local layer only masks keys outside its window.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxserve.config import ModelConfig
from jaxserve.kv_cache import TokenLayout
from jaxserve.models.layers import Embedding, Linear, RMSNorm, paged_attention, rope_neox
from jaxserve.weights import LayerWeights, ModelWeights

# The window a global layer is given: larger than any position.
NO_WINDOW = 2**30


class Gemma3Block(nnx.Module):
    """One layer: QK-normed GQA attention with NeoX RoPE, then a GeGLU MLP, both post-normed."""

    def __init__(self, config: ModelConfig, w: LayerWeights) -> None:
        self.config = config
        eps = config.norm_eps
        self.attn_norm = RMSNorm(w["attn_norm"], eps=eps)
        self.q = Linear(w["attn_q"])
        self.k = Linear(w["attn_k"])
        self.v = Linear(w["attn_v"])
        self.q_norm = RMSNorm(w["attn_q_norm"], eps=eps)
        self.k_norm = RMSNorm(w["attn_k_norm"], eps=eps)
        self.o = Linear(w["attn_output"])
        self.post_attn_norm = RMSNorm(w["post_attention_norm"], eps=eps)
        self.mlp_norm = RMSNorm(w["ffn_norm"], eps=eps)
        self.gate = Linear(w["ffn_gate"])
        self.up = Linear(w["ffn_up"])
        self.down = Linear(w["ffn_down"])
        self.post_mlp_norm = RMSNorm(w["post_ffw_norm"], eps=eps)

    def __call__(
        self,
        x: jax.Array,
        kv: tuple[jax.Array, jax.Array],
        layout: TokenLayout,
        *,
        layer: jax.Array,
        inv_freq: jax.Array,
        window: jax.Array,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """x: [B, T, E]; kv: all (K, V) pages [L, KH, N, S, D], updated in place at `layer`;
        inv_freq: [D/2] this layer's RoPE frequencies; window: [] int32 keys visible behind a query.
        """
        c = self.config
        b, t, _ = x.shape
        h = self.attn_norm(x)
        q = self.q_norm(self.q(h).reshape(b, t, c.num_heads, c.head_dim))
        k = self.k_norm(self.k(h).reshape(b, t, c.num_kv_heads, c.head_dim))
        v = self.v(h).reshape(b, t, c.num_kv_heads, c.head_dim)
        q = rope_neox(q, layout.positions, inv_freq)
        k = rope_neox(k, layout.positions, inv_freq)
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
            scale=c.attention_scale,
            window=window,
        )
        x = x + self.post_attn_norm(self.o(attn.reshape(b, t, -1)))
        h = self.mlp_norm(x)
        mlp = self.down(jax.nn.gelu(self.gate(h), approximate=True) * self.up(h))
        x = x + self.post_mlp_norm(mlp)
        return x, (k_all, v_all)


LAYER_TENSORS = (
    "attn_norm",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_q_norm",
    "attn_k_norm",
    "attn_output",
    "post_attention_norm",
    "ffn_norm",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
    "post_ffw_norm",
)


def layer_schedule(config: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer RoPE frequencies [L, D/2] f32 and attention windows [L] int32 (host constants)."""
    local = np.asarray([config.is_local_layer(i) for i in range(config.num_layers)])
    local_theta = config.rope_theta_local or config.rope_theta
    theta = np.where(local, local_theta, config.rope_theta)  # [L]
    exponents = np.arange(0, config.head_dim, 2, dtype=np.float64) / config.head_dim  # [D/2]
    inv_freq = (theta[:, None] ** -exponents[None, :]).astype(np.float32)
    windows = np.where(local, config.sliding_window, NO_WINDOW).astype(np.int32)
    return inv_freq, windows


class Gemma3(nnx.Module):
    """Scaled embedding -> scanned `Gemma3Block`s -> final norm -> tied output head (+ softcap)."""

    def __init__(self, config: ModelConfig, w: ModelWeights) -> None:
        self.config = config
        self.embed = Embedding(w.embedding)
        self.layers = Gemma3Block(config, w.layers)  # every parameter has a leading layer axis
        self.norm = RMSNorm(w.output_norm, eps=config.norm_eps)
        self.head = None if w.output is None else Linear(w.output)

    def hidden(
        self, token_ids: jax.Array, kv: tuple[jax.Array, jax.Array], layout: TokenLayout
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """token_ids: [B, T]; kv: (K, V) [L, KH, N, S, D]. Returns final-normed hidden [B, T, E]."""
        x = self.embed(token_ids) * jnp.float32(self.config.embedding_scale)
        block_def, block_state = nnx.split(self.layers)
        inv_freq, windows = layer_schedule(self.config)

        def body(carry, xs):
            x, kv = carry
            layer_state, layer, inv_freq, window = xs
            block = nnx.merge(block_def, layer_state)
            x, kv = block(x, kv, layout, layer=layer, inv_freq=inv_freq, window=window)
            return (x, kv), None

        layers = jnp.arange(self.config.num_layers, dtype=jnp.int32)
        xs = (block_state, layers, jnp.asarray(inv_freq), jnp.asarray(windows))
        (x, kv), _ = jax.lax.scan(body, (x, kv), xs)
        return self.norm(x), kv

    def logits(self, h: jax.Array) -> jax.Array:
        """h: [..., E] -> logits [..., V] (f32), soft-capped when the config says so."""
        logits = self.embed.attend(h) if self.head is None else self.head(h)
        cap = self.config.final_logit_softcap
        if cap > 0:
            logits = jnp.float32(cap) * jnp.tanh(logits / jnp.float32(cap))
        return logits
