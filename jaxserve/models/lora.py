"""LoRA adapters on device, many per batch: each row names a slot of a fixed table (slot 0 holds
zeros: no adapter) and a scale, so loading an adapter writes the table and never recompiles.

A projection's output gains `scale * (x @ A[slot]) @ B[slot]` per row, with each row's own
pair gathered from the table and multiplied in batched dots (one per row, so a row's numbers do
not depend on the rows beside it). A step where no row has an adapter skips the work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp

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
    """Per projection, A `[L, S, in, R]` and B `[L, S, R, out]` f32 (scales folded into B);
    slot 0 is all zeros. Empty dicts: no adapters compiled in."""

    a: dict[str, jax.Array]
    b: dict[str, jax.Array]

    @classmethod
    def zeros(cls, config: ModelConfig, slots: int, rank: int) -> LoRATable:
        if not slots:
            return cls({}, {})
        a, b = {}, {}
        for name in PROJECTIONS:
            d_in, d_out = projection_dims(config, name)
            a[name] = jnp.zeros((config.num_layers, slots + 1, d_in, rank), jnp.float32)
            b[name] = jnp.zeros((config.num_layers, slots + 1, rank, d_out), jnp.float32)
        return cls(a, b)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class LayerLoRA:
    """One layer's adapters for a batch: called as `project(name, linear, x)`."""

    slot: jax.Array  # [B] int32
    scale: jax.Array  # [B] f32
    active: jax.Array  # [] bool: some row has an adapter
    a: dict[str, jax.Array]  # [S, in, R]
    b: dict[str, jax.Array]  # [S, R, out]

    def __call__(
        self, name: str, linear: Callable[[jax.Array], jax.Array], x: jax.Array
    ) -> jax.Array:
        y = linear(x)
        if name not in self.a:
            return y

        def with_adapters() -> jax.Array:
            a = self.a[name][self.slot]  # [B, in, R]
            b = self.b[name][self.slot]  # [B, R, out]
            hp = jax.lax.Precision.HIGHEST
            t = jnp.einsum("bti,bir->btr", x.astype(jnp.float32), a, precision=hp)
            d = jnp.einsum("btr,bro->bto", t, b, precision=hp)
            return y + d * self.scale[:, None, None]

        return jax.lax.cond(self.active, with_adapters, lambda: y)
