"""Llama-family decoder (Llama 2/3, SmolLM, Mistral; Qwen 2/3 in `qwen.py`) over a paged KV cache.

One `LlamaBlock` covers the family's variants, each switched on by the config: biases on the
q/k/v projections (Qwen2), RMSNorm over each q and k head (Qwen3), scaled RoPE frequencies
(Llama 3), a sliding window on every layer (Mistral).

RoPE layout: llama.cpp's converter permutes the q/k rows of `llama` GGUFs for its interleaved-pair
RoPE, so those run `rope_interleaved`; Hugging Face checkpoints keep the natural order and rotate
halves (`rope_neox`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
from flax import nnx

from jaxserve.config import ModelConfig
from jaxserve.errors import GGUFError
from jaxserve.loading.weights import LayerWeights
from jaxserve.models.decoder import Decoder, linear
from jaxserve.models.layers import RMSNorm, attention, rope_interleaved, rope_neox
from jaxserve.models.lora import LayerLoRA, plain
from jaxserve.runtime.kv_cache import KVCache, TokenLayout


class LlamaBlock(nnx.Module):
    """One pre-norm transformer layer: GQA attention with RoPE, then a SwiGLU MLP."""

    def __init__(self, config: ModelConfig, w: LayerWeights) -> None:
        self.config = config
        eps = config.norm_eps
        self.attn_norm = RMSNorm(w["attn_norm"], eps=eps)
        self.q, self.k, self.v = (
            linear(w, "attn_q", config),
            linear(w, "attn_k", config),
            linear(w, "attn_v", config),
        )
        self.q_norm = RMSNorm(w["attn_q_norm"], eps=eps) if config.qk_norm else None
        self.k_norm = RMSNorm(w["attn_k_norm"], eps=eps) if config.qk_norm else None
        self.o = linear(w, "attn_output", config)
        self.mlp_norm = RMSNorm(w["ffn_norm"], eps=eps)
        self.gate = linear(w, "ffn_gate", config)
        self.up = linear(w, "ffn_up", config)
        self.down = linear(w, "ffn_down", config)

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
        q = q.reshape(b, t, c.num_heads, c.head_dim)
        k = k.reshape(b, t, c.num_kv_heads, c.head_dim)
        v = v.reshape(b, t, c.num_kv_heads, c.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        rope = rope_neox if c.rope_style == "neox" else rope_interleaved
        q = rope(q, layout.positions, inv_freq)
        k = rope(k, layout.positions, inv_freq)
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
        x = x + p("attn_output", self.o, attn.reshape(b, t, -1))
        h = self.mlp_norm(x)
        gate, up = p.group(("ffn_gate", "ffn_up"), (self.gate, self.up), h)
        x = x + p("ffn_down", self.down, jax.nn.silu(gate) * up)
        return x, kv


LINEARS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def layer_tensors(config: ModelConfig, present: Callable[[str], bool]) -> tuple[str, ...]:
    """The per-layer tensors to read: norms, projections, and whichever biases the file has."""
    names = ["attn_norm", "ffn_norm", *LINEARS]
    if config.qk_norm:
        names += ["attn_q_norm", "attn_k_norm"]
    return (*names, *(f"{n}_bias" for n in LINEARS if present(f"{n}_bias")))


class Llama(Decoder):
    """Embedding -> scanned `LlamaBlock`s -> final norm -> (tied) output head."""

    BLOCK = LlamaBlock


MODEL = Llama


def gguf_config(
    meta: Mapping[str, Any], get: Callable[..., Any], fields: Mapping[str, Any]
) -> dict[str, Any]:
    """`llama` GGUFs: interleaved RoPE (permuted q/k rows); a sliding window if one is stated."""
    window = int(get("attention.sliding_window", 0))
    return {"rope_style": "interleaved", "sliding_window": window}


def hf_config(hf: Mapping[str, Any], fields: Mapping[str, Any]) -> dict[str, Any]:
    """Llama / Mistral `config.json`: Mistral's `sliding_window` applies to every layer."""
    if hf.get("hidden_act", "silu") != "silu":
        raise GGUFError(f"unsupported hidden_act {hf['hidden_act']!r} (only silu)")
    if hf.get("mlp_bias"):
        raise GGUFError("unsupported mlp_bias=true")
    return {
        "sliding_window": int(hf.get("sliding_window") or 0),
        "qkv_bias": bool(hf.get("attention_bias")),
    }
