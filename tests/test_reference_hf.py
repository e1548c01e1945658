"""Llama, Llama 3, Mistral, Qwen2 and Qwen3 against Hugging Face `transformers` on CPU.

Tiny random checkpoints (MHA, GQA and MQA layouts) are written by `transformers`; jaxserve loads
the folder (safetensors, config.json) and must give transformers' logits within 1e-4 relative in
f32. The same weights written as GGUF (q/k permuted as llama.cpp's converter does) must load to
the same logits.
"""

from __future__ import annotations

import numpy as np
import pytest

from jaxserve import LLM, SamplingParams
from jaxserve.errors import UnsupportedArchitectureError
from jaxserve.loading.hf_checkpoint import HFModelFile
from jaxserve.loading.loader import GGUFModelFile
from jaxserve.text.tokenizer import GGUFTokenizer
from jaxserve.text.tokenizer_hf import HFTokenizer
from tests.forward import full_logits
from tests.tiny_hf import CASES, NUM_TOKENS, hf_logits, write_gguf_twin, write_tiny_hf
from tests.tiny_vocab import gpt2_tokenizer_metadata

# 14 tokens: past Mistral's 4-token window and Llama 3's 8-token original context.
PROMPT = [1, 77, 120, 3, 250, 18, 42, 42, 9, 101, 64, 200, 297, 33]


@pytest.fixture(scope="module", params=sorted(CASES))
def checkpoint(request, tmp_path_factory):
    return request.param, write_tiny_hf(tmp_path_factory.mktemp(request.param), request.param)


def _assert_close(ours: np.ndarray, theirs: np.ndarray, rtol: float = 1e-4) -> None:
    scale = np.abs(theirs).max()
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=rtol * scale)


def test_f32_logits_match_transformers(checkpoint):
    case, folder = checkpoint
    model_file = HFModelFile.open(folder)
    ours = full_logits(model_file.build_model("f32"), model_file.config, PROMPT)
    theirs = hf_logits(folder, PROMPT)
    assert ours.shape == theirs.shape == (len(PROMPT), 320)
    assert np.abs(theirs).max() > 1.0  # random enough that a wrong convention shows
    _assert_close(ours, theirs)


def test_gguf_twin_loads_to_the_same_logits(checkpoint, tmp_path):
    case, folder = checkpoint
    hf_file = HFModelFile.open(folder)
    gguf_file = GGUFModelFile.open(write_gguf_twin(folder, tmp_path / f"{case}.gguf"))
    assert gguf_file.config.rope_style == ("interleaved" if "llama" in case or "mistral" in case
                                           else "neox")  # fmt: skip
    for field in ("num_heads", "num_kv_heads", "head_dim", "sliding_window", "qk_norm"):
        assert getattr(gguf_file.config, field) == getattr(hf_file.config, field), field
    a = full_logits(hf_file.build_model("f32"), hf_file.config, PROMPT)
    b = full_logits(gguf_file.build_model("f32"), gguf_file.config, PROMPT)
    _assert_close(b, a, rtol=1e-5)


def test_conventions_matter(checkpoint):
    """The comparison can fail: dropping the case's distinctive feature moves the logits."""
    case, folder = checkpoint
    model_file = HFModelFile.open(folder)
    theirs = hf_logits(folder, PROMPT)
    c = model_file.config
    if c.sliding_window:
        changed = {"sliding_window": 0}
    elif c.rope_freq_factors is not None:
        changed = {"rope_freq_factors": None}
    else:
        changed = {"rope_style": "interleaved"}
    wrong = type(c)(**{**vars(c), **changed})
    ours = full_logits(model_file.build_model("f32").__class__(wrong, model_file.load_weights(
        "f32")), wrong, PROMPT)  # fmt: skip
    scale = np.abs(theirs).max()
    assert np.abs(ours - theirs).max() > 100 * 1e-4 * scale


def test_int8_weights_stay_close(checkpoint):
    _, folder = checkpoint
    model_file = HFModelFile.open(folder)
    ours = full_logits(model_file.build_model("int8"), model_file.config, PROMPT)
    theirs = hf_logits(folder, PROMPT)
    assert np.mean(ours.argmax(-1) == theirs.argmax(-1)) >= 0.85


def test_features_name_the_architecture(checkpoint):
    case, folder = checkpoint
    c = HFModelFile.open(folder).config
    features = ", ".join(c.features())
    expected = {
        "llama-mha": "MHA",
        "llama3-gqa": "rope frequency scaling",
        "llama-mqa-tied": "MQA",
        "mistral-swa": "sliding window 4 (2/2 layers)",
        "qwen2-gqa": "qkv bias",
        "qwen3-mqa": "qk norm",
        "qwen2-8h-mqa": "MQA",
    }[case]
    assert expected in features, features


def test_hf_tokenizer_matches_the_gguf_vocabulary(tmp_path):
    folder = write_tiny_hf(tmp_path / "tok", "qwen2-gqa")
    ours = HFTokenizer(folder)
    gguf = GGUFTokenizer.from_metadata(gpt2_tokenizer_metadata(pre="gpt-2"))
    assert ours.vocab_size == gguf.vocab_size == NUM_TOKENS
    assert ours.bos_id == 1 and ours.eos_id == 2 and 2 in ours.eos_ids
    texts = ["hello world", "  the and\n\nthe 12 ... é ☃ 😀", "<|im_start|>user\nhi<|im_end|>"]
    for text in texts:
        for parse_special in (False, True):
            ids = ours.encode(text, add_special=False, parse_special=parse_special)
            assert ids == gguf.encode(text, add_special=False, parse_special=parse_special)
            assert ours.decode(ids) == text
    assert ours.encode("<|im_end|>", add_special=False, parse_special=True) == [2]
    assert [ours.token_bytes(i) for i in range(NUM_TOKENS)] == [
        gguf.token_bytes(i) for i in range(NUM_TOKENS)
    ]
    assert ours.chat_template is not None


def test_llm_generates_from_a_folder_without_padded_ids(tmp_path):
    folder = write_tiny_hf(tmp_path / "qwen3", "qwen3-mqa")
    llm = LLM(str(folder), weights="f32", max_model_len=64, warmup=False)
    assert llm.config.vocab_size == 320 > llm.tokenizer.vocab_size
    params = SamplingParams(max_tokens=12, temperature=1.5, seed=3, ignore_eos=True)
    outs = llm.generate(["hello world", "the and"], params)
    for out in outs:
        assert len(out.token_ids) == 12
        assert all(t < NUM_TOKENS for t in out.token_ids)  # padded ids are never sampled
    greedy = llm.generate(
        ["hello"], SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    )[0]
    ids = llm.tokenize("hello")
    theirs = hf_logits(folder, ids)
    assert greedy.token_ids[0] == int(theirs[-1, :NUM_TOKENS].argmax())


def test_unknown_architecture_lists_the_supported_ones(tmp_path):
    folder = write_tiny_hf(tmp_path / "odd", "llama-mha")
    config = (folder / "config.json").read_text().replace("LlamaForCausalLM", "MambaForCausalLM")
    (folder / "config.json").write_text(config)
    with pytest.raises(UnsupportedArchitectureError) as error:
        HFModelFile.open(folder)
    message = str(error.value)
    assert "MambaForCausalLM" in message
    for name in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "gemma3", "qwen3"):
        assert name in message
