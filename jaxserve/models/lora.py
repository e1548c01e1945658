"""LoRA adapters on device, many per batch: each row names a slot of a fixed table (slot 0 holds
zeros: no adapter) and a scale, so loading an adapter writes the table and never recompiles.

A projection's output gains `scale * (x @ A[slot]) @ B[slot]` per row. With int8 weights (the
batch-invariant mode) the table is int8 too and both dots are integer dots on int8 tokens
against every slot at once, each row keeping its own slot's part, so a token's numbers depend
on nothing else its call computes; float weights gather each row's pair and use float dots. A
step where no row has an adapter skips the work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxserve.config import ModelConfig
from jaxserve.loading.lora import PROJECTIONS
from jaxserve.loading.lora import projection_shape as projection_dims
from jaxserve.models.layers import linear_group

Project = Callable[[str, Callable[[jax.Array], jax.Array], jax.Array], jax.Array]


class Plain:
    """Projections without adapters (what blocks call when the batch has none)."""

    def __call__(self, name: str, linear: Callable[[jax.Array], jax.Array], x: jax.Array):
        return linear(x)

    def group(self, names: Sequence[str], linears: Sequence[Callable], x: jax.Array) -> list:
        return linear_group(linears, x)


plain = Plain()


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
        return self.group((name,), (linear,), x)[0]

    def group(
        self,
        names: Sequence[str],
        linears: Sequence[Callable[[jax.Array], jax.Array]],
        x: jax.Array,
    ) -> list[jax.Array]:
        """Projections of one input (q/k/v, gate/up): their adapters share the input's
        quantization and one first dot."""
        ys = linear_group(linears, x)
        used = [i for i, name in enumerate(names) if name in self.a]
        if not used:
            return ys

        def with_adapters() -> list[jax.Array]:
            chosen = [names[i] for i in used]
            exact = chosen[0] in self.a_scale
            deltas = (self._exact if exact else self._float)(chosen, x)
            out = list(ys)
            for i, delta in zip(used, deltas, strict=True):
                out[i] = ys[i] + delta * self.scale[:, None, None]
            return out

        return jax.lax.cond(self.active, with_adapters, lambda: ys)

    def _float(self, names: Sequence[str], x: jax.Array) -> list[jax.Array]:
        """Each row's pairs gathered, f32 dots."""
        rank = self.a[names[0]].shape[-1]
        a = jnp.concatenate([self.a[n] for n in names], axis=-1)[self.slot]  # [B, in, G*R]
        hp = jax.lax.Precision.HIGHEST
        t = jnp.einsum("bti,bir->btr", x.astype(jnp.float32), a, precision=hp)
        return [
            jnp.einsum("btr,bro->bto", t[..., g * rank : (g + 1) * rank], self.b[n][self.slot],
                       precision=hp)
            for g, n in enumerate(names)
        ]  # fmt: skip

    def _exact(self, names: Sequence[str], x: jax.Array) -> list[jax.Array]:
        """Integer dots (exact in any order) on int8 tokens, so a token's delta is the same
        whatever else its call computes (rows, chunk lengths, cached prefixes). Both dots run
        against every slot at once, a row keeping its own slot's part (a one-hot select of
        exact integers), which reads each table once instead of gathering it per row."""
        a = jnp.concatenate([self.a[n] for n in names], axis=-1)  # [S, in, G*R] int8
        rank = self.a[names[0]].shape[-1]
        onehot = jnp.arange(a.shape[0])[None, :] == self.slot[:, None]  # [B, S]
        pick = onehot[:, None, :, None]
        xq, xs = _quantize_rows(x.astype(jnp.float32))
        full = jnp.einsum("bti,sir->btsr", xq, a, preferred_element_type=jnp.int32)
        t = jnp.sum(jnp.where(pick, full, 0), axis=2)  # [B, T, G*R]
        a_scale = jnp.concatenate([self.a_scale[n] for n in names], axis=-1)
        t = t.astype(jnp.float32) * xs * a_scale[self.slot][:, None, :]
        deltas = []
        for g, name in enumerate(names):
            tq, ts = _quantize_rows(t[..., g * rank : (g + 1) * rank])
            spread = jnp.where(pick, tq[:, :, None, :], jnp.int8(0))  # [B, T, S, R]
            d = jnp.einsum("btsr,sro->bto", spread, self.b[name], preferred_element_type=jnp.int32)
            b_scale = self.b_scale[name][self.slot][:, None, :]  # [B, 1, out]
            deltas.append(d.astype(jnp.float32) * ts * b_scale)
        return deltas
