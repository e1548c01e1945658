"""GGUF file -> (ModelConfig, Flax NNX model, tokenizer metadata)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flax import nnx

from jaxserve.config import ModelConfig, WeightFormat
from jaxserve.gguf_meta import open_gguf, read_metadata
from jaxserve.models import ARCHITECTURES
from jaxserve.weights import (
    ModelWeights,
    TensorSource,
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
        config = ModelConfig.from_gguf(meta, has_output="output.weight" in source)
        return cls(path=Path(path), metadata=meta, config=config, source=source)

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
        _, layer_tensors = ARCHITECTURES[self.config.architecture]
        weights = load_model_weights(
            self.source, num_layers=self.config.num_layers, layer_tensors=layer_tensors, fmt=fmt
        )
        if saved is not None:
            save_weights(saved, weights)
        return weights

    def build_model(self, fmt: WeightFormat, *, cache: Path | None = None) -> nnx.Module:
        model_cls, _ = ARCHITECTURES[self.config.architecture]
        return model_cls(self.config, self.load_weights(fmt, cache=cache))
