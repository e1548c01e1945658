"""The decoder skeleton every family shares: embedding -> scanned blocks -> final norm -> logits.

A family supplies its block class (one layer, parameters stacked over a leading layer axis) and
`Decoder` runs it with `lax.scan`, carrying the whole KV cache so each layer updates its pages in
place. Per-layer differences (RoPE frequencies, sliding windows) come in as scanned arrays, so
local and global layers run the same compiled code.

A `Probe` (per-row hooks) adds steering vectors to the residual stream after chosen layers,
keeps the residual stream after others, and gives each row its LoRA adapter
(`models/lora.py`) in every projection (`Decoder.probed`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxserve.config import ModelConfig, rope_inv_freq
from jaxserve.kernels.online_softmax import NO_WINDOW
from jaxserve.loading.weights import ModelWeights
from jaxserve.models.layers import Embedding, Linear, RMSNorm
from jaxserve.models.lora import LayerLoRA, LoRATable
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


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Probe:
    """Per-row hooks of a step: research inputs and LoRA adapters. Rows that use none hold
    -1 / slot 0 / scale 0, and an empty capture axis (C = 0), a one-row steering table (S = 1)
    or an empty LoRA table compiles that hook out altogether."""

    capture: jax.Array  # [B, C] int32, the layer whose output slot c keeps (-1: none)
    steer_slot: jax.Array  # [B] int32, the row of `steering` added to the row (0: zeros)
    steer_scale: jax.Array  # [B] f32
    steering: jax.Array  # [S, L, E] f32, vectors added after each layer (row 0 all zeros)
    lens: jax.Array  # [B] bool, the row wants the logit lens of its captured layers
    lora_slot: jax.Array  # [B] int32, the row's adapter in `lora` (0: none)
    lora_scale: jax.Array  # [B] f32
    lora: LoRATable


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
        h, kv, _ = self.probed(token_ids, kv, layout, None)
        return h, kv

    def probed(
        self, token_ids: jax.Array, kv: KVCache, layout: TokenLayout, probe: Probe | None
    ) -> tuple[jax.Array, KVCache, jax.Array | None]:
        """`hidden` with a `Probe`: each row's steering vector of layer l (times its scale) is
        added to the residual stream after layer l, and the residual stream after the layers of
        its capture slots (steering included) is returned as `[B, T, C, E]` f32 (None without
        capture slots). A row's own inputs change only that row."""
        x = self.embed(token_ids)
        if self.config.embedding_scale != 1.0:
            x = x * jnp.float32(self.config.embedding_scale)
        block_def, block_state = nnx.split(self.layers)
        inv_freq, windows = layer_schedule(self.config)

        num_layers = self.config.num_layers
        steer = probe is not None and probe.steering.shape[0] > 1
        capture = probe is not None and probe.capture.shape[1] > 0
        adapters = probe is not None and bool(probe.lora.a)
        active = jnp.any(probe.lora_slot > 0) if adapters else None

        def body(carry, xs):
            x, kv, kept = carry
            layer_state, layer, inv_freq, window, vectors, tables_l = xs
            block = nnx.merge(block_def, layer_state)
            lora = None
            if adapters:
                lora = LayerLoRA(probe.lora_slot, probe.lora_scale, active, *tables_l)
            x, kv = block(x, kv, layout, layer=layer, inv_freq=inv_freq, window=window, lora=lora)
            if steer:  # vectors: [S, E], this layer's row of every slot
                add = vectors[probe.steer_slot] * probe.steer_scale[:, None]
                x = x + add[:, None, :].astype(x.dtype)
            if capture:
                hit = probe.capture == layer  # [B, C]
                here = x.astype(jnp.float32)[:, :, None, :]
                kept = jnp.where(hit[:, None, :, None], here, kept)
            return (x, kv, kept), None

        layers = jnp.arange(num_layers, dtype=jnp.int32)
        vectors = jnp.swapaxes(probe.steering, 0, 1) if steer else jnp.zeros((num_layers, 0))
        lora = probe.lora if adapters else None
        tables = (lora.a, lora.b, lora.a_scale, lora.b_scale) if lora else ({}, {}, {}, {})
        xs = (block_state, layers, jnp.asarray(inv_freq), jnp.asarray(windows), vectors, tables)
        b, t = token_ids.shape
        kept = None
        if capture:
            c, e = probe.capture.shape[1], self.config.hidden_size
            kept = jnp.zeros((b, t, c, e), jnp.float32)
        (x, kv, kept), _ = jax.lax.scan(body, (x, kv, kept), xs)
        return self.norm(x), kv, kept

    def logits(self, h: jax.Array) -> jax.Array:
        """h: [..., E] -> logits [..., V] (f32), soft-capped when the config says so."""
        logits = self.embed.attend(h) if self.head is None else self.head(h)
        cap = self.config.final_logit_softcap
        if cap > 0:
            logits = jnp.float32(cap) * jnp.tanh(logits / jnp.float32(cap))
        return logits
