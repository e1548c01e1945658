"""Tensor- and data-parallel serving over a `jax.sharding.Mesh` (GSPMD: shardings in, XLA out).

Mesh axes: `data` (rows of each step's batch) x `model` (tensor parallel). Parameters follow the
Megatron layout: q/k/v, gate and up split by output columns (heads, MLP columns), the attention
output and down projections by input rows, the embedding and output head by vocabulary; norms
are replicated. The KV cache is split by kv heads. XLA's SPMD partitioner inserts the collectives
(an all-reduce after each row-split projection, gathers of the vocab-split logits for sampling),
so sampling and the grammar mask see whole rows and stay exact.

Head counts: query heads must divide by the tensor-parallel size (else a clear error); kv heads
fewer than it are repeated (each device then holds one copy of the head its query heads use).
Data parallel splits each step's rows over the `data` axis when the row bucket divides by it; the
KV pool is shared by all rows, so it is replicated over `data` (one pool, one allocator).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import jax
import numpy as np
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxserve.config import ModelConfig
from jaxserve.loading.weights import ModelWeights, QuantArray, Weight

# Projections split by output columns (the last axis) and by input rows (the second to last).
COLUMN = ("q", "k", "v", "gate", "up", "head", "table")
ROW = ("o", "down")


@dataclass(frozen=True)
class ParallelConfig:
    tensor_parallel: int = 1
    data_parallel: int = 1

    def __post_init__(self) -> None:
        for name in ("tensor_parallel", "data_parallel"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def num_devices(self) -> int:
        return self.tensor_parallel * self.data_parallel

    @property
    def is_single(self) -> bool:
        return self.num_devices == 1


def make_mesh(parallel: ParallelConfig, devices: list | None = None) -> Mesh:
    """A (data, model) mesh over the first `dp * tp` devices."""
    devices = list(jax.devices() if devices is None else devices)
    need = parallel.num_devices
    if len(devices) < need:
        hint = ""
        if jax.default_backend() == "cpu":
            hint = f" (on CPU: XLA_FLAGS=--xla_force_host_platform_device_count={need})"
        raise ValueError(
            f"tensor_parallel={parallel.tensor_parallel} x data_parallel="
            f"{parallel.data_parallel} needs {need} devices; {len(devices)} available{hint}"
        )
    grid = np.asarray(devices[:need]).reshape(parallel.data_parallel, parallel.tensor_parallel)
    return Mesh(grid, ("data", "model"), axis_types=(AxisType.Auto, AxisType.Auto))


def check_heads(config: ModelConfig, tensor_parallel: int) -> None:
    """A clear error when the tensor-parallel size cannot split the model's heads."""
    tp = tensor_parallel
    if config.num_heads % tp:
        raise ValueError(
            f"tensor_parallel={tp} does not divide the model's {config.num_heads} query heads; "
            f"use a divisor of {config.num_heads}"
        )
    kv = config.num_kv_heads
    if kv % tp and tp % kv:
        raise ValueError(
            f"tensor_parallel={tp} cannot split the model's {kv} kv heads: one must divide "
            "the other"
        )


def prepare(
    config: ModelConfig, weights: ModelWeights, tensor_parallel: int
) -> tuple[ModelConfig, ModelWeights]:
    """Check head counts against the tensor-parallel size; repeat kv heads fewer than it."""
    check_heads(config, tensor_parallel)
    kv = config.num_kv_heads
    if kv % tensor_parallel == 0:
        return config, weights
    repeat = tensor_parallel // kv
    layers = dict(weights.layers)
    for name in ("attn_k", "attn_v", "attn_k_bias", "attn_v_bias"):
        if name in layers:
            layers[name] = _repeat_heads(layers[name], kv, repeat)
    return (
        dataclasses.replace(config, num_kv_heads=kv * repeat),
        dataclasses.replace(weights, layers=layers),
    )


