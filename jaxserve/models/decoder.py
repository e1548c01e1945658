"""The decoder skeleton every family shares: embedding -> scanned blocks -> final norm -> logits.

A family supplies its block class (one layer, parameters stacked over a leading layer axis) and
`Decoder` runs it with `lax.scan`, carrying the whole KV cache so each layer updates its pages in
place. Per-layer differences (RoPE frequencies, sliding windows) come in as scanned arrays, so
local and global layers run the same compiled code.
"""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxserve.config import ModelConfig, rope_inv_freq
from jaxserve.kernels.online_softmax import NO_WINDOW
from jaxserve.loading.weights import ModelWeights
from jaxserve.models.layers import Embedding, Linear, RMSNorm
from jaxserve.runtime.kv_cache import KVCache, TokenLayout


def layer_schedule(config: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer RoPE frequencies [L, D/2] f32 and attention windows [L] int32 (host constants)."""
    factors = np.asarray(config.rope_freq_factors or [1.0] * (config.head_dim // 2))
    local_theta = config.rope_theta_local or config.rope_theta
    rows = []
    windows = []
    for i in range(config.num_layers):
        local = config.is_local_layer(i)
        theta = local_theta if local else config.rope_theta
        rows.append(np.asarray(rope_inv_freq(theta, config.head_dim)) / factors)
        windows.append(config.sliding_window if local else NO_WINDOW)
    return np.asarray(rows, np.float32), np.asarray(windows, np.int32)


# How tensor parallel splits each projection (Megatron): by output columns, or by input rows.
ROW_SPLIT = ("attn_output", "ffn_down")


def linear(w: dict, name: str, config: ModelConfig) -> Linear:
    """The `name` projection of a layer, with its bias when the weights have one."""
    split = "row" if name in ROW_SPLIT else "column"
    return Linear(w[name], w.get(f"{name}_bias"), kernels=config.kernels, split=split)


class Decoder(nnx.Module):
    """Embedding (x `embedding_scale`) -> scanned `BLOCK`s -> final norm -> output head."""

    BLOCK: ClassVar[type[nnx.Module]]

    def __init__(self, config: ModelConfig, w: ModelWeights) -> None:
        self.config = config
        self.embed = Embedding(w.embedding, kernels=config.kernels)
        self.layers = self.BLOCK(config, w.layers)  # every parameter has a leading layer axis
        self.norm = RMSNorm(w.output_norm, eps=config.norm_eps)
        self.head = (
            None if w.output is None else Linear(w.output, kernels=config.kernels, split="column")
        )

    def hidden(
        self, token_ids: jax.Array, kv: KVCache, layout: TokenLayout
    ) -> tuple[jax.Array, KVCache]:
        """token_ids: [B, T]; kv: the paged cache, written at this step's tokens. Returns the
        final-normed hidden states [B, T, E] and the cache."""
        x = self.embed(token_ids)
        if self.config.embedding_scale != 1.0:
            x = x * jnp.float32(self.config.embedding_scale)
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
