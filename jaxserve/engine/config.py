"""The engine's memory, model, research and adapter settings (host only)."""

from __future__ import annotations

from dataclasses import dataclass

from jaxserve.config import WeightFormat
from jaxserve.engine.speculation import SpeculativeConfig


@dataclass(frozen=True)
class EngineConfig:
    """Memory and model settings. `max_model_len` None means the model's context, capped at 4096."""

    weights: WeightFormat = "int8"
    page_size: int = 16
    kv_cache_bytes: int = 512 * 2**20  # int8 SmolLM2: 2589 pages of 16 tokens (64 rows of 640)
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    compilation_cache_dir: str | None = None  # None: <model cache>/xla; "": off
    seed: int = 0
    grammar_states: int = 1024  # on-device constraint table capacity (0: host masks only)
    capture_layers: int = 0  # layers a request may capture (hidden states, logit lens); 0: off
    steering_slots: int = 0  # steering vectors the device holds at once; 0: no steering
    speculative: SpeculativeConfig | None = None  # speculative decoding (None: off)
    max_loras: int = 0  # LoRA adapters the device holds at once; 0: no adapters
    max_lora_rank: int = 16  # the largest rank an adapter may have (smaller ones are padded)

    def __post_init__(self) -> None:
        if self.weights not in ("int8", "f32", "bf16"):
            raise ValueError(f"weights must be 'int8', 'f32' or 'bf16', got {self.weights!r}")
        if self.page_size < 1 or self.kv_cache_bytes < 1:
            raise ValueError("page_size and kv_cache_bytes must be positive")
        if not isinstance(self.max_lora_rank, int) or not 1 <= self.max_lora_rank <= 512:
            raise ValueError(f"max_lora_rank must be in [1, 512], got {self.max_lora_rank!r}")
        for name in ("capture_layers", "steering_slots", "max_loras"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value <= 256:
                raise ValueError(f"{name} must be an integer in [0, 256], got {value!r}")
