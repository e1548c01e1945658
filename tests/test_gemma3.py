"""Gemma 3 over the paged cache against an independent numpy forward (tiny random GGUF)."""

from __future__ import annotations

import numpy as np
import pytest

from jaxserve.engine.rows import DecodeRow, PrefillRow
from jaxserve.loading.loader import GGUFModelFile
from jaxserve.runtime.runner import ModelRunner
from jaxserve.sampling.rows import SamplingRow
from tests.forward import full_logits as _full_logits
from tests.numpy_gemma3 import NumpyGemma3
from tests.tiny_gemma3 import TINY_GEMMA3, write_tiny_gemma3
from tests.tiny_vocab import spm_tokenizer_metadata

# 20 tokens: five times the tiny 4-token sliding window.
PROMPT = [2, 77, 120, 3, 250, 18, 42, 42, 9, 101, 64, 200, 7, 33, 150, 11, 90, 260, 300, 58]


@pytest.fixture(scope="module")
def tiny_gemma3(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("tiny") / "tiny-gemma3.gguf"
    return write_tiny_gemma3(path, spm_tokenizer_metadata())


def test_config_reads_gemma3_metadata(tiny_gemma3):
    c = GGUFModelFile.open(tiny_gemma3).config
    assert c.architecture == "gemma3" and c.rope_style == "neox"
    assert c.head_dim == TINY_GEMMA3["head_dim"] != c.hidden_size // c.num_heads
    assert c.sliding_window == TINY_GEMMA3["window"]
    assert [c.is_local_layer(i) for i in range(c.num_layers)] == [True] * 5 + [False]
    assert c.rope_theta == 1e6 and c.rope_theta_local == 1e4
    assert c.attention_scale == pytest.approx(TINY_GEMMA3["head_dim"] ** -0.5)
    assert c.embedding_scale == pytest.approx(8.0) and c.tie_embeddings


def test_f32_logits_match_numpy_past_the_sliding_window(tiny_gemma3):
    model_file = GGUFModelFile.open(tiny_gemma3)
    ours = _full_logits(model_file.build_model("f32"), model_file.config, PROMPT)
    oracle = NumpyGemma3(tiny_gemma3)
    expected = oracle.logits(PROMPT)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4 * scale)
    # The window matters here: without it the oracle's logits move far beyond the tolerance.
    unwindowed = NumpyGemma3(tiny_gemma3, window=10**6).logits(PROMPT)
    assert np.abs(unwindowed - expected)[TINY_GEMMA3["window"] :].max() > 100 * 1e-4 * scale


def test_chunked_prefill_then_decode_matches_numpy(tiny_gemma3):
    model_file = GGUFModelFile.open(tiny_gemma3)
    runner = ModelRunner(
        model_file.build_model("f32"),
        model_file.config,
        num_pages=40,
        page_size=4,
        max_pages_per_row=16,
    )
    oracle = NumpyGemma3(tiny_gemma3)
    pages = [9, 2, 14, 4, 6, 30, 10, 12]
    seq = list(PROMPT)
    runner.prefill([PrefillRow(seq[:7], 0, pages)])
    token = int(runner.prefill([PrefillRow(seq[7:], 7, pages)]).token_ids[0])
    for _ in range(6):
        assert token == int(oracle.logits(seq)[-1].argmax())
        seq.append(token)
        row = DecodeRow(token, len(seq) - 1, pages, SamplingRow(), remaining=1)
        token = int(runner.decode([row], num_steps=1).token_ids[0, 0])
    # Paged decode equals the full forward: score the whole sequence's prompt logprobs too.
    chosen = runner.prefill([PrefillRow(seq, 0, pages, prompt_targets=seq[1:])]).prompt.chosen
    logits = oracle.logits(seq)
    shifted = logits - logits.max(-1, keepdims=True)
    logprobs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    n = len(seq) - 1
    np.testing.assert_allclose(chosen[0, :n], logprobs[np.arange(n), seq[1:]], atol=2e-4)


def test_int8_weights_stay_close_to_f32(tiny_gemma3):
    model_file = GGUFModelFile.open(tiny_gemma3)
    config = model_file.config
    f32 = _full_logits(model_file.build_model("f32"), config, PROMPT)
    int8 = _full_logits(model_file.build_model("int8"), config, PROMPT)
    scale = np.abs(f32).max()
    assert np.abs(int8 - f32).max() < 0.05 * scale
    assert not np.array_equal(int8, f32)
