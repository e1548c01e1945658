"""Architecture names (GGUF `general.architecture`, HF `architectures`) -> model families.

A family module is imported only when a model of that family is opened. Each one provides:

- `MODEL`: the Flax NNX class, built as `MODEL(config, weights)`;
- `layer_tensors(config)`: the per-layer tensor names it reads (GGUF names without `.weight`;
  a `_bias` suffix names a `.bias` tensor);
- `gguf_config(meta, get, fields)` and, for families with HF names, `hf_config(hf, fields)`: the
  family's own `ModelConfig` fields from GGUF metadata or a HF `config.json`, given the common
  ones already read.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from jaxserve.errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class Family:
    name: str  # the project's name, `ModelConfig.architecture`
    module_name: str
    gguf_names: tuple[str, ...]
    hf_names: tuple[str, ...]

    def module(self) -> ModuleType:
        return importlib.import_module(self.module_name)


FAMILIES = (
    Family("llama", "jaxserve.models.llama", ("llama",), ("LlamaForCausalLM",)),
    # Mistral GGUFs are written with the `llama` architecture.
    Family("mistral", "jaxserve.models.llama", (), ("MistralForCausalLM",)),
    Family("qwen2", "jaxserve.models.qwen", ("qwen2",), ("Qwen2ForCausalLM",)),
    Family("qwen3", "jaxserve.models.qwen", ("qwen3",), ("Qwen3ForCausalLM",)),
    Family("gemma3", "jaxserve.models.gemma3", ("gemma3",), ()),
)


def supported() -> str:
    gguf = sorted({n for f in FAMILIES for n in f.gguf_names})
    hf = sorted({n for f in FAMILIES for n in f.hf_names})
    return f"GGUF: {', '.join(gguf)}; Hugging Face: {', '.join(hf)}"


def _unsupported(arch: object) -> UnsupportedArchitectureError:
    return UnsupportedArchitectureError(
        f"unsupported architecture {arch!r}; supported: {supported()}"
    )


def _find(matches, name: object) -> Family:
    for family in FAMILIES:
        if matches(family):
            return family
    raise _unsupported(name)


def family_for_gguf(arch: object) -> Family:
    """The family of a GGUF `general.architecture`, or an error listing the supported ones."""
    return _find(lambda f: arch in f.gguf_names, arch)


def family_for_hf(arch: object) -> Family:
    """The family of a HF `architectures[0]`, or an error listing the supported ones."""
    return _find(lambda f: arch in f.hf_names, arch)


def family(name: str) -> Family:
    """The family of a `ModelConfig.architecture`."""
    return _find(lambda f: f.name == name, name)
