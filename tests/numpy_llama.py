"""An independent numpy forward pass of a llama GGUF (dense causal attention): the test oracle."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np


class NumpyLlama:
    def __init__(self, path: Path) -> None:
        reader = gguf.GGUFReader(str(path))
        self.t = {
            t.name: gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
            .reshape(tuple(reversed([int(d) for d in t.shape])))
            .astype(np.float64)
            for t in reader.tensors
        }
        f = reader.fields
        self.layers = int(f["llama.block_count"].contents())
        self.heads = int(f["llama.attention.head_count"].contents())
        self.kv_heads = int(f["llama.attention.head_count_kv"].contents())
        self.theta = float(f["llama.rope.freq_base"].contents())
        self.eps = float(f["llama.attention.layer_norm_rms_epsilon"].contents())

    def _norm(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w

    def _rope(self, x: np.ndarray) -> np.ndarray:
        """Interleaved pairs as complex numbers: (x0 + i x1) * e^{i pos f}."""
        t, _, d = x.shape
        freqs = self.theta ** (-np.arange(0, d, 2) / d)
        rot = np.exp(1j * np.arange(t)[:, None] * freqs[None, :])[:, None, :]
        z = (x[..., 0::2] + 1j * x[..., 1::2]) * rot
        out = np.empty_like(x)
        out[..., 0::2], out[..., 1::2] = z.real, z.imag
        return out

    def logits(self, token_ids: list[int]) -> np.ndarray:
        """[T, V] logits for every position of `token_ids`."""
        head = self.t.get("output.weight", self.t["token_embd.weight"])
        return self.hidden(token_ids) @ head.T

    def hidden(self, token_ids: list[int]) -> np.ndarray:
        """[T, E] final hidden states (after the output norm) at every position."""
        return self.forward(token_ids)[1]

    def forward(
        self, token_ids: list[int], steering: dict[int, np.ndarray] | None = None
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """([T, E] residual stream after each layer, [T, E] final hidden states); `steering`
        {layer: [E]} is added to the residual stream after that layer."""
        t = self.t
        residuals = []
        x = t["token_embd.weight"][token_ids]
        n = len(token_ids)
        for i in range(self.layers):
            p = f"blk.{i}."
            h = self._norm(x, t[p + "attn_norm.weight"])
            q = (h @ t[p + "attn_q.weight"].T).reshape(n, self.heads, -1)
            k = (h @ t[p + "attn_k.weight"].T).reshape(n, self.kv_heads, -1)
            v = (h @ t[p + "attn_v.weight"].T).reshape(n, self.kv_heads, -1)
            q, k = self._rope(q), self._rope(k)
            rep = self.heads // self.kv_heads
            k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
            s = np.einsum("thd,shd->hts", q, k) / np.sqrt(q.shape[-1])
            s = np.where(np.tril(np.ones((n, n), bool)), s, -np.inf)
            w = np.exp(s - s.max(-1, keepdims=True))
            w /= w.sum(-1, keepdims=True)
            o = np.einsum("hts,shd->thd", w, v).reshape(n, -1)
            x = x + o @ t[p + "attn_output.weight"].T
            h = self._norm(x, t[p + "ffn_norm.weight"])
            g = h @ t[p + "ffn_gate.weight"].T
            x = (
                x
                + ((g / (1 + np.exp(-g))) * (h @ t[p + "ffn_up.weight"].T))
                @ t[p + "ffn_down.weight"].T
            )
            if steering and i in steering:
                x = x + steering[i]
            residuals.append(x)
        return residuals, self._norm(x, t["output_norm.weight"])
