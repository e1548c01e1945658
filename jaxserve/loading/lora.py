"""LoRA adapters: PEFT folders and llama.cpp GGUF LoRA files, as low-rank pairs per layer and
projection in the base model's own layout.

A pair adds `scale * x @ A @ B` to a projection's output, with A `[in, r]` and B `[r, out]`
(the transposes of PEFT's `lora_A` `[r, in]` and `lora_B` `[out, r]`); `scale` is
`lora_alpha / r` (`lora_alpha / sqrt(r)` with rsLoRA). llama.cpp's `llama` GGUFs hold the q and k
rows permuted for interleaved RoPE, and its LoRA converter permutes `lora_b` of q and k the same
way: a PEFT adapter applied to such a base gets the same permutation here.

- PEFT: `adapter_config.json` + `adapter_model.safetensors` (keys
  `base_model.model.model.layers.N.{self_attn,mlp}.X_proj.lora_{A,B}.weight`).
- GGUF (`convert_lora_to_gguf.py`): `general.type = adapter`, `adapter.type = lora`,
  `adapter.lora.alpha`, tensors `blk.N.<projection>.weight.lora_{a,b}`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFWriter
from gguf.quants import dequantize

from jaxserve.config import ModelConfig
from jaxserve.errors import GGUFError

# The projections an adapter may touch, by their GGUF names (`models/llama.py` `LINEARS`).
PROJECTIONS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
PEFT_MODULES = {
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    "o_proj": "attn_output",
    "gate_proj": "ffn_gate",
    "up_proj": "ffn_up",
    "down_proj": "ffn_down",
}
_PEFT_KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+?)\.lora_([AB])(?:\.\w+)?\.weight$")
_GGUF_KEY = re.compile(r"^blk\.(\d+)\.(\w+)\.weight\.lora_([ab])$")


@dataclass(frozen=True)
class LoRAAdapter:
    """pairs: {(layer, projection): (A [in, r] f32, B [r, out] f32)}, the scale folded into B."""

    rank: int
    pairs: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]]

    def projections(self) -> set[str]:
        return {name for _, name in self.pairs}


def projection_shape(config: ModelConfig, name: str) -> tuple[int, int]:
    """(in, out) of a projection of `config`'s layers."""
    e, f = config.hidden_size, config.intermediate_size
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    return {
        "attn_q": (e, q),
        "attn_k": (e, kv),
        "attn_v": (e, kv),
        "attn_output": (q, e),
        "ffn_gate": (e, f),
        "ffn_up": (e, f),
        "ffn_down": (f, e),
    }[name]


def load_lora(path: str | Path, config: ModelConfig) -> LoRAAdapter:
    """A PEFT folder or a GGUF LoRA file, checked against the base model's `config`."""
    path = Path(path).expanduser()
    if path.is_dir():
        return load_peft(path, config)
    if path.is_file():
        return load_gguf_lora(path, config)
    raise FileNotFoundError(f"no LoRA adapter at {path} (a PEFT folder or a .gguf file)")


def load_peft(folder: Path, config: ModelConfig) -> LoRAAdapter:
    """A PEFT LoRA folder (`adapter_config.json`, `adapter_model.safetensors`)."""
    from safetensors.numpy import load_file

    try:
        meta = json.loads((folder / "adapter_config.json").read_text())
    except (OSError, ValueError) as error:
        raise GGUFError(f"{folder}: no readable adapter_config.json ({error})") from None
    if meta.get("peft_type", "LORA") != "LORA":
        raise GGUFError(f"{folder}: peft_type {meta.get('peft_type')!r} is not LORA")
    for key, bad in (("use_dora", True), ("fan_in_fan_out", True)):
        if meta.get(key) == bad:
            raise GGUFError(f"{folder}: {key}={bad} adapters are not supported")
    if meta.get("bias", "none") != "none" or meta.get("modules_to_save"):
        raise GGUFError(
            f"{folder}: adapters with trained biases or modules_to_save are not supported"
        )
    if meta.get("rank_pattern") or meta.get("alpha_pattern"):
        raise GGUFError(f"{folder}: per-module rank_pattern / alpha_pattern are not supported")
    rank, alpha = int(meta["r"]), float(meta.get("lora_alpha", meta["r"]))
    scale = alpha / math.sqrt(rank) if meta.get("use_rslora") else alpha / rank
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        raise GGUFError(f"{folder}: no adapter_model.safetensors")
    found: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for key, value in load_file(str(weights)).items():
        match = _PEFT_KEY.search(key)
        if match is None or match.group(2) not in PEFT_MODULES:
            raise GGUFError(f"{folder}: unsupported adapter tensor {key}")
        layer, name = int(match.group(1)), PEFT_MODULES[match.group(2)]
        found.setdefault((layer, name), {})[match.group(3)] = value.astype(np.float32)
    pairs = {}
    for (layer, name), ab in found.items():
        if set(ab) != {"A", "B"}:
            raise GGUFError(f"{folder}: layer {layer} {name} lacks lora_A or lora_B")
        b = _as_gguf_rows(ab["B"], name, config)  # [out, r]
        pairs[(layer, name)] = _pair(ab["A"], b, scale, layer, name, config, str(folder))
    return LoRAAdapter(rank=rank, pairs=pairs)


