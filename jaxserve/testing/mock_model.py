"""A model whose every output can be computed by hand, behind the real runner and engine.

Vocabulary (byte-level, GPT-2 spelling): id 0 is `<|endoftext|>` (end of generation), ids 1..256
are the bytes 0..255 (id = 1 + byte). After token t the model's logits are

    FAVOURITE at (t + 1) % V,  RUNNER_UP at (t + 2) % V,  0 elsewhere,

whatever came before. So greedy decoding after the text "a" spells "bcdefg...", and after the
byte 0xFF (id 256) comes end-of-generation. Probabilities are softmax of those three levels:
`mock_probs()` gives them. Attention is skipped, so the K/V cache stays untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxserve.config import ModelConfig
from jaxserve.engine import Engine, EngineConfig
from jaxserve.engine.admission import max_pages_per_row, num_pages_for
from jaxserve.engine.scheduler import SchedulerConfig
from jaxserve.engine.speculation import SpeculativeConfig
from jaxserve.runtime.kv_cache import TokenLayout
from jaxserve.runtime.runner import ModelRunner
from jaxserve.sampling.chain import LogitsHook
from jaxserve.text.tokenizer import GGUFTokenizer

FAVOURITE, RUNNER_UP = 4.0, 2.0
VOCAB = 257
EOS_ID = 0


def mock_probs(last_token: int, vocab: int = VOCAB) -> np.ndarray:
    """The mock model's next-token distribution after `last_token`."""
    logits = np.zeros(vocab)
    logits[(last_token + 1) % vocab] = FAVOURITE
    logits[(last_token + 2) % vocab] = RUNNER_UP
    e = np.exp(logits - logits.max())
    return e / e.sum()


def byte_id(byte: int) -> int:
    return 1 + byte


def mock_tokenizer() -> GGUFTokenizer:
    """The mock vocabulary: `<|endoftext|>` then the 256 byte tokens, no merges."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    kept += range(ord("®"), ord("ÿ") + 1)
    chars, extra = {}, 0
    for b in range(256):
        if b in kept:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    tokens = ["<|endoftext|>"] + [chars[b] for b in range(256)]
    return GGUFTokenizer.from_metadata(
        {
            "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.pre": "default",
            "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": [3] + [1] * 256,
            "tokenizer.ggml.merges": [],
            "tokenizer.ggml.eos_token_id": EOS_ID,
            "tokenizer.ggml.add_bos_token": False,
        }
    )


def mock_config(vocab: int = VOCAB, max_position: int = 1024) -> ModelConfig:
    return ModelConfig(
        architecture="mock",
        name="mock",
        num_layers=1,
        hidden_size=vocab,
        intermediate_size=1,
        num_heads=1,
        num_kv_heads=1,
        head_dim=1,
        vocab_size=vocab,
        max_position=max_position,
        rope_theta=10000.0,
        rope_style="interleaved",
        norm_eps=1e-6,
        tie_embeddings=True,
    )


class MockModel(nnx.Module):
    """The hand-computable model: hidden state = one-hot of the token, logits = a fixed shift."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        v = config.vocab_size
        table = np.zeros((v, v), np.float32)
        table[np.arange(v), (np.arange(v) + 1) % v] = FAVOURITE
        table[np.arange(v), (np.arange(v) + 2) % v] = RUNNER_UP
        self.table = nnx.Param(jnp.asarray(table))

    def hidden(
        self, token_ids: jax.Array, kv: tuple[jax.Array, jax.Array], layout: TokenLayout
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        return jax.nn.one_hot(token_ids, self.config.vocab_size, dtype=jnp.float32), kv

    def logits(self, h: jax.Array) -> jax.Array:
        return h @ self.table[...]


@dataclass(frozen=True)
class MockSetup:
    max_model_len: int = 512
    kv_cache_bytes: int = 2**20
    logits_hook: LogitsHook | None = None
    grammar_states: int = 64  # on-device constraint capacity (0: host masks only)
    speculative: SpeculativeConfig | None = None  # n-gram speculation (a draft model: no)


def mock_engine(scheduler: SchedulerConfig | None = None, setup: MockSetup | None = None) -> Engine:
    """A real `Engine` (scheduler, pages, runner, sampler chain) over the mock model."""
    setup = setup or MockSetup()
    config = mock_config(max_position=setup.max_model_len)
    engine_config = EngineConfig(
        weights="f32",
        kv_cache_bytes=setup.kv_cache_bytes,
        compilation_cache_dir="",
        grammar_states=setup.grammar_states,
        speculative=setup.speculative,
    )
    tokenizer = mock_tokenizer()
    spec = setup.speculative
    page_bytes = ModelRunner.bytes_per_page(config, engine_config.page_size)
    runner = ModelRunner(
        MockModel(config),
        config,
        num_pages=num_pages_for(engine_config.kv_cache_bytes, page_bytes),
        page_size=engine_config.page_size,
        max_pages_per_row=max_pages_per_row(setup.max_model_len, engine_config.page_size),
        hook=setup.logits_hook,
        grammar_states=setup.grammar_states,
        token_bytes=[tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size)],
        verify_width=0 if spec is None else spec.num_tokens + 1,
        verify_rows=0 if spec is None else spec.max_rows,
    )
    return Engine(
        tokenizer,
        runner,
        engine_config,
        scheduler or SchedulerConfig(),
        max_model_len=setup.max_model_len,
    )
