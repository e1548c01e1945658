"""A Hugging Face checkpoint folder (`config.json`, `*.safetensors`, `tokenizer.json`) as a model.

Tensors are read with the `safetensors` package and renamed to GGUF's names, so the weight
conversion and the model classes are the GGUF path's. HF keeps linear weights `(out, in)`, as
GGUF does in numpy order, and q/k rows unpermuted (the config says NeoX RoPE).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, for bf16 checkpoints)
import numpy as np
from flax import nnx
from safetensors import safe_open

from jaxserve.config import ModelConfig, WeightFormat
from jaxserve.errors import GGUFError
from jaxserve.loading.weights import ModelWeights
from jaxserve.models.build import build_model, read_weights

# HF `model.layers.{i}.<suffix>` -> GGUF `blk.{i}.<name>` (Llama, Mistral, Qwen 2/3).
LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.bias": "attn_output.bias",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")


def gguf_name(hf_name: str) -> str | None:
    """The GGUF name of a HF tensor, or None for one no model here reads (e.g. rotary buffers)."""
    if hf_name in GLOBAL_NAMES:
        return GLOBAL_NAMES[hf_name]
    match = _LAYER.fullmatch(hf_name)
    if match and match.group(2) in LAYER_NAMES:
        return f"blk.{match.group(1)}.{LAYER_NAMES[match.group(2)]}"
    return None


class SafetensorsTensors:
    """GGUF-named float32 tensors over every `*.safetensors` file of a folder."""

    def __init__(self, folder: Path, *, tied: bool) -> None:
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise GGUFError(f"{folder} has no .safetensors files")
        self._where: dict[str, tuple[Path, str]] = {}
        self._dtypes: dict[str, str] = {}
        self._sizes: dict[str, int] = {}
        for path in files:
            with safe_open(path, framework="numpy") as f:
                for hf_name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    name = gguf_name(hf_name)
                    if name is None or (tied and name == "output.weight"):
                        continue
                    view = f.get_slice(hf_name)
                    self._where[name] = (path, hf_name)
                    self._dtypes[name] = view.get_dtype()
                    self._sizes[name] = int(np.prod(view.get_shape()))

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def names(self) -> list[str]:
        return list(self._where)

    def type_of(self, name: str) -> str:
        return self._dtypes[name]

    def num_elements(self) -> int:
        return sum(self._sizes.values())

    def get(self, name: str) -> np.ndarray:
        if name not in self._where:
            raise GGUFError(f"checkpoint lacks the tensor for {name}")
        path, hf_name = self._where[name]
        with safe_open(path, framework="numpy") as f:
            return np.asarray(f.get_tensor(hf_name), dtype=np.float32)


@dataclass(frozen=True)
class HFModelFile:
    """An opened checkpoint folder: its config and tensor catalogue, weights not yet read."""

    path: Path
    hf_config: dict[str, Any]
    config: ModelConfig
    source: SafetensorsTensors

    @classmethod
    def open(cls, path: str | Path) -> HFModelFile:
        folder = Path(path)
        try:
            hf = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise GGUFError(f"cannot read {folder / 'config.json'}: {e}") from e
        config = ModelConfig.from_hf(hf)
        source = SafetensorsTensors(folder, tied=config.tie_embeddings)
        if not config.tie_embeddings and "output.weight" not in source:
            raise GGUFError(f"{folder}: tie_word_embeddings is false but lm_head.weight is missing")
        return cls(path=folder, hf_config=hf, config=config, source=source)

    def tokenizer(self):
        from jaxserve.text.tokenizer_hf import HFTokenizer

        return HFTokenizer(self.path)

    def tokenizer_kind(self) -> str:
        return "tokenizer.json (tokenizers)"

    def tensor_types(self) -> Counter[str]:
        return Counter(self.source.type_of(name) for name in self.source.names())

    def num_parameters(self) -> int:
        return self.source.num_elements()

    def load_weights(self, fmt: WeightFormat, *, cache: Path | None = None) -> ModelWeights:
        """Every tensor converted to `fmt` (folders always convert afresh; `cache` is unused)."""
        return read_weights(self.source, self.config, fmt)

    def build_model(self, fmt: WeightFormat, *, cache: Path | None = None) -> nnx.Module:
        return build_model(self.config, self.load_weights(fmt))
