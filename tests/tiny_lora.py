"""Random LoRA adapters in PEFT's folder layout, for any model config (tests only)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from jaxserve.config import ModelConfig
from jaxserve.loading.lora import PEFT_MODULES, projection_shape

ALL_MODULES = tuple(PEFT_MODULES)


def write_random_peft(
    folder: Path,
    config: ModelConfig,
    *,
    rank: int,
    seed: int,
    modules: Sequence[str] = ALL_MODULES,
    alpha: float | None = None,
    std: float = 0.3,
    hidden_size: int | None = None,
) -> Path:
    """adapter_config.json + adapter_model.safetensors with random A and B on every layer's
    `modules` (PEFT names). `hidden_size` overrides the model's, for mismatched adapters."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in range(config.num_layers):
        for module in modules:
            d_in, d_out = projection_shape(config, PEFT_MODULES[module])
            if hidden_size is not None:
                d_in = hidden_size
            part = "self_attn" if module in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            key = f"base_model.model.model.layers.{layer}.{part}.{module}"
            tensors[f"{key}.lora_A.weight"] = (std * rng.standard_normal((rank, d_in))).astype(
                np.float32
            )
            tensors[f"{key}.lora_B.weight"] = (std * rng.standard_normal((d_out, rank))).astype(
                np.float32
            )
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    meta = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": alpha if alpha is not None else 2 * rank,
        "target_modules": list(modules),
        "bias": "none",
        "task_type": "CAUSAL_LM",
    }
    (folder / "adapter_config.json").write_text(json.dumps(meta))
    return folder
