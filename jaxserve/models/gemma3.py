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

from collections.abc import Callable, Mapping
from typing import Any

import jax
from flax import nnx

from jaxserve.config import ModelConfig
from jaxserve.loading.weights import LayerWeights
from jaxserve.models.decoder import Decoder, linear
from jaxserve.models.layers import RMSNorm, attention, rope_neox
from jaxserve.models.lora import LayerLoRA, plain
from jaxserve.runtime.kv_cache import KVCache, TokenLayout

# llama.cpp hard-codes these for Gemma 3 (llama-model.cpp): every 6th layer is global, the
# sliding-window layers use RoPE base 10k.
SWA_PATTERN = 6
LOCAL_ROPE_THETA = 10000.0


class Gemma3Block(nnx.Module):
    """One layer: QK-normed GQA attention with NeoX RoPE, then a GeGLU MLP, both post-normed."""

    def __init__(self, config: ModelConfig, w: LayerWeights) -> None:
        self.config = config
        eps = config.norm_eps
        self.attn_norm = RMSNorm(w["attn_norm"], eps=eps)
        self.q = linear(w, "attn_q", config)
        self.k = linear(w, "attn_k", config)
        self.v = linear(w, "attn_v", config)
        self.q_norm = RMSNorm(w["attn_q_norm"], eps=eps)
        self.k_norm = RMSNorm(w["attn_k_norm"], eps=eps)
        self.o = linear(w, "attn_output", config)
        self.post_attn_norm = RMSNorm(w["post_attention_norm"], eps=eps)
        self.mlp_norm = RMSNorm(w["ffn_norm"], eps=eps)
        self.gate = linear(w, "ffn_gate", config)
        self.up = linear(w, "ffn_up", config)
        self.down = linear(w, "ffn_down", config)
        self.post_mlp_norm = RMSNorm(w["post_ffw_norm"], eps=eps)

    def __call__(
        self,
        x: jax.Array,
        kv: KVCache,
        layout: TokenLayout,
        *,
        layer: jax.Array,
        inv_freq: jax.Array,
        window: jax.Array,
        lora: LayerLoRA | None = None,
    ) -> tuple[jax.Array, KVCache]:
        """x: [B, T, E]; kv: every layer's K/V pages, written in place at `layer`;
        inv_freq: [D/2] this layer's RoPE frequencies; window: [] int32 keys visible behind a query.
        """
        c = self.config
        b, t, _ = x.shape
        p = plain if lora is None else lora  # each projection, with the rows' adapters
        h = self.attn_norm(x)
        q, k, v = p.group(("attn_q", "attn_k", "attn_v"), (self.q, self.k, self.v), h)
        q = self.q_norm(q.reshape(b, t, c.num_heads, c.head_dim))
        k = self.k_norm(k.reshape(b, t, c.num_kv_heads, c.head_dim))
        v = v.reshape(b, t, c.num_kv_heads, c.head_dim)
        q = rope_neox(q, layout.positions, inv_freq)
        k = rope_neox(k, layout.positions, inv_freq)
        kv = kv.write(layer, layout, k, v)
        attn = attention(
            q,
            kv,
            layer=layer,
            page_table=layout.page_table,
            q_positions=layout.positions,
            kv_lens=layout.kv_lens,
            scale=c.attention_scale,
            window=window,
            kernels=c.kernels,
        )
        x = x + self.post_attn_norm(p("attn_output", self.o, attn.reshape(b, t, -1)))
        h = self.mlp_norm(x)
        gate, up = p.group(("ffn_gate", "ffn_up"), (self.gate, self.up), h)
        mlp = p("ffn_down", self.down, jax.nn.gelu(gate, approximate=True) * up)
        x = x + self.post_mlp_norm(mlp)
        return x, kv


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


def layer_tensors(config: ModelConfig, present: Callable[[str], bool]) -> tuple[str, ...]:
    return LAYER_TENSORS


class Gemma3(Decoder):
    """Scaled embedding -> scanned `Gemma3Block`s -> final norm -> tied output head (+ softcap)."""

    BLOCK = Gemma3Block


MODEL = Gemma3


def gguf_config(
    meta: Mapping[str, Any], get: Callable[..., Any], fields: Mapping[str, Any]
) -> dict[str, Any]:
    """As llama.cpp runs Gemma 3 (checked against its logits): NeoX RoPE, norm weights that
    already hold Gemma's (1 + w) offset, q scaled by 1/sqrt(key_length)."""
    return {
        "rope_style": "neox",
        "sliding_window": int(get("attention.sliding_window")),
        "sliding_window_pattern": SWA_PATTERN,
        "rope_theta_local": LOCAL_ROPE_THETA,
        "attention_scale": fields["head_dim"] ** -0.5,
        "embedding_scale": float(fields["hidden_size"]) ** 0.5,
        "final_logit_softcap": float(meta.get("gemma3.final_logit_softcapping", 0.0)),
        "qk_norm": True,
    }
