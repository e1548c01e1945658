"""Whole models with the Pallas kernels in interpret mode against their reference forward."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from jaxserve import LLM, SamplingParams
from jaxserve.loading.loader import GGUFModelFile
from jaxserve.loading.weights import QuantArray
from jaxserve.models.build import build_model
from tests.forward import full_logits
from tests.tiny_gemma3 import write_tiny_gemma3
from tests.tiny_vocab import spm_tokenizer_metadata

# 20 tokens: five times the tiny Gemma's 4-token window, over 5 pages of 4.
PROMPT = [2, 77, 120, 3, 250, 18, 42, 42, 9, 101, 64, 200, 7, 33, 150, 11, 90, 260, 300, 58]


def _logits(path, fmt: str, kernels: str, prompt: list[int]) -> np.ndarray:
    model_file = GGUFModelFile.open(path)
    config = dataclasses.replace(model_file.config, kernels=kernels)
    return full_logits(build_model(config, model_file.load_weights(fmt)), config, prompt)


@pytest.fixture(scope="module")
def tiny_gemma3(tmp_path_factory):
    return write_tiny_gemma3(tmp_path_factory.mktemp("k") / "g.gguf", spm_tokenizer_metadata())


def test_gemma3_forward_with_kernels_matches_reference(tiny_gemma3):
    """Sliding-window and global layers through the prefill kernel, f32 weights."""
    ours = _logits(tiny_gemma3, "f32", "interpret", PROMPT)
    ref = _logits(tiny_gemma3, "f32", "reference", PROMPT)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_int8_prefill_with_the_matmul_kernel_matches_reference(tiny_gguf):
    """72 tokens in one row through the int8 matmul kernel, which multiplies f32 activations by
    the weights dequantized tile by tile: the reference is the f32 model over those same
    dequantized weights (the CPU int8 path quantizes activations too, so it is not the oracle)."""
    prompt = [(i * 37) % 290 + 3 for i in range(72)]
    ours = _logits(tiny_gguf, "int8", "interpret", prompt)
    model_file = GGUFModelFile.open(tiny_gguf)
    weights = model_file.load_weights("int8")

    def exact(w):
        return w.dequantize() if isinstance(w, QuantArray) else w

    dequantized = dataclasses.replace(
        weights,
        embedding=exact(weights.embedding),
        output=None if weights.output is None else exact(weights.output),
        layers={name: exact(w) for name, w in weights.layers.items()},
    )
    config = dataclasses.replace(model_file.config, kernels="reference")
    ref = full_logits(build_model(config, dequantized), config, prompt)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_engine_with_kernels_decodes_like_the_reference(tiny_gguf):
    """Prefill, the k-step decode loop and a constrained row, every kernel in interpret mode."""
    params = [
        SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True),
        SamplingParams(max_tokens=10, temperature=0.9, seed=4, ignore_eos=True),
        SamplingParams(max_tokens=12, temperature=0.0, regex=r"(the|and) (hello|world)"),
    ]
    prompts = ["hello world", "the and the", "say it:"]

    def run(kernels: str):
        llm = LLM(str(tiny_gguf), weights="f32", kernels=kernels, max_model_len=64)
        assert llm.config.kernels == kernels
        return [llm.generate([p], sp)[0] for p, sp in zip(prompts, params, strict=True)]

    ours, ref = run("interpret"), run("reference")
    for a, b in zip(ours, ref, strict=True):
        assert a.token_ids == b.token_ids, (a.text, b.text)
    assert ours[2].finish_reason == "stop" and ours[2].text in (
        "the hello", "the world", "and hello", "and world",
    )  # fmt: skip
