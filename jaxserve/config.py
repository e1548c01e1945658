"""Frozen configs in the project's own vocabulary, translated once from GGUF metadata."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from jaxserve.errors import GGUFError

WeightFormat = Literal["int8", "f32", "bf16"]
RopeStyle = Literal["interleaved", "neox"]


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
    # Sliding-window (local) layers: with `sliding_window > 0`, every layer is local when the
    # pattern is 0 (Mistral), else layer i is local when `i % n < n - 1` (llama.cpp's
    # `set_swa_pattern(n)`, Gemma 3). A local layer sees keys at positions > query - window.
    sliding_window: int = 0
    sliding_window_pattern: int = 0
    rope_theta_local: float | None = None  # RoPE base of local layers (None: rope_theta)
    # Per-frequency RoPE divisors [head_dim / 2] (Llama 3 scaling, linear scaling), None: none.
    rope_freq_factors: tuple[float, ...] | None = None
    qkv_bias: bool = False  # q/k/v projections carry biases (Qwen2)
    qk_norm: bool = False  # RMSNorm over each head of q and k before RoPE (Qwen3, Gemma 3)
    attention_scale: float | None = None  # query scale (None: 1 / sqrt(head_dim))
    embedding_scale: float = 1.0  # token embeddings are multiplied by this (Gemma: sqrt(hidden))
    final_logit_softcap: float = 0.0  # logits -> cap * tanh(logits / cap) when > 0
    # Attention and int8 matmuls: pure-jnp references ("reference", XLA; the CPU default),
    # Pallas kernels ("pallas", TPU/GPU) or Pallas in interpret mode ("interpret", CPU tests).
    kernels: str = "reference"
    # KV cache format (`jaxserve.runtime.kv_cache.KVCache`): "f32" or "bf16" values, or "q8_0"
    # (int8 blocks of 32 with f32 scales, which the batch-invariant attention multiplies exactly).
    kv_format: str = "f32"

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
        return self.sliding_window > 0 and (n == 0 or layer % n < n - 1)

    def features(self) -> list[str]:
        """What this config uses beyond a plain Llama layer, for `jaxserve info`."""
        out = [f"rope {self.rope_style}"]
        if self.rope_freq_factors is not None:
            out.append("rope frequency scaling")
        if self.sliding_window:
            local = sum(self.is_local_layer(i) for i in range(self.num_layers))
            out.append(f"sliding window {self.sliding_window} ({local}/{self.num_layers} layers)")
        if self.rope_theta_local is not None:
            out.append(f"local rope base {self.rope_theta_local:g}")
        if self.num_kv_heads == 1:
            out.append("MQA")
        elif self.num_kv_heads < self.num_heads:
            out.append(f"GQA ({self.q_per_kv} q heads per kv head)")
        else:
            out.append("MHA")
        out += [name for name, on in (("qkv bias", self.qkv_bias), ("qk norm", self.qk_norm)) if on]
        if self.embedding_scale != 1.0:
            out.append(f"embedding scale {self.embedding_scale:g}")
        if self.final_logit_softcap:
            out.append(f"logit softcap {self.final_logit_softcap:g}")
        out.append("tied embeddings" if self.tie_embeddings else "separate output head")
        if self.kernels != "reference":
            out.append(f"{self.kernels} kernels")
        return out

    @classmethod
    def from_gguf(
        cls,
        meta: Mapping[str, Any],
        *,
        has_output: bool,
        rope_freqs: Sequence[float] | None = None,
    ) -> ModelConfig:
        """Translate GGUF metadata (`general.*`, `{arch}.*`) into a ModelConfig.

        `rope_freqs` is the file's `rope_freqs.weight` (per-frequency RoPE divisors, as llama.cpp's
        converter writes them for Llama 3), if it has one. The architecture's own conventions come
        from its family module (`models.registry`).
        """
        from jaxserve.models.registry import family_for_gguf

        arch = meta.get("general.architecture")
        family = family_for_gguf(arch)

        def get(key: str, default: Any = None) -> Any:
            value = meta.get(f"{arch}.{key}", default)
            if value is None:
                raise GGUFError(f"GGUF metadata lacks {arch}.{key}")
            return value

        hidden = int(get("embedding_length"))
        num_heads = int(get("attention.head_count"))
        head_dim = int(meta.get(f"{arch}.attention.key_length", hidden // num_heads))
        vocab = meta.get(f"{arch}.vocab_size") or len(meta.get("tokenizer.ggml.tokens", ()))
        fields: dict[str, Any] = dict(
            architecture=family.name,
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
            rope_freq_factors=gguf_rope_factors(meta, arch, head_dim, rope_freqs),
        )
        fields.update(family.module().gguf_config(meta, get, fields))
        return cls(**fields)

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any]) -> ModelConfig:
        """Translate a Hugging Face `config.json` (decoder-only families) into a ModelConfig."""
        from jaxserve.models.registry import family_for_hf

        names = hf.get("architectures") or [hf.get("model_type")]
        family = family_for_hf(names[0])

        def get(key: str, default: Any = None) -> Any:
            value = hf.get(key, default)
            if value is None:
                raise GGUFError(f"config.json lacks {key}")
            return value

        hidden = int(get("hidden_size"))
        num_heads = int(get("num_attention_heads"))
        rope = dict(hf.get("rope_parameters") or {})  # transformers >= 5
        legacy = hf.get("rope_scaling") or {}  # older checkpoints
        rope = {**legacy, **rope}
        fields: dict[str, Any] = dict(
            architecture=family.name,
            name=str(hf.get("_name_or_path") or family.name),
            num_layers=int(get("num_hidden_layers")),
            hidden_size=hidden,
            intermediate_size=int(get("intermediate_size")),
            num_heads=num_heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
            head_dim=int(hf.get("head_dim") or hidden // num_heads),
            vocab_size=int(get("vocab_size")),
            max_position=int(get("max_position_embeddings")),
            rope_theta=float(rope.get("rope_theta") or hf.get("rope_theta") or 10000.0),
            # HF keeps q/k rows in their natural order and rotates halves (NeoX form).
            rope_style="neox",
            norm_eps=float(get("rms_norm_eps")),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        )
        fields["rope_freq_factors"] = hf_rope_factors(rope, fields)
        fields.update(family.module().hf_config(hf, fields))
        return cls(**fields)


def rope_inv_freq(theta: float, head_dim: int) -> list[float]:
    """The unscaled RoPE frequencies `theta ** (-2i / head_dim)`, i < head_dim / 2."""
    return [theta ** (-2 * i / head_dim) for i in range(head_dim // 2)]


def gguf_rope_factors(
    meta: Mapping[str, Any], arch: str, head_dim: int, rope_freqs: Sequence[float] | None
) -> tuple[float, ...] | None:
    """RoPE divisors from `rope_freqs.weight` and `{arch}.rope.scaling.*` (linear only)."""
    kind = meta.get(f"{arch}.rope.scaling.type") or "none"
    factor = float(meta.get(f"{arch}.rope.scaling.factor") or 1.0)
    if kind not in ("none", "linear"):
        raise GGUFError(f"unsupported RoPE scaling {arch}.rope.scaling.type={kind!r}")
    factors = [1.0] * (head_dim // 2) if rope_freqs is None else [float(f) for f in rope_freqs]
    if len(factors) != head_dim // 2:
        raise GGUFError(f"rope_freqs has {len(factors)} values for head_dim {head_dim}")
    if kind == "linear":
        factors = [f * factor for f in factors]
    return None if all(f == 1.0 for f in factors) else tuple(factors)


def hf_rope_factors(rope: Mapping[str, Any], fields: Mapping[str, Any]) -> tuple[float, ...] | None:
    """Per-frequency divisors for HF `rope_parameters` (`default`, `linear`, `llama3`).

    Llama 3 keeps high frequencies, divides low ones by `factor` and blends in between; the
    divisors are what llama.cpp's converter stores as `rope_freqs.weight`.
    """
    kind = rope.get("rope_type") or rope.get("type") or "default"
    half = fields["head_dim"] // 2
    if kind == "default":
        return None
    factor = float(rope.get("factor", 1.0))
    if kind == "linear":
        return (factor,) * half
    if kind != "llama3":
        raise GGUFError(
            f"unsupported RoPE scaling rope_type={kind!r}; supported: default, linear, llama3"
        )
    low, high = float(rope["low_freq_factor"]), float(rope["high_freq_factor"])
    old_len = float(rope["original_max_position_embeddings"])
    out = []
    for f in rope_inv_freq(fields["rope_theta"], fields["head_dim"]):
        wavelen = 2 * math.pi / f
        if wavelen < old_len / high:
            out.append(1.0)
        elif wavelen > old_len / low:
            out.append(factor)
        else:
            smooth = (old_len / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return tuple(out)
