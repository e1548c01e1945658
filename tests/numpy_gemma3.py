"""An independent numpy forward pass of a gemma3 GGUF (dense attention, f64): the test oracle.

Conventions as llama.cpp runs Gemma 3 GGUFs (`llm_build_gemma3`): embeddings times sqrt(hidden);
norm weights used as stored (the converter already added Gemma's 1); RMSNorm on each q/k head;
NeoX RoPE; layer i global when i % 6 == 5 (RoPE base `rope.freq_base`), otherwise local (base
10k, keys with query - key >= sliding_window masked); q scaled by 1/sqrt(key_length); post-norms
before both residual adds; GeGLU with tanh GELU; output tied to the embedding.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np


class NumpyGemma3:
    def __init__(self, path: Path, *, window: int | None = None) -> None:
        reader = gguf.GGUFReader(str(path))
        self.t = {
            t.name: gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
            .reshape(tuple(reversed([int(d) for d in t.shape])))
            .astype(np.float64)
            for t in reader.tensors
        }
        f = reader.fields

        def get(key: str) -> float:
            return f[f"gemma3.{key}"].contents()

        self.layers = int(get("block_count"))
        self.heads = int(get("attention.head_count"))
        self.kv_heads = int(get("attention.head_count_kv"))
        self.head_dim = int(get("attention.key_length"))
        self.theta = float(get("rope.freq_base"))
        self.eps = float(get("attention.layer_norm_rms_epsilon"))
        self.window = int(get("attention.sliding_window")) if window is None else window
        self.hidden = int(get("embedding_length"))

    def _norm(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w

    @staticmethod
    def _rope(x: np.ndarray, theta: float) -> np.ndarray:
        """NeoX halves as complex numbers: (x[i] + i x[i + D/2]) * e^{i pos f_i}."""
        t, _, d = x.shape
        freqs = theta ** (-np.arange(0, d, 2) / d)
        rot = np.exp(1j * np.arange(t)[:, None] * freqs[None, :])[:, None, :]
        z = (x[..., : d // 2] + 1j * x[..., d // 2 :]) * rot
        return np.concatenate([z.real, z.imag], axis=-1)

    def logits(self, token_ids: list[int]) -> np.ndarray:
        """[T, V] logits for every position of `token_ids`."""
        t = self.t
        n = len(token_ids)
        x = t["token_embd.weight"][token_ids] * np.sqrt(self.hidden)
        pos = np.arange(n)
        causal = pos[None, :] <= pos[:, None]
        in_window = pos[:, None] - pos[None, :] < self.window
        for i in range(self.layers):
            p = f"blk.{i}."
            is_global = i % 6 == 5
            h = self._norm(x, t[p + "attn_norm.weight"])
            q = (h @ t[p + "attn_q.weight"].T).reshape(n, self.heads, -1)
            k = (h @ t[p + "attn_k.weight"].T).reshape(n, self.kv_heads, -1)
            v = (h @ t[p + "attn_v.weight"].T).reshape(n, self.kv_heads, -1)
            q = self._norm(q, t[p + "attn_q_norm.weight"])
            k = self._norm(k, t[p + "attn_k_norm.weight"])
            theta = self.theta if is_global else 10000.0
            q, k = self._rope(q, theta), self._rope(k, theta)
            rep = self.heads // self.kv_heads
            k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
            s = np.einsum("thd,shd->hts", q, k) / np.sqrt(self.head_dim)
            mask = causal if is_global else causal & in_window
            s = np.where(mask, s, -np.inf)
            w = np.exp(s - s.max(-1, keepdims=True))
            w /= w.sum(-1, keepdims=True)
            o = np.einsum("hts,shd->thd", w, v).reshape(n, -1)
            x = x + self._norm(
                o @ t[p + "attn_output.weight"].T, t[p + "post_attention_norm.weight"]
            )
            h = self._norm(x, t[p + "ffn_norm.weight"])
            g = h @ t[p + "ffn_gate.weight"].T
            gelu = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3)))
            mlp = (gelu * (h @ t[p + "ffn_up.weight"].T)) @ t[p + "ffn_down.weight"].T
            x = x + self._norm(mlp, t[p + "post_ffw_norm.weight"])
        x = self._norm(x, t["output_norm.weight"])
        return x @ t["token_embd.weight"].T
