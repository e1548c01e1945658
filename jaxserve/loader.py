"""A model on disk (GGUF file or Hugging Face checkpoint folder) -> config, weights, tokenizer."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flax import nnx

from jaxserve.config import ModelConfig, WeightFormat
from jaxserve.gguf_meta import open_gguf, read_metadata
from jaxserve.models import family
from jaxserve.tokenizer import Tokenizer
from jaxserve.weights import (
    ModelWeights,
    Tensors,
    TensorSource,
    layer_tensor_name,
    load_model_weights,
    load_saved_weights,
    save_weights,
)

# Bump when the in-memory weight layout changes: saved conversions of older layouts are ignored.
WEIGHTS_VERSION = 1


@dataclass(frozen=True)
class GGUFModelFile:
    """An opened GGUF: its metadata, config and tensor catalogue, weights not yet read."""

    path: Path
    metadata: dict[str, Any]
    config: ModelConfig
    source: TensorSource

    @classmethod
    def open(cls, path: str | Path) -> GGUFModelFile:
        reader = open_gguf(path)
        meta = read_metadata(reader)
        source = TensorSource(reader)
        rope_freqs = source.get("rope_freqs.weight") if "rope_freqs.weight" in source else None
        config = ModelConfig.from_gguf(
            meta, has_output="output.weight" in source, rope_freqs=rope_freqs
        )
        return cls(path=Path(path), metadata=meta, config=config, source=source)

    def tokenizer(self) -> Tokenizer:
        return Tokenizer.from_metadata(self.metadata)

    def tokenizer_kind(self) -> str:
        meta = self.metadata
        return f"{meta.get('tokenizer.ggml.model')} / {meta.get('tokenizer.ggml.pre', '-')}"

    def tensor_types(self) -> Counter[str]:
        return Counter(self.source.type_of(name) for name in self.source.names())

    def num_parameters(self) -> int:
        return self.source.num_elements()

    def load_weights(self, fmt: WeightFormat, *, cache: Path | None = None) -> ModelWeights:
        """Dequantize (and for int8 re-quantize) every tensor.

        With `cache` (a folder), the converted weights are kept there as `.npz`, keyed by the
        file's size and modification time, so the next start reads them instead of converting.
        """
        saved = None
        if cache is not None:
            stat = self.path.stat()
            key = f"{self.path.stem}-{stat.st_size}-{stat.st_mtime_ns}-{fmt}-v{WEIGHTS_VERSION}.npz"
            saved = cache / key
            weights = load_saved_weights(saved)
            if weights is not None:
                return weights
        weights = read_weights(self.source, self.config, fmt)
        if saved is not None:
            save_weights(saved, weights)
        return weights

    def build_model(self, fmt: WeightFormat, *, cache: Path | None = None) -> nnx.Module:
        return build_model(self.config, self.load_weights(fmt, cache=cache))


def read_weights(source: Tensors, config: ModelConfig, fmt: WeightFormat) -> ModelWeights:
    """Every tensor the config's family reads, converted to `fmt`."""
    names = (
        family(config.architecture)
        .module()
        .layer_tensors(config, lambda name: layer_tensor_name(0, name) in source)
    )
    return load_model_weights(source, num_layers=config.num_layers, layer_tensors=names, fmt=fmt)


def build_model(config: ModelConfig, weights: ModelWeights) -> nnx.Module:
    """The config's family model class over `weights`."""
    return family(config.architecture).module().MODEL(config, weights)


def open_model(path: str | Path):
    """A GGUF file, or a Hugging Face checkpoint folder (`config.json`, `*.safetensors`)."""
    if Path(path).is_dir():
        from jaxserve.hf_checkpoint import HFModelFile

        return HFModelFile.open(path)
    return GGUFModelFile.open(path)
