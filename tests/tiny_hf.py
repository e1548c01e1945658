"""Tiny random Hugging Face checkpoints written by `transformers` itself, and their GGUF twins.

Each case is one architecture and head layout. `write_tiny_hf` saves config.json, safetensors
and a tokenizer.json (the tiny byte-level BPE vocabulary of `tests.tiny_vocab`, built with
`tokenizers`); `write_gguf_twin` writes the same weights as a GGUF the way llama.cpp's converter
would (q/k rows permuted for `llama`, `rope_freqs` for Llama 3 scaling).
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import tokenizers
import torch

from tests.tiny_gguf import add_metadata
from tests.tiny_vocab import CHATML_TEMPLATE, GPT2_MERGES, gpt2_tokenizer_metadata


def _import_transformers():
    """transformers imports the `kernels` distribution by its top-level name, which this
    repository's own `kernels/` folder (installed as `jaxserve.kernels`) shadows whenever the
    repository root is on sys.path: import the distribution with the root left out first."""
    root = Path(__file__).resolve().parents[1]
    saved = sys.path[:]
    sys.path[:] = [p for p in saved if Path(p or ".").resolve() != root]
    try:
        importlib.import_module("kernels")
    finally:
        sys.path[:] = saved
    return importlib.import_module("transformers")


transformers = _import_transformers()

COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, rms_norm_eps=1e-6)
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8,
}
CASES: dict[str, dict[str, Any]] = {
    "llama-mha": dict(arch="llama", num_attention_heads=4, num_key_value_heads=4),
    "llama3-gqa": dict(
        arch="llama", num_attention_heads=4, num_key_value_heads=2, rope_parameters=LLAMA3_ROPE
    ),
    "llama-mqa-tied": dict(
        arch="llama", num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True
    ),
    "mistral-swa": dict(
        arch="mistral", num_attention_heads=4, num_key_value_heads=2, sliding_window=4
    ),
    "qwen2-gqa": dict(arch="qwen2", num_attention_heads=4, num_key_value_heads=2),
    "qwen3-mqa": dict(arch="qwen3", num_attention_heads=4, num_key_value_heads=1, head_dim=24),
    "qwen2-8h-mqa": dict(arch="qwen2", num_attention_heads=8, num_key_value_heads=1),
}
CONFIGS = {
    "llama": transformers.LlamaConfig,
    "mistral": transformers.MistralConfig,
    "qwen2": transformers.Qwen2Config,
    "qwen3": transformers.Qwen3Config,
}
MODELS = {
    "llama": transformers.LlamaForCausalLM,
    "mistral": transformers.MistralForCausalLM,
    "qwen2": transformers.Qwen2ForCausalLM,
    "qwen3": transformers.Qwen3ForCausalLM,
}
NUM_TOKENS = len(gpt2_tokenizer_metadata()["tokenizer.ggml.tokens"])
VOCAB = 320  # the embedding is wider than the tokenizer, as Qwen's padded vocabularies are


def write_tokenizer(folder: Path) -> None:
    """tokenizer.json (+ tokenizer_config.json) for the tiny byte-level BPE vocabulary."""
    tokens = gpt2_tokenizer_metadata()["tokenizer.ggml.tokens"]
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = [tuple(m.split(" ")) for m in GPT2_MERGES]
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    tok.add_special_tokens(tokens[:3])
    tok.save(str(folder / "tokenizer.json"))
    config = {
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "chat_template": CHATML_TEMPLATE,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")


def write_tiny_hf(folder: Path, case: str, *, seed: int = 0, vocab: int = VOCAB) -> Path:
    """A random `case` checkpoint; every parameter (norms, biases included) drawn at random.
    `vocab`: the embedding's rows (`NUM_TOKENS` for one without padded ids)."""
    spec = dict(CASES[case])
    arch = spec.pop("arch")
    config = CONFIGS[arch](
        **COMMON, **spec, vocab_size=vocab, max_position_embeddings=256, bos_token_id=1,
        eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = MODELS[arch](config).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            centre = 1.0 if name.endswith("norm.weight") else 0.0
            p.copy_(centre + 0.15 * torch.randn_like(p))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    write_tokenizer(folder)
    return folder


def hf_logits(folder: Path, token_ids: list[int]) -> np.ndarray:
    """`transformers`' own logits [T, V] (f32, eager attention) for one sequence."""
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        out = model(torch.tensor([token_ids]), use_cache=False).logits[0]
    return out.numpy()


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter: q/k rows reordered from rotate-half to interleaved pairs."""
    return (
        w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )


def write_gguf_twin(folder: Path, path: Path) -> Path:
    """The checkpoint's weights (f32) as a GGUF with the metadata llama.cpp would write."""
    from safetensors.numpy import load_file

    from jaxserve.config import ModelConfig
    from jaxserve.loading.hf_checkpoint import gguf_name

    hf = json.loads((folder / "config.json").read_text())
    config = ModelConfig.from_hf(hf)
    arch = "llama" if config.architecture in ("llama", "mistral") else config.architecture
    writer = gguf.GGUFWriter(str(path), arch)
    tokenizer = gpt2_tokenizer_metadata(pre="gpt-2")
    add_metadata(
        writer,
        {
            "general.name": f"twin of {folder.name}",
            f"{arch}.block_count": config.num_layers,
            f"{arch}.context_length": config.max_position,
            f"{arch}.embedding_length": config.hidden_size,
            f"{arch}.feed_forward_length": config.intermediate_size,
            f"{arch}.attention.head_count": config.num_heads,
            f"{arch}.attention.head_count_kv": config.num_kv_heads,
            f"{arch}.attention.key_length": config.head_dim,
            f"{arch}.attention.value_length": config.head_dim,
            f"{arch}.attention.layer_norm_rms_epsilon": config.norm_eps,
            f"{arch}.rope.freq_base": config.rope_theta,
            f"{arch}.vocab_size": config.vocab_size,
            **tokenizer,
        },
    )
    if config.sliding_window:
        writer.add_uint32(f"{arch}.attention.sliding_window", config.sliding_window)
    if config.rope_freq_factors is not None:
        writer.add_tensor("rope_freqs.weight", np.asarray(config.rope_freq_factors, np.float32))
    for hf_name, value in load_file(folder / "model.safetensors").items():
        name = gguf_name(hf_name)
        if name is None or (config.tie_embeddings and name == "output.weight"):
            continue
        value = value.astype(np.float32)
        if arch == "llama" and (".attn_q." in name or ".attn_k." in name):
            heads = config.num_heads if ".attn_q." in name else config.num_kv_heads
            value = _permute(value, heads)
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
