"""Tokenizers from GGUF metadata: tiny hand-built vocabularies (fast) and the real models (slow).

The real-model ids below were recorded with llama-cpp-python 0.3.36:
`Llama(model_path, vocab_only=True).tokenize(text.encode(), add_bos=..., special=...)`.
"""

from __future__ import annotations

import time

import gguf
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxserve.errors import GGUFError, ModelNotFoundError
from jaxserve.loading.gguf_meta import open_gguf, read_metadata
from jaxserve.text.tokenizer import GGUFTokenizer, TokenType
from tests.tiny_gguf import add_metadata
from tests.tiny_vocab import gpt2_tokenizer_metadata, spm_tokenizer_metadata

BPE = GGUFTokenizer.from_metadata(gpt2_tokenizer_metadata())
SPM = GGUFTokenizer.from_metadata(spm_tokenizer_metadata())
SPM_PREFIX = GGUFTokenizer.from_metadata(spm_tokenizer_metadata(add_space_prefix=True))
NO_ESCAPED_SPACE = st.text(st.characters(exclude_characters="\u2581", exclude_categories=["Cs"]))


def pieces(tok: GGUFTokenizer, ids: list[int]) -> list[str]:
    return [tok.id_to_piece(i) for i in ids]


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_bpe_round_trip(text: str) -> None:
    assert BPE.decode(BPE.encode(text)) == text


@settings(max_examples=300, deadline=None)
@given(NO_ESCAPED_SPACE)
def test_spm_round_trip(text: str) -> None:
    # U+2581 is how SentencePiece spells a space, so it cannot survive a round trip.
    assert SPM.decode(SPM.encode(text), skip_special=True) == text


@settings(max_examples=200, deadline=None)
@given(NO_ESCAPED_SPACE.filter(lambda t: "\n" not in t and "  " not in t))
def test_spm_space_prefix_round_trip(text: str) -> None:
    # Without user-defined tokens in the text, the one added space is the one decode removes.
    ids = SPM_PREFIX.encode(text)
    assert ids[:1] == [SPM_PREFIX.bos_id]
    assert SPM_PREFIX.decode(ids, skip_special=True) == text
    assert SPM_PREFIX.decode(ids[1:]) == text


def test_bpe_merges_and_digits() -> None:
    ids = BPE.encode("the hello world and 123...")
    assert pieces(BPE, ids) == ["t", "he", "Ġhello", "Ġworld", "Ġand", "Ġ", "1", "2", "3", "..."]
    assert BPE.encode(" hi  the\n\n") == BPE.encode(" hi") + BPE.encode("  the\n\n")


def test_bpe_special_tokens() -> None:
    text = "<|im_start|>user\nhi<|im_end|>"
    assert BPE.encode(text, parse_special=True) == [1, *BPE.encode("user\nhi"), 2]
    plain = BPE.encode(text)
    assert not {0, 1, 2} & set(plain)
    assert BPE.decode(plain) == text
    assert BPE.decode([1, 2]) == "<|im_start|><|im_end|>"
    assert BPE.decode([1, 2], skip_special=True) == ""
    assert BPE.eos_ids == {0, 2}  # EOS plus `<|endoftext|>`
    assert (BPE.bos_id, BPE.eos_id, BPE.bos_text, BPE.eos_text) == (
        1,
        2,
        "<|im_start|>",
        "<|im_end|>",
    )
    assert BPE.chat_template is not None and BPE.vocab_size == 298


def test_bpe_bos_eos_flags() -> None:
    tok = GGUFTokenizer.from_metadata(gpt2_tokenizer_metadata(add_bos=True))
    assert tok.encode("hi") == [1, *BPE.encode("hi")]
    assert tok.encode("hi", add_special=False) == BPE.encode("hi")
    assert BPE.encode("hi") == BPE.encode("hi", add_special=False)  # add_bos_token false
    meta = gpt2_tokenizer_metadata() | {"tokenizer.ggml.add_eos_token": True}
    assert GGUFTokenizer.from_metadata(meta).encode("hi") == [*BPE.encode("hi"), 2]


def test_token_bytes() -> None:
    assert BPE.token_bytes(3 + 0x20) == b" " and BPE.token_bytes(3 + 0xFF) == b"\xff"
    assert BPE.token_bytes(BPE.encode(" hello")[0]) == b" hello"
    assert BPE.token_bytes(1) == b"" and BPE.token_bytes(1, special=True) == b"<|im_start|>"
    assert BPE.token_type(1) == TokenType.CONTROL
    assert SPM.token_bytes(8 + 0xC3) == b"\xc3"
    assert SPM.token_bytes(SPM.encode("a hello")[-1]) == b" hello"
    assert SPM.token_bytes(7) == b"  " and SPM.token_bytes(6) == b"\n"
    assert SPM.token_bytes(4) == b"" and SPM.token_bytes(3, special=True) == b"<unk>"
    with pytest.raises(ValueError):
        BPE.token_bytes(-1)
    with pytest.raises(ValueError):
        BPE.decode([BPE.vocab_size])