def load_gguf_lora(path: Path, config: ModelConfig) -> LoRAAdapter:
    """A llama.cpp LoRA GGUF (`convert_lora_to_gguf.py`)."""
    try:
        reader = GGUFReader(str(path))
    except (OSError, ValueError) as error:
        raise GGUFError(f"{path}: not a readable GGUF file ({error})") from None
    fields = {name: _field(reader, name) for name in reader.fields}
    if fields.get("general.type") != "adapter" or fields.get("adapter.type") != "lora":
        raise GGUFError(f"{path}: not a LoRA adapter (general.type / adapter.type)")
    arch = fields.get("general.architecture")
    if arch is not None and arch != config.architecture:
        raise GGUFError(f"{path}: an adapter for {arch}, the model is {config.architecture}")
    alpha = float(fields.get("adapter.lora.alpha") or 0.0)
    found: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for tensor in reader.tensors:
        match = _GGUF_KEY.match(tensor.name)
        if match is None or match.group(2) not in PROJECTIONS:
            raise GGUFError(f"{path}: unsupported adapter tensor {tensor.name}")
        data = dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        shape = tuple(int(n) for n in reversed(tensor.shape))
        key = (int(match.group(1)), match.group(2))
        found.setdefault(key, {})[match.group(3)] = data.reshape(shape)
    pairs, ranks = {}, set()
    for (layer, name), ab in found.items():
        if set(ab) != {"a", "b"}:
            raise GGUFError(f"{path}: layer {layer} {name} lacks lora_a or lora_b")
        rank = ab["a"].shape[0]
        ranks.add(rank)
        scale = alpha / rank if alpha else 1.0  # llama.cpp: no alpha means scale 1
        pairs[(layer, name)] = _pair(ab["a"], ab["b"], scale, layer, name, config, str(path))
    if not pairs:
        raise GGUFError(f"{path}: no lora_a / lora_b tensors")
    return LoRAAdapter(rank=max(ranks), pairs=pairs)


def _pair(
    a: np.ndarray, b: np.ndarray, scale: float, layer: int, name: str, config: ModelConfig, where
) -> tuple[np.ndarray, np.ndarray]:
    """(A [in, r], B * scale [r, out]) from PEFT's [r, in] and [out, r], checked."""
    if not 0 <= layer < config.num_layers:
        raise GGUFError(f"{where}: layer {layer} is outside the model's {config.num_layers}")
    d_in, d_out = projection_shape(config, name)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
        raise GGUFError(f"{where}: layer {layer} {name}: A {a.shape} and B {b.shape} mismatch")
    if a.shape[1] != d_in or b.shape[0] != d_out:
        raise GGUFError(
            f"{where}: layer {layer} {name} maps {a.shape[1]} -> {b.shape[0]}, the model's "
            f"{d_in} -> {d_out}"
        )
    return np.ascontiguousarray(a.T), np.ascontiguousarray(b.T * np.float32(scale))


def _as_gguf_rows(b: np.ndarray, name: str, config: ModelConfig) -> np.ndarray:
    """PEFT's `lora_B` [out, r] in the base's row order: q/k rows permuted for `llama` GGUFs."""
    if config.rope_style != "interleaved" or name not in ("attn_q", "attn_k"):
        return b
    return permute_rows(b, config.num_heads if name == "attn_q" else config.num_kv_heads)


def permute_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q/k permutation of output rows (rotate-half order -> interleaved pairs)."""
    return (
        w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )


def _field(reader: GGUFReader, name: str):
    field = reader.fields[name]
    if not field.types:
        return None
    value = field.parts[-1]
    if field.types[0].name == "STRING":
        return bytes(value).decode("utf-8", "replace")
    return value.tolist()[0] if value.size == 1 else value.tolist()


def convert_peft_to_gguf(folder: str | Path, path: str | Path, config: ModelConfig) -> Path:
    """Write a PEFT LoRA folder as llama.cpp's LoRA GGUF for a base model of `config`, as its
    `convert_lora_to_gguf.py` does (f32 tensors, q/k `lora_b` permuted for `llama` bases)."""
    from safetensors.numpy import load_file

    folder = Path(folder)
    meta = json.loads((folder / "adapter_config.json").read_text())
    writer = GGUFWriter(str(path), config.architecture)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(meta.get("lora_alpha", meta["r"])))
    for key, value in sorted(load_file(str(folder / "adapter_model.safetensors")).items()):
        match = _PEFT_KEY.search(key)
        if match is None or match.group(2) not in PEFT_MODULES:
            raise GGUFError(f"{folder}: unsupported adapter tensor {key}")
        layer, name = int(match.group(1)), PEFT_MODULES[match.group(2)]
        value = value.astype(np.float32)
        if match.group(3) == "B" and config.rope_style == "interleaved":
            if name in ("attn_q", "attn_k"):
                value = permute_rows(
                    value, config.num_heads if name == "attn_q" else config.num_kv_heads
                )
        writer.add_tensor(f"blk.{layer}.{name}.weight.lora_{match.group(3).lower()}", value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)
