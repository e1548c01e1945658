"""GGUF loading: config translation, every tensor type, int8 blocks, and clear errors."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from jaxserve.errors import GGUFError, UnsupportedArchitectureError
from jaxserve.loading.loader import GGUFModelFile
from jaxserve.loading.weights import (
    COARSE_SOURCES,
    QuantArray,
    as_format,
    dequantize_tensor,
    int8_block,
    quantize_int8,
)
from tests.tiny_gguf import LAYER_TYPES, TINY, write_tiny_gguf
from tests.tiny_vocab import gpt2_tokenizer_metadata

Q = gguf.GGMLQuantizationType


def test_config_from_metadata(tiny_gguf):
    c = GGUFModelFile.open(tiny_gguf).config
    assert (c.architecture, c.num_layers, c.hidden_size) == (
        "llama",
        TINY["layers"],
        TINY["hidden"],
    )
    assert (c.num_heads, c.num_kv_heads, c.head_dim) == (TINY["heads"], TINY["kv_heads"], 16)
    assert c.intermediate_size == TINY["ffn"] and c.max_position == TINY["context"]
    assert c.tie_embeddings and c.q_per_kv == 2


def test_tensor_types_cover_the_common_quants(tiny_gguf):
    types = GGUFModelFile.open(tiny_gguf).tensor_types()
    for t in (Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q4_K, Q.Q6_K):
        assert types[t.name] > 0, t.name


def test_weights_match_gguf_dequantization(tiny_gguf):
    model_file = GGUFModelFile.open(tiny_gguf)
    reader = gguf.GGUFReader(str(tiny_gguf))
    by_name = {t.name: t for t in reader.tensors}
    f32 = model_file.load_weights("f32")
    int8 = model_file.load_weights("int8")
    for i in range(TINY["layers"]):
        for name in LAYER_TYPES:
            t = by_name[f"blk.{i}.{name}.weight"]
            ref = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
            ref = ref.reshape(tuple(reversed([int(d) for d in t.shape]))).T  # (in, out)
            np.testing.assert_array_equal(f32.layers[name][i], ref)
            q = int8.layers[name]
            assert isinstance(q, QuantArray) and q.q.dtype == np.int8
            coarse = all(t.name in COARSE_SOURCES for t in LAYER_TYPES[name])
            assert q.block == (64 if coarse else 32), name  # 64 for Q4_0/Q4_1/Q5_0/Q5_1 only
            approx = QuantArray(q.q[i], q.scales[i]).dequantize()
            amax = np.abs(ref).reshape(-1, q.block, ref.shape[1]).max(1).repeat(q.block, 0)
            assert np.all(np.abs(approx - ref) <= amax / 254 + 1e-7)
    assert int8.embedding.block == 32  # token_embd is Q8_0


def test_q4_matrices_get_64_value_blocks(tiny_gguf_q4):
    int8 = GGUFModelFile.open(tiny_gguf_q4).load_weights("int8")
    f32 = GGUFModelFile.open(tiny_gguf_q4).load_weights("f32")
    for name in LAYER_TYPES:
        q, ref = int8.layers[name], f32.layers[name]
        assert q.block == 64 and q.scales.shape[-2] == q.shape[-2] // 64, name
        amax = np.abs(ref).reshape(*ref.shape[:-2], -1, 64, ref.shape[-1]).max(-2)
        bound = np.repeat(amax, 64, axis=-2) / 254 + 1e-7
        assert np.all(np.abs(q.dequantize() - ref) <= bound), name
    assert int8.embedding.block == 32  # token_embd is Q8_0


def test_int8_block_follows_the_source_format():
    assert int8_block(["Q4_1"] * 30) == 64
    assert int8_block(["Q4_0", "Q4_1"]) == 64
    assert int8_block(["Q5_0"]) == 32  # measured: 64 costs Gemma 3 accuracy
    assert int8_block(["Q4_1", "Q6_K"]) == 32  # one K-quant layer: the whole stack is per-32
    assert int8_block(["Q8_0"]) == int8_block(["F16"]) == int8_block([]) == 32
    x = np.random.default_rng(0).standard_normal((96, 4)).astype(np.float32)
    assert as_format(x.T, "int8", 64).block == 32  # 96 inputs: not a multiple of 64


def test_int8_quantization_is_per_32_block():
    x = np.random.default_rng(0).standard_normal((64, 3)).astype(np.float32)
    x[:32, 0] *= 1000  # one large block must not coarsen its neighbour
    q = quantize_int8(x)
    assert q.scales.shape == (2, 3)
    err = np.abs(q.dequantize() - x)
    assert err[32:, 0].max() < 0.05
    assert isinstance(as_format(x.T, "int8"), QuantArray)
    assert as_format(x.T, "f32").dtype == np.float32


def test_truncated_file_is_a_clear_error(tiny_gguf, tmp_path):
    data = tiny_gguf.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(GGUFError, match="cut.gguf"):
        GGUFModelFile.open(cut).load_weights("f32")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(GGUFError, match="junk.gguf"):
        GGUFModelFile.open(junk)


def test_unsupported_architecture_is_named(tmp_path):
    path = write_tiny_gguf(tmp_path / "arch.gguf", gpt2_tokenizer_metadata(), architecture="mamba")
    with pytest.raises(UnsupportedArchitectureError, match="mamba"):
        GGUFModelFile.open(path)


def test_unsupported_tensor_type_is_named(tmp_path):
    path = tmp_path / "q81.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    block, size = gguf.GGML_QUANT_SIZES[Q.Q8_1]
    writer.add_tensor("weird.weight", np.zeros((2, 2 * size), np.uint8), raw_dtype=Q.Q8_1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tensor = gguf.GGUFReader(str(path)).tensors[0]
    with pytest.raises(GGUFError, match="weird.weight.*Q8_1"):
        dequantize_tensor(tensor)


def test_converted_weights_are_saved_and_reused(tiny_gguf, tmp_path, monkeypatch):
    model_file = GGUFModelFile.open(tiny_gguf)
    first = model_file.load_weights("int8", cache=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 1

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr("jaxserve.loading.loader.read_weights", no_conversion)
    again = model_file.load_weights("int8", cache=tmp_path)
    assert again.layers.keys() == first.layers.keys()
    for name, w in first.layers.items():
        if isinstance(w, QuantArray):
            np.testing.assert_array_equal(again.layers[name].q, w.q)
            np.testing.assert_array_equal(again.layers[name].scales, w.scales)
        else:
            np.testing.assert_array_equal(again.layers[name], w)
    np.testing.assert_array_equal(again.embedding.q, first.embedding.q)
    assert again.output is None and first.output is None
