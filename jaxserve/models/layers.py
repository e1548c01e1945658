"""Shared Flax NNX layers: linear (f32, or int8 with per-block scales), RMSNorm, embedding, RoPE,
and `attention`, the one switch between the pure-jnp references and the Pallas kernels
(`config.kernels`: "reference", "pallas" or "interpret").

Weights are kept `[in, out]`; int8 weights carry one scale per block of 32 or 64 input values
and multiply activations quantized per block too, with exact int32 accumulation
(`matmul_w8a8`). With int8 weights and a "q8_0" KV cache (`exact_attention`: integer dots), a
row's numbers do not depend on the rows computed beside it; f32 weights use float dots, which
do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxserve.kernels import paged_attention, prefill_attention, quant_matmul
from jaxserve.kernels.paged_attention import ref_attention
from jaxserve.kernels.paged_attention.exact import exact_attention
from jaxserve.kernels.quant_matmul import matmul_w8a8, matmul_w8a8_many
from jaxserve.loading.weights import QuantArray, Weight
from jaxserve.runtime.kv_cache import KVCache
from jaxserve.runtime.parallel import model_mesh, per_device, row_axis


class Linear(nnx.Module):
    """`y = x @ W (+ b)` with W `[in, out]` stored f32 or bf16 (x cast to it, f32 accumulation),
    or int8 with scales `[in // block, out]`. `split`: how tensor parallel splits W, "column"
    (by outputs) or "row" (by inputs, partial sums added across devices), which the Pallas
    matmul follows on each device (`runtime.parallel`)."""

    def __init__(
        self,
        weight: Weight,
        bias: np.ndarray | None = None,
        *,
        kernels: str = "reference",
        split: str | None = None,
    ) -> None:
        self.kernels = kernels
        self.split = split
        if isinstance(weight, QuantArray):
            self.w = nnx.Param(jnp.asarray(weight.q))
            self.scales = nnx.Param(jnp.asarray(weight.scales))
        else:
            dtype = jnp.bfloat16 if weight.dtype == jnp.bfloat16 else jnp.float32
            self.w = nnx.Param(jnp.asarray(weight, dtype=dtype))
            self.scales = None
        self.bias = None if bias is None else nnx.Param(jnp.asarray(bias, dtype=jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.scales is None:
            w = self.w[...]
            y = jnp.einsum(
                "...i,io->...o", x.astype(w.dtype), w, preferred_element_type=jnp.float32
            )
        elif self.kernels != "reference":
            y = self._kernel(x, self.w[...], self.scales[...])
        else:
            y = matmul_w8a8(x, self.w[...], self.scales[...])
        return self._biased(y)

    def _biased(self, y: jax.Array) -> jax.Array:
        if self.bias is None:
            return y
        return y + self.bias[...].reshape((1,) * (y.ndim - 1) + self.bias.shape)

    @property
    def blocks(self) -> int | None:
        """Input blocks of an int8 weight on the reference path (None otherwise)."""
        if self.scales is None or self.kernels != "reference":
            return None
        return self.scales.shape[0]

    def _kernel(self, x: jax.Array, w: jax.Array, scales: jax.Array) -> jax.Array:
        """The Pallas int8 matmul, on each device's columns or rows under tensor parallel."""
        interpret = self.kernels == "interpret"

        def run(x, w, scales):
            return quant_matmul(x, w, scales, interpret=interpret)

        def run_rows(x, w, scales):
            return jax.lax.psum(run(x, w, scales), "model")

        mesh = model_mesh()
        if mesh is None:
            return run(x, w, scales)
        tp = mesh.shape["model"]
        lead = (None,) * (x.ndim - 1)
        if self.split == "column" and w.shape[1] % tp == 0:
            split = P(None, "model")
            return per_device(run, (P(), split, split), P(*lead, "model"))(x, w, scales)
        if self.split == "row" and scales.shape[0] % tp == 0:
            split = P("model", None)
            return per_device(run_rows, (P(*lead, "model"), split, split), P())(x, w, scales)
        return per_device(run, (P(), P(), P()), P())(x, w, scales)


def linear_group(linears: Sequence[Callable[[jax.Array], jax.Array]], x: jax.Array) -> list:
    """Several projections of one input (q/k/v, gate/up). Int8 weights with the same block count
    share one block loop (`matmul_w8a8_many`: the same bits as one call each, fewer ops)."""
    blocks = {getattr(linear, "blocks", None) for linear in linears}
    if len(linears) < 2 or len(blocks) != 1 or None in blocks:
        return [linear(x) for linear in linears]
    ys = matmul_w8a8_many(x, [(linear.w[...], linear.scales[...]) for linear in linears])
    return [linear._biased(y) for linear, y in zip(linears, ys, strict=True)]


