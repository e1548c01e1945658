"""LoRA adapters on device, many per batch: each row names a slot of a fixed table (slot 0 holds
zeros: no adapter) and a scale, so loading an adapter writes the table and never recompiles.

A projection's output gains `scale * (x @ A[slot]) @ B[slot]` per row. With int8 weights (the
batch-invariant mode) the table is int8 too and both dots are integer dots on int8 tokens
against every slot at once, each row keeping its own slot's part, so a token's numbers depend
on nothing else its call computes; float weights gather each row's pair and use float dots. A
step where no row has an adapter skips the work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxserve.config import ModelConfig
from jaxserve.loading.lora import PROJECTIONS
from jaxserve.loading.lora import projection_shape as projection_dims

Project = Callable[[str, Callable[[jax.Array], jax.Array], jax.Array], jax.Array]


def plain(name: str, linear: Callable[[jax.Array], jax.Array], x: jax.Array) -> jax.Array:
    """A projection without adapters."""
    return linear(x)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class LoRATable:
    """Per projection, A `[L, S, in, R]` and B `[L, S, R, out]` (scales folded into B); slot 0
    is all zeros. Exact tables (int8 weights) hold int8 A and B with f32 scales per column,
    `a_scale` `[L, S, R]` and `b_scale` `[L, S, out]`; float tables hold f32 and no scales.
    Empty dicts: no adapters compiled in."""

    a: dict[str, jax.Array]
    b: dict[str, jax.Array]
    a_scale: dict[str, jax.Array]
    b_scale: dict[str, jax.Array]

    @classmethod
    def zeros(cls, config: ModelConfig, slots: int, rank: int, *, exact: bool) -> LoRATable:
        if not slots:
            return cls({}, {}, {}, {})
        a, b, a_scale, b_scale = {}, {}, {}, {}
        dtype = jnp.int8 if exact else jnp.float32
        for name in PROJECTIONS:
            d_in, d_out = projection_dims(config, name)
            lead = (config.num_layers, slots + 1)
            a[name] = jnp.zeros((*lead, d_in, rank), dtype)
            b[name] = jnp.zeros((*lead, rank, d_out), dtype)
            if exact:
                a_scale[name] = jnp.zeros((*lead, rank), jnp.float32)
                b_scale[name] = jnp.zeros((*lead, d_out), jnp.float32)
        return cls(a, b, a_scale, b_scale)


def quantize_columns(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 `[..., K, N]` with one f32 scale per column `[..., N]` (host, at load)."""
    scale = np.abs(w).max(axis=-2) / 127.0
    safe = np.where(scale > 0, scale, 1.0)
    q = np.clip(np.rint(w / safe[..., None, :]), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32)


def _quantize_rows(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """int8 values with one f32 scale per row of the last axis (each row on its own)."""
    scale = jnp.max(jnp.abs(x), axis=-1, keepdims=True) / jnp.float32(127)
    safe = jnp.where(scale > 0, scale, jnp.float32(1))
    return jnp.clip(jnp.round(x / safe), -127, 127).astype(jnp.int8), scale


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class LayerLoRA:
    """One layer's adapters for a batch: called as `project(name, linear, x)`."""

    slot: jax.Array  # [B] int32
    scale: jax.Array  # [B] f32
    active: jax.Array  # [] bool: some row has an adapter
    a: dict[str, jax.Array]  # [S, in, R]
    b: dict[str, jax.Array]  # [S, R, out]
    a_scale: dict[str, jax.Array]  # [S, R] (exact tables)
    b_scale: dict[str, jax.Array]  # [S, out]

    def __call__(
        self, name: str, linear: Callable[[jax.Array], jax.Array], x: jax.Array
    ) -> jax.Array:
        y = linear(x)
        if name not in self.a:
            return y
        delta = self._exact if name in self.a_scale else self._float
        return jax.lax.cond(self.active, lambda: y + delta(name, x), lambda: y)

    def _float(self, name: str, x: jax.Array) -> jax.Array:
        a, b = self.a[name][self.slot], self.b[name][self.slot]  # [B, in, R], [B, R, out]
        hp = jax.lax.Precision.HIGHEST
        t = jnp.einsum("bti,bir->btr", x.astype(jnp.float32), a, precision=hp)
        return jnp.einsum("btr,bro->bto", t, b, precision=hp) * self.scale[:, None, None]

    def _exact(self, name: str, x: jax.Array) -> jax.Array:
        """Integer dots (exact in any order) on int8 tokens, so a token's delta is the same
        whatever else its call computes (rows, chunk lengths, cached prefixes). Both dots run
        against every slot at once, a row keeping its own slot's part (a one-hot select of
        exact integers), which reads each table once instead of gathering it per row."""
        a, b = self.a[name], self.b[name]  # [S, in, R], [S, R, out] int8
        onehot = jnp.arange(a.shape[0])[None, :] == self.slot[:, None]  # [B, S]
        pick = onehot[:, None, :, None]
        xq, xs = _quantize_rows(x.astype(jnp.float32))
        full = jnp.einsum("bti,sir->btsr", xq, a, preferred_element_type=jnp.int32)
        t = jnp.sum(jnp.where(pick, full, 0), axis=2)  # [B, T, R]
        a_scale = self.a_scale[name][self.slot][:, None, :]  # [B, 1, R]
        tq, ts = _quantize_rows(t.astype(jnp.float32) * xs * a_scale)
        spread = jnp.where(pick, tq[:, :, None, :], jnp.int8(0))  # [B, T, S, R]
        d = jnp.einsum("btsr,sro->bto", spread, b, preferred_element_type=jnp.int32)
        b_scale = self.b_scale[name][self.slot][:, None, :]  # [B, 1, out]
        return d.astype(jnp.float32) * ts * b_scale * self.scale[:, None, None]
