"""Strict JAX settings for every test, plus shared fixtures (tiny GGUF, real models)."""

from __future__ import annotations

import gc
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import pytest  # noqa: E402

import jaxserve.runtime  # noqa: E402, F401  (its XLA flags, before the backend starts)

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

from tests.tiny_gguf import Q4_LAYER_TYPES, write_tiny_gguf  # noqa: E402
from tests.tiny_vocab import gpt2_tokenizer_metadata  # noqa: E402


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory):
    """A 2-layer random llama GGUF with a tiny byte-level BPE vocabulary and a chat template."""
    path = tmp_path_factory.mktemp("tiny") / "tiny.gguf"
    return write_tiny_gguf(path, gpt2_tokenizer_metadata())


@pytest.fixture(scope="session")
def tiny_gguf_untied(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("tiny") / "tiny-untied.gguf"
    return write_tiny_gguf(path, gpt2_tokenizer_metadata(), tied=False, seed=1)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_steps():
    """Drop every compiled executable after each test module: XLA CPU maps each compiled kernel
    into memory, and one process running the whole suite would otherwise approach
    `vm.max_map_count`, where the runner starts dropping its compiled steps
    (`engine/mappings.py`) and tests that count compiles would see it."""
    yield
    gc.collect()
    jax.clear_caches()


@pytest.fixture(scope="session")
def tiny_gguf_q4(tmp_path_factory: pytest.TempPathFactory):
    """The tiny model with every layer matrix in Q4_0 / Q4_1 (int8 copies in 64-value blocks)."""
    path = tmp_path_factory.mktemp("tiny") / "tiny-q4.gguf"
    return write_tiny_gguf(path, gpt2_tokenizer_metadata(), seed=2, layer_types=Q4_LAYER_TYPES)


@pytest.fixture(scope="session")
def smollm2_path():
    from jaxserve.loading.pull import pull

    return pull("smollm2-135m", quiet=True)


@pytest.fixture(scope="session")
def gemma3_path():
    from jaxserve.loading.pull import pull

    return pull("gemma3-270m", quiet=True)


@pytest.fixture(scope="session")
def gemma3_int8(gemma3_path):
    """Gemma 3 270M with int8 weights, shared by the fidelity and engine tests."""
    from jaxserve import LLM

    return LLM(str(gemma3_path), weights="int8")
