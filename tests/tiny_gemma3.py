"""Writes a tiny random gemma3-architecture GGUF (mixed quant types, as Gemma's Q4_K_M file)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from tests.tiny_gguf import _tensor, add_metadata

Q = gguf.GGMLQuantizationType

# Six layers: llama.cpp makes every 6th Gemma 3 layer global, so layers 0-4 are local (window
# of 4 tokens) and layer 5 global. head_dim (key_length) differs from hidden / heads on purpose.
TINY_GEMMA3 = dict(
    hidden=64, ffn=256, layers=6, heads=4, kv_heads=2, head_dim=32, context=256, window=4
)

LAYER_TYPES: dict[str, tuple[Q, ...]] = {
    "attn_q": (Q.Q5_0, Q.Q8_0),
    "attn_k": (Q.Q5_0, Q.F16),
    "attn_v": (Q.Q8_0, Q.Q5_0),
    "attn_output": (Q.Q5_0, Q.Q4_0),
    "ffn_gate": (Q.Q5_0, Q.F16),
    "ffn_up": (Q.Q8_0, Q.Q5_0),
    "ffn_down": (Q.Q6_K, Q.Q4_K),
}


def write_tiny_gemma3(path: Path, tokenizer_meta: Mapping[str, Any], *, seed: int = 0) -> Path:
    """Write a 6-layer gemma3 GGUF with random weights (tied output) to `path`."""
    rng = np.random.default_rng(seed)
    t = TINY_GEMMA3
    arch = "gemma3"
    vocab = len(tokenizer_meta["tokenizer.ggml.tokens"])
    hidden, ffn, hd = t["hidden"], t["ffn"], t["head_dim"]
    writer = gguf.GGUFWriter(str(path), arch)
    add_metadata(
        writer,
        {
            "general.name": "tiny-random-gemma3",
            f"{arch}.block_count": t["layers"],
            f"{arch}.context_length": t["context"],
            f"{arch}.embedding_length": hidden,
            f"{arch}.feed_forward_length": ffn,
            f"{arch}.attention.head_count": t["heads"],
            f"{arch}.attention.head_count_kv": t["kv_heads"],
            f"{arch}.attention.key_length": hd,
            f"{arch}.attention.value_length": hd,
            f"{arch}.attention.layer_norm_rms_epsilon": 1e-6,
            f"{arch}.attention.sliding_window": t["window"],
            f"{arch}.rope.freq_base": 1000000.0,
            **tokenizer_meta,
        },
    )
    q_dim, kv_dim = t["heads"] * hd, t["kv_heads"] * hd
    shapes = {
        "attn_q": (q_dim, hidden),
        "attn_k": (kv_dim, hidden),
        "attn_v": (kv_dim, hidden),
        "attn_output": (hidden, q_dim),
        "ffn_gate": (ffn, hidden),
        "ffn_up": (ffn, hidden),
        "ffn_down": (hidden, ffn),
    }

    def norm(n: int) -> tuple[np.ndarray, Q]:
        # GGUF Gemma norms already include the (1 + w) offset: values around 1.
        return (1.0 + 0.2 * rng.standard_normal(n)).astype(np.float32), Q.F32

    tensors: dict[str, tuple[np.ndarray, Q]] = {
        "token_embd.weight": (_tensor((vocab, hidden), Q.Q8_0, rng), Q.Q8_0),
        "output_norm.weight": norm(hidden),
    }
    for i in range(t["layers"]):
        p = f"blk.{i}."
        for name in ("attn_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm"):
            tensors[p + name + ".weight"] = norm(hidden)
        tensors[p + "attn_q_norm.weight"] = norm(hd)
        tensors[p + "attn_k_norm.weight"] = norm(hd)
        for name, types in LAYER_TYPES.items():
            qtype = types[i % len(types)]
            tensors[p + name + ".weight"] = (_tensor(shapes[name], qtype, rng), qtype)
    for name, (data, qtype) in tensors.items():
        writer.add_tensor(name, data, raw_dtype=qtype if data.dtype == np.uint8 else None)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
