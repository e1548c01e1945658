"""Frozen configs in the project's own vocabulary, translated once from GGUF metadata."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from jaxserve.errors import GGUFError, UnsupportedArchitectureError

WeightFormat = Literal["int8", "f32"]
RopeStyle = Literal["interleaved", "neox"]

SUPPORTED_ARCHITECTURES = ("llama", "gemma3")

# llama.cpp hard-codes these for Gemma 3 (llama-model.cpp): every 6th layer is global, the
# sliding-window layers use RoPE base 10k.
GEMMA3_SWA_PATTERN = 6
GEMMA3_LOCAL_ROPE_THETA = 10000.0


@dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a decoder-only transformer."""

    architecture: str
    name: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_position: int
    rope_theta: float
    rope_style: RopeStyle
    norm_eps: float
    tie_embeddings: bool
    # Sliding-window (local) layers, as llama.cpp's `set_swa_pattern(n)`: layer i is local when
    # `n > 0 and i % n < n - 1`; a local layer sees keys at positions > query - sliding_window.
    sliding_window: int = 0
    sliding_window_pattern: int = 0
    rope_theta_local: float | None = None  # RoPE base of local layers (None: rope_theta)
    attention_scale: float | None = None  # query scale (None: 1 / sqrt(head_dim))
    embedding_scale: float = 1.0  # token embeddings are multiplied by this (Gemma: sqrt(hidden))
    final_logit_softcap: float = 0.0  # logits -> cap * tanh(logits / cap) when > 0

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise GGUFError(
                f"head_count {self.num_heads} is not a multiple of "
                f"head_count_kv {self.num_kv_heads}"
            )
        for field in ("num_layers", "hidden_size", "intermediate_size", "head_dim", "vocab_size"):
            if getattr(self, field) <= 0:
                raise GGUFError(f"model config has a non-positive {field}")

    @property
    def q_per_kv(self) -> int:
        return self.num_heads // self.num_kv_heads

    def is_local_layer(self, layer: int) -> bool:
        """Whether `layer` attends within the sliding window only."""
        n = self.sliding_window_pattern
        return self.sliding_window > 0 and n > 0 and layer % n < n - 1

    @classmethod
    def from_gguf(cls, meta: Mapping[str, Any], *, has_output: bool) -> ModelConfig:
        """Translate GGUF metadata (`general.*`, `{arch}.*`) into a ModelConfig."""
        arch = meta.get("general.architecture")
        if arch not in SUPPORTED_ARCHITECTURES:
            raise UnsupportedArchitectureError(
                f"unsupported architecture {arch!r}; "
                f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )

        def get(key: str, default: Any = None) -> Any:
            value = meta.get(f"{arch}.{key}", default)
            if value is None:
                raise GGUFError(f"GGUF metadata lacks {arch}.{key}")
            return value

        hidden = int(get("embedding_length"))
        num_heads = int(get("attention.head_count"))
        head_dim = int(meta.get(f"{arch}.attention.key_length", hidden // num_heads))
        vocab = meta.get(f"{arch}.vocab_size") or len(meta.get("tokenizer.ggml.tokens", ()))
        # llama.cpp's converter permutes llama Q/K rows for its interleaved-pair RoPE.
        extra: dict[str, Any] = {"rope_style": "interleaved"}
        if arch == "gemma3":
            # As llama.cpp runs Gemma 3 (checked against its logits): NeoX RoPE, norm weights that
            # already hold Gemma's (1 + w) offset, q scaled by 1/sqrt(key_length).
            extra = {
                "rope_style": "neox",
                "sliding_window": int(get("attention.sliding_window")),
                "sliding_window_pattern": GEMMA3_SWA_PATTERN,
                "rope_theta_local": GEMMA3_LOCAL_ROPE_THETA,
                "attention_scale": head_dim**-0.5,
                "embedding_scale": float(hidden) ** 0.5,
                "final_logit_softcap": float(meta.get(f"{arch}.final_logit_softcapping", 0.0)),
            }
        return cls(
            architecture=arch,
            name=str(meta.get("general.name", arch)),
            num_layers=int(get("block_count")),
            hidden_size=hidden,
            intermediate_size=int(get("feed_forward_length")),
            num_heads=num_heads,
            num_kv_heads=int(get("attention.head_count_kv", num_heads)),
            head_dim=head_dim,
            vocab_size=int(vocab),
            max_position=int(get("context_length")),
            rope_theta=float(get("rope.freq_base", 10000.0)),
            norm_eps=float(get("attention.layer_norm_rms_epsilon")),
            tie_embeddings=not has_output,
            **extra,
        )
