"""Reference token-bitmask application (pure jnp): the grammar mask as the sampler applies it."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def unpack_bits(words: jax.Array, vocab: int) -> jax.Array:
    """int32 `[..., W]` bitmask -> bool `[..., vocab]`: bit i of word w is token 32 * w + i."""
    shifts = jnp.arange(32, dtype=jnp.int32).reshape((1,) * words.ndim + (32,))
    bits = (words[..., :, None] >> shifts) & 1
    return bits.reshape(*words.shape[:-1], -1)[..., :vocab] != 0


def ref_apply_bitmask(
    logits: jax.Array, bitmask: jax.Array, inv_temperature: jax.Array | None = None
) -> jax.Array:
    """logits [B, V] f32, bitmask [B, ceil(V / 32)] int32 (1 = allowed) -> masked logits, each
    row optionally scaled by inv_temperature [B]; disallowed tokens are -inf."""
    if inv_temperature is not None:
        logits = logits * inv_temperature[:, None].astype(logits.dtype)
    return jnp.where(unpack_bits(bitmask, logits.shape[-1]), logits, -jnp.inf)
