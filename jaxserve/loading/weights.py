"""GGUF tensors -> in-memory weights (host side, numpy only).

Every tensor is dequantized with `gguf.quants` to float32, then kept either exactly (`f32`) or
re-quantized to int8 with one float scale per block of consecutive input values (`int8`, the CPU
default): blocks of 64 for matrices stored in a 4-bit format with one scale per 32 (Q4_0, Q4_1:
the int8 copy is still ~8x finer than the source's grid, and 64-value blocks halve the int32
partial sums each block leaves to the matmul's epilogue), blocks of 32 for the rest (Q5_0 / Q5_1
lost accuracy against llama.cpp on Gemma 3 at 64; Q8_0, K-quants with 16- or 32-value
sub-blocks, float checkpoints).
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import gguf
import ml_dtypes
import numpy as np

from jaxserve.config import WeightFormat
from jaxserve.errors import GGUFError

BLOCK = 32
COARSE_BLOCK = 64
COARSE_SOURCES = frozenset({"Q4_0", "Q4_1"})
Q = gguf.GGMLQuantizationType


@dataclass(frozen=True)
class QuantArray:
    """int8 values with one f32 scale per `block` values along the input axis.

    Matrices are kept as `[..., in, out]` (ready for `x @ W`): `q[..., n, out]` int8 and
    `scales[..., n // block, out]` f32; value = q * scale (symmetric, no offset). The block
    size is implied by the shapes (32 or 64, see `int8_block`).
    """

    q: np.ndarray
    scales: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return self.q.shape

    @property
    def block(self) -> int:
        return self.q.shape[-2] // self.scales.shape[-2]

    def dequantize(self) -> np.ndarray:
        *lead, n, out = self.q.shape
        blocks = self.q.reshape(*lead, n // self.block, self.block, out).astype(np.float32)
        return (blocks * self.scales[..., None, :]).reshape(self.q.shape)


Weight = np.ndarray | QuantArray


def int8_block(source_types: Iterable[str]) -> int:
    """The int8 block size of a matrix stored in the GGUF types `source_types` (every layer's):
    `COARSE_BLOCK` when all are 4-bit formats with one scale per 32, else `BLOCK`."""
    types = set(source_types)
    return COARSE_BLOCK if types and types <= COARSE_SOURCES else BLOCK


def quantize_int8(x: np.ndarray, block: int = BLOCK) -> QuantArray:
    """Symmetric int8 with a per-`block` scale along axis -2 (which must divide by it)."""
    *lead, n, out = x.shape
    if n % block:
        raise ValueError(f"input axis {n} is not a multiple of {block}")
    blocks = x.reshape(*lead, n // block, block, out).astype(np.float32)
    amax = np.abs(blocks).max(axis=-2)
    scales = (amax / 127.0).astype(np.float32)
    safe = np.where(scales == 0, 1.0, scales)
    q = np.clip(np.rint(blocks / safe[..., None, :]), -127, 127).astype(np.int8)
    return QuantArray(q=q.reshape(x.shape), scales=scales)


def dequantize_tensor(tensor: gguf.ReaderTensor) -> np.ndarray:
    """A GGUF tensor as float32 in numpy order (ggml's shape reversed)."""
    qtype = Q(tensor.tensor_type)
    shape = tuple(int(d) for d in reversed(tensor.shape))
    try:
        values = gguf.quants.dequantize(np.asarray(tensor.data), qtype)
    except NotImplementedError as e:
        raise GGUFError(f"tensor {tensor.name}: unsupported tensor type {qtype.name}") from e
    except (ValueError, IndexError) as e:
        raise GGUFError(f"tensor {tensor.name} ({qtype.name}) is corrupt or truncated: {e}") from e
    if values.size != int(np.prod(shape)):
        raise GGUFError(f"tensor {tensor.name}: {values.size} values for shape {shape}")
    return values.reshape(shape).astype(np.float32, copy=False)


class TensorSource:
    """Name -> float32 tensor lookup over an open GGUF reader."""

    def __init__(self, reader: gguf.GGUFReader) -> None:
        self._tensors = {t.name: t for t in reader.tensors}

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def names(self) -> list[str]:
        return list(self._tensors)

    def num_elements(self) -> int:
        return sum(int(t.n_elements) for t in self._tensors.values())

    def type_of(self, name: str) -> str:
        return Q(self._tensors[name].tensor_type).name

    def get(self, name: str) -> np.ndarray:
        if name not in self._tensors:
            raise GGUFError(f"GGUF lacks tensor {name}")
        return dequantize_tensor(self._tensors[name])


def as_format(x: np.ndarray, fmt: WeightFormat, block: int = BLOCK) -> Weight:
    """A GGUF `(out, in)` matrix as `(in, out)`: exact (`f32`), bfloat16 (`bf16`, the accelerator
    default) or per-32-block int8 (`int8`).

    Vectors (norm weights) stay f32 as they are.
    """
    if x.ndim < 2:
        return np.ascontiguousarray(x, dtype=np.float32)
    x = x.T
    if fmt == "bf16":
        return np.ascontiguousarray(x, dtype=ml_dtypes.bfloat16)
    if fmt == "f32" or x.shape[0] % BLOCK:
        return np.ascontiguousarray(x, dtype=np.float32)
    return quantize_int8(x, block if x.shape[0] % block == 0 else BLOCK)


def stack_layers(num_layers: int, load: Callable[[int], Weight]) -> Weight:
    """Stack one weight over layers (leading axis) so the layer loop can be a `lax.scan`."""
    items = [load(i) for i in range(num_layers)]
    if isinstance(items[0], QuantArray):
        return QuantArray(
            q=np.stack([w.q for w in items]), scales=np.stack([w.scales for w in items])
        )
    return np.stack(items)


LayerWeights = dict[str, Weight]


@dataclass(frozen=True)
class ModelWeights:
    """All weights of a decoder, per-layer ones stacked over a leading layer axis."""

    embedding: Weight  # [E, V]
    layers: LayerWeights  # name -> [L, in, out] (norms [L, E])
    output_norm: np.ndarray  # [E]
    output: Weight | None  # [E, V]; None when tied to the embedding

    def nbytes(self) -> int:
        items = [self.embedding, self.output_norm, self.output, *self.layers.values()]
        total = 0
        for w in items:
            if isinstance(w, QuantArray):
                total += w.q.nbytes + w.scales.nbytes
            elif w is not None:
                total += w.nbytes
        return total


class Tensors(Protocol):
    """Tensors by GGUF name (`blk.{i}.attn_q.weight`), as float32 in `(out, in)` order."""

    def __contains__(self, name: str) -> bool: ...
    def get(self, name: str) -> np.ndarray: ...
    def type_of(self, name: str) -> str: ...


def layer_tensor_name(layer: int, name: str) -> str:
    """`attn_q` -> `blk.{layer}.attn_q.weight`; a `_bias` suffix names the `.bias` tensor."""
    if name.endswith("_bias"):
        return f"blk.{layer}.{name.removesuffix('_bias')}.bias"
    return f"blk.{layer}.{name}.weight"


def load_model_weights(
    source: Tensors, *, num_layers: int, layer_tensors: tuple[str, ...], fmt: WeightFormat
) -> ModelWeights:
    """Read `token_embd`, each layer tensor of every layer, `output_norm`, `output`."""

    def layer(name: str) -> Weight:
        names = [layer_tensor_name(i, name) for i in range(num_layers)]
        block = int8_block(source.type_of(n) for n in names)
        return stack_layers(num_layers, lambda i: as_format(source.get(names[i]), fmt, block))

    def single(name: str) -> Weight:
        return as_format(source.get(name), fmt, int8_block([source.type_of(name)]))

    output = "output.weight"
    return ModelWeights(
        embedding=single("token_embd.weight"),
        layers={name: layer(name) for name in layer_tensors},
        output_norm=source.get("output_norm.weight"),
        output=single(output) if output in source else None,
    )


def _flatten(w: ModelWeights) -> dict[str, np.ndarray]:
    items = {"embedding": w.embedding, "output_norm": w.output_norm, "output": w.output}
    items.update({f"layers.{name}": value for name, value in w.layers.items()})
    flat: dict[str, np.ndarray] = {}
    for key, value in items.items():
        if isinstance(value, QuantArray):
            flat[f"{key}.q"], flat[f"{key}.scales"] = value.q, value.scales
        elif value is not None:
            flat[key] = value
    return flat


def save_weights(path: Path, weights: ModelWeights) -> None:
    """Write converted weights (atomically) so the next start skips dequantization."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as f:
        np.savez(f, **_flatten(weights))
    partial.replace(path)


def load_saved_weights(path: Path) -> ModelWeights | None:
    """Weights written by `save_weights`, or None if absent or unreadable."""
    try:
        with np.load(path) as data:
            flat = {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None

    def get(key: str) -> Weight | None:
        if f"{key}.q" in flat:
            return QuantArray(flat[f"{key}.q"], flat[f"{key}.scales"])
        return flat.get(key)

    names = {k.split(".")[1] for k in flat if k.startswith("layers.")}
    return ModelWeights(
        embedding=get("embedding"),
        layers={name: get(f"layers.{name}") for name in sorted(names)},
        output_norm=flat["output_norm"],
        output=get("output"),
    )