class Embedding(nnx.Module):
    """Token embedding stored `[hidden, vocab]`; `attend` reuses it as a tied output head."""

    def __init__(self, weight: Weight, *, kernels: str = "reference") -> None:
        self.table = Linear(weight, kernels=kernels, split="column")

    def __call__(self, token_ids: jax.Array) -> jax.Array:
        rows = jnp.moveaxis(jnp.take(self.table.w[...], token_ids, axis=1), 0, -1)  # [*ids, E]
        if self.table.scales is None:
            return rows.astype(jnp.float32)
        scales = jnp.moveaxis(jnp.take(self.table.scales[...], token_ids, axis=1), 0, -1)
        blocks = rows.reshape(*rows.shape[:-1], scales.shape[-1], -1).astype(jnp.float32)
        return (blocks * scales[..., None]).reshape(rows.shape)

    def attend(self, x: jax.Array) -> jax.Array:
        return self.table(x)


class RMSNorm(nnx.Module):
    def __init__(self, weight: np.ndarray, *, eps: float) -> None:
        self.weight = nnx.Param(jnp.asarray(weight, dtype=jnp.float32))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        var = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
        weight = self.weight[...]
        return (
            x * jax.lax.rsqrt(var + self.eps) * weight.reshape((1,) * (x.ndim - 1) + weight.shape)
        )


def rope_interleaved(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotate pairs `(x[2i], x[2i+1])` by `pos * inv_freq[i]` (ggml's NORM RoPE).

    x: [B, T, H, D]; positions: [B, T]; inv_freq: [D/2].
    """
    angles = (
        positions.astype(jnp.float32)[..., None, None] * inv_freq[None, None, None]
    )  # [B,T,1,D/2]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return out.reshape(x.shape)


def rope_neox(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotate pairs `(x[i], x[i + D/2])` by `pos * inv_freq[i]` (ggml's NEOX RoPE).

    x: [B, T, H, D]; positions: [B, T]; inv_freq: [D/2] (an array, so a scanned layer can bring
    its own base).
    """
    angles = positions.astype(jnp.float32)[..., None, None] * inv_freq[None, None, None]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


def attention(
    q: jax.Array,
    kv: KVCache,
    *,
    layer: jax.Array,
    page_table: jax.Array,
    q_positions: jax.Array,
    kv_lens: jax.Array,
    scale: float | None = None,
    window: jax.Array | None = None,
    kernels: str = "reference",
) -> jax.Array:
    """Attention of q [B, T, H, D] over the paged cache (see `ref_attention`).

    A "q8_0" cache runs `exact_attention` (integer dots, batch-invariant, decode and prefill
    alike); an f32 cache runs the pure-jnp `ref_attention` ("reference", exact float math for
    f32 weights) or, with "pallas"/"interpret", the decode kernel for one query per row (at
    position kv_lens - 1) and the chunked-prefill kernel otherwise.
    """
    args = dict(layer=layer, page_table=page_table, scale=scale, window=window)
    if kv.is_quantized:
        k_pages, v_pages = (kv.k, kv.k_scale), (kv.v, kv.v_scale)
        return exact_attention(
            q, k_pages, v_pages, q_positions=q_positions, kv_lens=kv_lens, **args
        )
    if kernels == "reference":
        return ref_attention(q, kv.k, kv.v, q_positions=q_positions, kv_lens=kv_lens, **args)
    return _attention_kernel(
        q, kv.k, kv.v, layer, page_table, q_positions, kv_lens, scale, window, kernels
    )


def _attention_kernel(q, k_pages, v_pages, layer, page_table, q_positions, kv_lens, scale, window,
                      kernels):  # fmt: skip
    """The decode kernel for one query per row, the chunked-prefill kernel otherwise; under
    tensor parallel each device runs them on its own query and kv heads."""
    interpret = kernels == "interpret"
    decode = q.shape[1] == 1
    no_window = window is None
    window = jnp.zeros((), jnp.int32) if no_window else window

    def run(q, k_pages, v_pages, layer, page_table, q_positions, kv_lens, window):
        args = dict(layer=layer, page_table=page_table, scale=scale, interpret=interpret,
                    window=None if no_window else window)  # fmt: skip
        if decode:
            return paged_attention(q[:, 0], k_pages, v_pages, lengths=kv_lens, **args)[:, None]
        return prefill_attention(
            q, k_pages, v_pages, q_positions=q_positions, kv_lens=kv_lens, **args
        )

    mesh = model_mesh()
    r = None if mesh is None else row_axis(mesh, q.shape[0])
    heads, pages, rows = P(r, None, "model", None), P(None, "model"), P(r)
    specs = (heads, pages, pages, P(), rows, rows, rows, P())
    return per_device(run, specs, heads)(
        q, k_pages, v_pages, layer, page_table, q_positions, kv_lens, window
    )
