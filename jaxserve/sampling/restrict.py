"""Token restrictions that run before the ordered chain: logit_bias, the token bitmask (allowed
ids and the grammar's slot), bad words, and min_tokens. Each maps `logits [B, V]` to logits;
a row without the restriction passes through unchanged."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxserve.kernels.bitmask import apply_bitmask as kernel_apply_bitmask
from jaxserve.kernels.bitmask import ref_apply_bitmask
from jaxserve.sampling.tensors import RowState, SamplingTensors

NEG_INF = float("-inf")


def token_bits(words: jax.Array, token_ids: jax.Array) -> jax.Array:
    """Bits of `token_ids` [B, N] in per-row bitmasks [B, W] -> [B, N] bool (-1 ids: False)."""
    safe = jnp.maximum(token_ids, 0)
    word = jnp.take_along_axis(words, safe // 32, axis=-1)
    return (((word >> (safe % 32)) & 1) == 1) & (token_ids >= 0)


def _scatter(logits: jax.Array, ids: jax.Array, values: jax.Array, *, mode: str) -> jax.Array:
    """Apply `values` at `ids` [B, N] per row (ids -1 dropped); mode "add" or "min"."""
    rows = jnp.arange(logits.shape[0])[:, None]
    target = jnp.where(ids >= 0, ids, logits.shape[-1])  # out of bounds: dropped
    at = logits.at[rows, target]
    return at.add(values, mode="drop") if mode == "add" else at.min(values, mode="drop")


def apply_logit_bias(logits: jax.Array, t: SamplingTensors) -> jax.Array:
    return _scatter(logits, t.bias_ids, t.bias_values, mode="add")


def apply_bitmask(logits: jax.Array, t: SamplingTensors, kernels: str = "reference") -> jax.Array:
    """Rows with a bitmask keep only its tokens (the Pallas kernel unless `kernels` is
    "reference"); the others pass through."""
    words = jnp.where(t.use_bitmask[:, None], t.bitmask, jnp.int32(-1))
    if kernels == "reference":
        return ref_apply_bitmask(logits, words)
    return kernel_apply_bitmask(logits, words, interpret=kernels == "interpret")


def apply_bad_words(logits: jax.Array, t: SamplingTensors, state: RowState) -> jax.Array:
    """Ban the last token of each bad word whose other tokens end the sequence so far."""
    _, num_words, width = t.bad_words.shape
    lens = t.bad_word_lens  # [B, NW]
    j = jnp.arange(width)[None, None, :]
    # Token j < len - 1 of a word must sit at position length - (len - 1) + j.
    pos = state.length[:, None, None] - (lens[:, :, None] - 1) + j
    hist = jnp.take_along_axis(
        state.history, jnp.clip(pos, 0, state.history.shape[1] - 1).reshape(len(lens), -1), 1
    ).reshape(pos.shape)
    needed = j < lens[:, :, None] - 1
    match = jnp.all(~needed | ((pos >= 0) & (hist == t.bad_words)), axis=-1)
    last = jnp.take_along_axis(t.bad_words, jnp.maximum(lens - 1, 0)[:, :, None], -1)[..., 0]
    banned = jnp.where(match & (lens > 0), last, -1)
    return _scatter(logits, banned, jnp.full(banned.shape, NEG_INF), mode="min")


def apply_min_tokens(logits: jax.Array, t: SamplingTensors, state: RowState) -> jax.Array:
    """Mask end-of-generation and stop ids while fewer than min_tokens tokens exist."""
    blocked = jnp.where((state.num_generated < t.min_tokens)[:, None], t.stop_ids, -1)
    return _scatter(logits, blocked, jnp.full(blocked.shape, NEG_INF), mode="min")