def test_spm_user_defined_whitespace_tokens() -> None:
    # Gemma stores whitespace runs as user-defined tokens with raw spaces; llama.cpp cuts them
    # out of the text before SentencePiece, whatever `parse_special` says.
    a_ids = SPM.encode("a", add_special=False)
    assert SPM.encode("a  b\nc", add_special=False) == [
        *a_ids,
        7,
        *SPM.encode("b", add_special=False),
        6,
        *SPM.encode("c", add_special=False),
    ]
    ids = SPM.encode(
        "\u2581\u2581x", add_special=False
    )  # literal U+2581 is not the raw-space token
    assert 7 not in ids and pieces(SPM, ids) == ["▁", "▁", "x"]


def test_spm_special_tokens_and_bos() -> None:
    text = "<start_of_turn>user\nhi<end_of_turn>"
    user, hi = SPM.encode("user", add_special=False), SPM.encode("hi", add_special=False)
    assert SPM.encode(text, parse_special=True) == [2, 4, *user, 6, *hi, 5]
    plain = SPM.encode(text)
    assert plain[0] == 2 and not {4, 5} & set(plain[1:])
    assert SPM.decode(plain, skip_special=True) == text
    assert SPM.eos_ids == {1, 5}
    assert SPM_PREFIX.encode("<start_of_turn>hello", parse_special=True) == [2, 4, 278]


def test_spm_missing_unknown_token_is_supplied() -> None:
    meta = spm_tokenizer_metadata()
    meta["tokenizer.ggml.token_type"] = [
        3 if t == 2 else t for t in meta["tokenizer.ggml.token_type"]
    ]
    del meta["tokenizer.ggml.unknown_token_id"]
    tok = GGUFTokenizer.from_metadata(meta)
    assert tok.encode("héllo") == SPM.encode("héllo")


@pytest.mark.parametrize(
    "change",
    [
        {"tokenizer.ggml.model": "bert"},
        {"tokenizer.ggml.model": None},
        {"tokenizer.ggml.pre": "no-such-pre"},
        {"tokenizer.ggml.tokens": []},
        {"tokenizer.ggml.token_type": [1, 1]},
    ],
)
def test_unsupported_metadata(change: dict) -> None:
    with pytest.raises(GGUFError):
        GGUFTokenizer.from_metadata(gpt2_tokenizer_metadata() | change)


@pytest.mark.parametrize("pre", ["default", "gpt-2", "llama-bpe", "qwen2", "smollm"])
def test_bpe_pre_tokenizers_round_trip(pre: str) -> None:
    tok = GGUFTokenizer.from_metadata(gpt2_tokenizer_metadata(pre=pre))
    text = "I'm 12345 tokens,  he said\n\n\t  x\u00a0y 日本 🤖!!"
    assert tok.decode(tok.encode(text, add_special=False)) == text


