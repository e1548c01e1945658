"""A model on disk (GGUF file or Hugging Face checkpoint folder) -> config, weights, tokenizer."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from flax import nnx

from jaxserve.config import ModelConfig, WeightFormat
from jaxserve.loading.gguf_meta import open_gguf, read_metadata
from jaxserve.loading.weights import ModelWeights, TensorSource, load_saved_weights, save_weights
from jaxserve.models.build import build_model, read_weights
from jaxserve.text.tokenizer import GGUFTokenizer, Tokenizer


class ModelFile(Protocol):
    """An opened model (GGUF file or Hugging Face folder): config and tokenizer now, weights on
    demand."""

    path: Path
    config: ModelConfig

    def tokenizer(self) -> Tokenizer: ...
    def tokenizer_kind(self) -> str: ...
    def tensor_types(self) -> Counter[str]: ...
    def num_parameters(self) -> int: ...
    def load_weights(self, fmt: WeightFormat, *, cache: Path | None = None) -> ModelWeights: ...
    def build_model(self, fmt: WeightFormat, *, cache: Path | None = None) -> nnx.Module: ...


# Bump when the in-memory weight layout changes: saved conversions of older layouts are ignored.
WEIGHTS_VERSION = 3


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

    def tokenizer(self) -> GGUFTokenizer:
        return GGUFTokenizer.from_metadata(self.metadata)

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


def open_model(path: str | Path) -> ModelFile:
    """A GGUF file, or a Hugging Face checkpoint folder (`config.json`, `*.safetensors`)."""
    if Path(path).is_dir():
        from jaxserve.loading.hf_checkpoint import HFModelFile

        return HFModelFile.open(path)
    return GGUFModelFile.open(path)