def _repeat_heads(w: Weight, heads: int, repeat: int) -> Weight:
    """Repeat each head's columns (last axis, heads x head_dim) `repeat` times, in place."""

    def rep(a: np.ndarray) -> np.ndarray:
        *lead, cols = a.shape
        per_head = a.reshape(*lead, heads, 1, cols // heads)
        return np.repeat(per_head, repeat, axis=-2).reshape(*lead, cols * repeat)

    if isinstance(w, QuantArray):
        return QuantArray(q=rep(w.q), scales=rep(w.scales))
    return rep(w)


def _spec(path: tuple[str, ...], shape: tuple[int, ...], tp: int) -> P:
    """The partition spec of one parameter, by the module it belongs to."""
    names = [str(p) for p in path]
    module = names[-2] if len(names) >= 2 else ""
    leaf = names[-1]
    rank = len(shape)
    if leaf in ("w", "scales", "bias") and module in COLUMN and shape[-1] % tp == 0:
        return P(*([None] * (rank - 1)), "model")
    if leaf in ("w", "scales") and module in ROW and rank >= 2 and shape[-2] % tp == 0:
        return P(*([None] * (rank - 2)), "model", None)
    return P()


def param_shardings(params, mesh: Mesh):
    """NamedShardings for an `nnx.State` of parameters (same tree structure)."""
    tp = mesh.shape["model"]

    def one(path, leaf):
        keys = tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
        if keys and keys[-1] == "value":  # an nnx.Variable's array
            keys = keys[:-1]
        return NamedSharding(mesh, _spec(keys, leaf.shape, tp))

    return jax.tree_util.tree_map_with_path(one, params)


def kv_sharding(mesh: Mesh) -> NamedSharding:
    """K/V pages `[L, KH, N, S, D]` split by kv heads, replicated over `data`."""
    return NamedSharding(mesh, P(None, "model"))


def row_sharding(mesh: Mesh, rows: int) -> NamedSharding:
    """A step's per-row arrays: rows over `data` when the bucket divides, else replicated."""
    dp = mesh.shape["data"]
    return NamedSharding(mesh, P("data") if rows % dp == 0 else P())


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def put(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A host array as a global array with `sharding`; each process fills its own shards, so
    this works across processes as on one."""
    x = np.asarray(x)
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def put_tree(tree, shardings):
    """`put` over a pytree of arrays (and a matching pytree, or one sharding for all)."""
    if isinstance(shardings, NamedSharding):
        return jax.tree.map(lambda x: put(np.asarray(x), shardings), tree)
    return jax.tree.map(lambda x, s: put(np.asarray(x), s), tree, shardings)


def model_mesh() -> AbstractMesh | None:
    """The mesh being traced under, when it splits a `model` axis (tensor parallel), else None."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or "model" not in mesh.axis_names or mesh.shape["model"] == 1:
        return None
    return mesh


def tracing_mesh(mesh: Mesh | None):
    """A context that traces under `mesh` (so `per_device` sees its `model` axis), unless a mesh
    is already set: an export names its target's abstract mesh (and device kind) itself."""
    if mesh is None or not jax.sharding.get_abstract_mesh().empty:
        return contextlib.nullcontext()
    return jax.sharding.use_abstract_mesh(mesh.abstract_mesh)


def row_axis(mesh: AbstractMesh, rows: int) -> str | None:
    """`data` when the mesh has that axis and it divides `rows`, else None (rows replicated)."""
    if "data" in mesh.axis_names and rows % mesh.shape["data"] == 0:
        return "data"
    return None


def per_device(fn: Callable, in_specs: tuple, out_specs) -> Callable:
    """`fn` as it runs on each device of the tensor-parallel mesh being traced under
    (`jax.shard_map`), or `fn` itself on one device. For the Pallas kernels: XLA's partitioner
    cannot split a kernel call and would gather its operands whole onto every device, so each
    kernel runs on its own heads or columns, the layout the parameters and cache already have."""
    mesh = model_mesh()
    if mesh is None:
        return fn
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