def _write_metadata_gguf(path, meta: dict) -> None:
    writer = gguf.GGUFWriter(str(path), "llama")
    add_metadata(writer, meta)
    writer.add_float32("llama.rope.freq_base", 0.5)
    writer.add_tensor("output_norm.weight", np.arange(64, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_read_metadata_plain_python(tmp_path) -> None:
    meta = spm_tokenizer_metadata()
    path = tmp_path / "meta.gguf"
    _write_metadata_gguf(path, meta)
    got = read_metadata(open_gguf(path))
    for key, value in meta.items():
        assert got[key] == value and type(got[key]) is type(value), key
    assert got["llama.rope.freq_base"] == 0.5 and got["general.architecture"] == "llama"
    stock = gguf.GGUFReader(path)  # the fast reader parses exactly like the stock one
    assert got == {name: field.contents() for name, field in stock.fields.items()}
    assert GGUFTokenizer.from_metadata(got).encode("hello") == SPM.encode("hello")
    tensor = open_gguf(path).tensors[0]
    assert tensor.name == "output_norm.weight" and tensor.data.tolist() == list(range(64))


def test_open_gguf_errors(tmp_path) -> None:
    path = tmp_path / "meta.gguf"
    _write_metadata_gguf(path, gpt2_tokenizer_metadata())
    data = path.read_bytes()
    for size in (0, 3, 10, 100, len(data) // 2, len(data) - 1):
        cut = tmp_path / f"cut{size}.gguf"
        cut.write_bytes(data[:size])
        with pytest.raises(GGUFError, match=f"cut{size}.gguf"):
            open_gguf(cut)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(GGUFError, match="junk.gguf"):
        open_gguf(junk)
    with pytest.raises(ModelNotFoundError):
        open_gguf(tmp_path / "missing.gguf")


# --- real models (slow) -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_tokenizers() -> dict[str, GGUFTokenizer]:
    from jaxserve.loading.pull import pull

    out = {}
    for name in ("smollm2-135m", "gemma3-270m"):
        start = time.perf_counter()
        meta = read_metadata(open_gguf(pull(name, quiet=True)))
        assert time.perf_counter() - start < 10.0  # the stock GGUFReader takes ~12 s on Gemma
        out[name] = GGUFTokenizer.from_metadata(meta)
    return out


KNOWN = [  # (text, plain ids, ids with add_special + parse_special), from llama.cpp
    ("smollm2-135m", "Hello world! It's 2024.",
     [19556, 905, 17, 657, 506, 216, 34, 32, 34, 36, 30], None),
    ("smollm2-135m", "  two  spaces\n\n\tTab", [216, 827, 216, 5600, 1116, 197, 30064], None),
    ("smollm2-135m", "日本語 🤖", [23274, 115, 40993, 179, 120, 248, 15107, 114, 240], None),
    ("smollm2-135m", "<|im_start|>user\nHi<|im_end|>\n",
     [44, 108, 306, 79, 3738, 108, 46, 4093, 198, 26843, 44, 108, 306, 79, 486, 108, 46, 198],
     [1, 4093, 198, 26843, 2, 198]),
    ("gemma3-270m", "Hello world! It's 2024.",
     [9259, 1902, 236888, 1030, 236789, 236751, 236743, 236778, 236771, 236778, 236812, 236761],
     None),
    ("gemma3-270m", "  two  spaces\n\n\tTab", [138, 13498, 138, 35220, 108, 255968, 7874],
     [2, 138, 13498, 138, 35220, 108, 255968, 7874]),
    ("gemma3-270m", "日本語 🤖", [94951, 236743, 246143], [2, 94951, 236743, 246143]),
    ("gemma3-270m", "<start_of_turn>user\nHi<end_of_turn>\n",
     [236820, 3041, 236779, 1340, 236779, 887, 236813, 2364, 107, 10979, 236820, 643, 236779, 1340,
      236779, 887, 236813, 107],
     [2, 105, 2364, 107, 10979, 106, 107]),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(("model", "text", "plain", "special"), KNOWN)
def test_real_known_ids(real_tokenizers, model, text, plain, special) -> None:
    tok = real_tokenizers[model]
    assert tok.encode(text, add_special=False) == plain
    if special is not None:
        assert tok.encode(text, add_special=True, parse_special=True) == special


@pytest.mark.slow
def test_real_special_ids(real_tokenizers) -> None:
    smol, gemma = real_tokenizers["smollm2-135m"], real_tokenizers["gemma3-270m"]
    assert (smol.bos_id, smol.eos_id, smol.eos_ids) == (1, 2, {0, 2, 4})  # as llama.cpp's EOG set
    assert (gemma.bos_id, gemma.eos_id, gemma.eos_ids) == (2, 1, {1, 106, 212})
    assert gemma.add_space_prefix is False and gemma.chat_template is None
    assert smol.chat_template is not None and "<|im_start|>" in smol.chat_template


@pytest.fixture(scope="module")
def smollm_bytes(real_tokenizers) -> frozenset[int]:
    """Bytes with a token of their own: SmolLM2 lacks some (0x04, 0xF1, ...), and llama.cpp drops
    them from the text too, so text holding them cannot round-trip."""
    tok = real_tokenizers["smollm2-135m"]
    pieces = (tok.token_bytes(i) for i in range(tok.vocab_size))
    return frozenset(p[0] for p in pieces if len(p) == 1)


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(text=st.text())
def test_real_smollm_round_trip(real_tokenizers, smollm_bytes, text: str) -> None:
    tok = real_tokenizers["smollm2-135m"]
    if smollm_bytes.issuperset(text.encode()):
        assert tok.decode(tok.encode(text)) == text


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(text=NO_ESCAPED_SPACE)
def test_real_gemma_round_trip(real_tokenizers, text: str) -> None:
    tok = real_tokenizers["gemma3-270m"]
    assert tok.decode(tok.encode(text), skip_special=True) == text
