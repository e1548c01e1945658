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
from jaxserve.weights import ModelWeights, TensorSource, load_model_weights


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

    def load_weights(self, fmt: WeightFormat) -> ModelWeights:
        _, layer_tensors = ARCHITECTURES[self.config.architecture]
        return load_model_weights(
            self.source, num_layers=self.config.num_layers, layer_tensors=layer_tensors, fmt=fmt
        )

    def build_model(self, fmt: WeightFormat) -> nnx.Module:
        model_cls, _ = ARCHITECTURES[self.config.architecture]
        return model_cls(self.config, self.load_weights(fmt))
