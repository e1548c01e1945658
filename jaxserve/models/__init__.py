"""Model families, keyed by GGUF `general.architecture`."""

from __future__ import annotations

from jaxserve.models.gemma3 import LAYER_TENSORS as GEMMA3_LAYER_TENSORS
from jaxserve.models.gemma3 import Gemma3
from jaxserve.models.llama import LAYER_TENSORS as LLAMA_LAYER_TENSORS
from jaxserve.models.llama import Llama

ARCHITECTURES = {
    "llama": (Llama, LLAMA_LAYER_TENSORS),
    "gemma3": (Gemma3, GEMMA3_LAYER_TENSORS),
}

__all__ = ["ARCHITECTURES", "Gemma3", "Llama"]
