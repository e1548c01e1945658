"""Writes a tiny random llama-architecture GGUF (several quant types) for fast tests."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gguf
import numpy as np

Q = gguf.GGMLQuantizationType

TINY = dict(hidden=64, ffn=256, layers=2, heads=4, kv_heads=2, context=256, rope_theta=10000.0)

# Tensor -> type per layer (layer i uses entry i % len). K-quants need 256-wide rows: only
# ffn_down (input 256) can hold them.
LAYER_TYPES: dict[str, tuple[Q, ...]] = {
    "attn_q": (Q.Q8_0, Q.F16),
    "attn_k": (Q.Q4_0, Q.Q8_0),
    "attn_v": (Q.Q4_1, Q.BF16),
    "attn_output": (Q.Q5_0, Q.Q5_1),
    "ffn_gate": (Q.F16, Q.Q8_0),
    "ffn_up": (Q.Q5_1, Q.Q4_1),
    "ffn_down": (Q.Q4_K, Q.Q6_K),
}
# Every layer matrix in a 4-bit legacy format: the int8 copy uses 64-value blocks.
Q4_LAYER_TYPES = {name: (Q.Q4_1, Q.Q4_0) for name in LAYER_TYPES}


def _kquant_bytes(rows: int, cols: int, qtype: Q, rng: np.random.Generator) -> np.ndarray:
    """Random K-quant blocks with small, finite fp16 super-block scales."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    data = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
    d = np.frombuffer(np.float16(0.002).tobytes(), np.uint8)
    dmin = np.frombuffer(np.float16(0.001).tobytes(), np.uint8)
    if qtype == Q.Q6_K:  # ql, qh, scales (int8), d
        data[..., -2:] = d
    else:  # Q4_K / Q5_K: d, dmin, scales, ...
        data[..., 0:2] = d
        data[..., 2:4] = dmin
    return data.reshape(rows, -1)


def _tensor(shape: tuple[int, int] | tuple[int], qtype: Q, rng: np.random.Generator) -> np.ndarray:
    """Random weights (numpy order `(out, in)`) encoded as `qtype`."""
    if qtype in (Q.Q4_K, Q.Q5_K, Q.Q6_K):
        return _kquant_bytes(shape[0], shape[1], qtype, rng)
    x = (rng.standard_normal(shape) * 0.08).astype(np.float32)
    if qtype == Q.F32:
        return x
    if qtype == Q.F16:
        return x.astype(np.float16)
    return gguf.quants.quantize(x, qtype)


def add_metadata(writer: gguf.GGUFWriter, meta: Mapping[str, Any]) -> None:
    for key, value in meta.items():
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        elif isinstance(value, (list, tuple)):
            writer.add_array(key, list(value))
        else:
            raise TypeError(f"cannot write {key}={value!r}")


def write_tiny_gguf(
    path: Path,
    tokenizer_meta: Mapping[str, Any],
    *,
    tied: bool = True,
    seed: int = 0,
    architecture: str = "llama",
    layer_types: Mapping[str, tuple[Q, ...]] = LAYER_TYPES,
) -> Path:
    """Write a 2-layer llama GGUF with random weights in mixed quant types to `path`."""
    rng = np.random.default_rng(seed)
    t = TINY
    vocab = len(tokenizer_meta["tokenizer.ggml.tokens"])
    head_dim = t["hidden"] // t["heads"]
    writer = gguf.GGUFWriter(str(path), architecture)
    arch = architecture
    add_metadata(
        writer,
        {
            "general.name": "tiny-random-llama",
            f"{arch}.block_count": t["layers"],
            f"{arch}.context_length": t["context"],
            f"{arch}.embedding_length": t["hidden"],
            f"{arch}.feed_forward_length": t["ffn"],
            f"{arch}.attention.head_count": t["heads"],
            f"{arch}.attention.head_count_kv": t["kv_heads"],
            f"{arch}.rope.freq_base": t["rope_theta"],
            f"{arch}.attention.layer_norm_rms_epsilon": 1e-5,
            f"{arch}.rope.dimension_count": head_dim,
            f"{arch}.vocab_size": vocab,
            **tokenizer_meta,
        },
    )
    hidden, ffn, kv_dim = t["hidden"], t["ffn"], t["kv_heads"] * head_dim
    shapes = {
        "attn_q": (hidden, hidden),
        "attn_k": (kv_dim, hidden),
        "attn_v": (kv_dim, hidden),
        "attn_output": (hidden, hidden),
        "ffn_gate": (ffn, hidden),
        "ffn_up": (ffn, hidden),
        "ffn_down": (hidden, ffn),
    }
    tensors: dict[str, tuple[np.ndarray, Q]] = {
        "token_embd.weight": (_tensor((vocab, hidden), Q.Q8_0, rng), Q.Q8_0),
        "output_norm.weight": (1.0 + 0.1 * rng.standard_normal(hidden).astype(np.float32), Q.F32),
    }
    if not tied:
        tensors["output.weight"] = (_tensor((vocab, hidden), Q.F16, rng), Q.F16)
    for i in range(t["layers"]):
        for name in ("attn_norm", "ffn_norm"):
            norm = 1.0 + 0.1 * rng.standard_normal(hidden).astype(np.float32)
            tensors[f"blk.{i}.{name}.weight"] = (norm, Q.F32)
        for name, types in layer_types.items():
            qtype = types[i % len(types)]
            tensors[f"blk.{i}.{name}.weight"] = (_tensor(shapes[name], qtype, rng), qtype)
    for name, (data, qtype) in tensors.items():
        raw = qtype if data.dtype == np.uint8 else None
        writer.add_tensor(name, data, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
