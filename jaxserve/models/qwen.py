"""Qwen2 and Qwen3: Llama layers with biased q/k/v projections (Qwen2) or per-head q/k RMSNorm
(Qwen3). Both use NeoX RoPE in GGUF as in Hugging Face checkpoints (llama.cpp does not permute
their q/k rows), and Qwen3 gives `head_dim` explicitly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from jaxserve.errors import GGUFError
from jaxserve.models.llama import Llama, layer_tensors

MODEL = Llama

__all__ = ["MODEL", "gguf_config", "hf_config", "layer_tensors"]


def gguf_config(
    meta: Mapping[str, Any], get: Callable[..., Any], fields: Mapping[str, Any]
) -> dict[str, Any]:
    qwen3 = fields["architecture"] == "qwen3"
    return {"rope_style": "neox", "qkv_bias": not qwen3, "qk_norm": qwen3}


def hf_config(hf: Mapping[str, Any], fields: Mapping[str, Any]) -> dict[str, Any]:
    if hf.get("use_sliding_window"):
        raise GGUFError("unsupported use_sliding_window=true (Qwen sliding-window layers)")
    if hf.get("hidden_act", "silu") != "silu":
        raise GGUFError(f"unsupported hidden_act {hf['hidden_act']!r} (only silu)")
    qwen3 = fields["architecture"] == "qwen3"
    return {"qkv_bias": bool(hf.get("attention_bias", not qwen3)), "qk_norm": qwen3}
