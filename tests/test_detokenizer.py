"""IncrementalDetokenizer: streamed text equals one-shot `decode`, and is UTF-8 safe."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxserve.text.detokenizer import IncrementalDetokenizer
from jaxserve.text.tokenizer import GGUFTokenizer, Tokenizer
from tests.tiny_vocab import gpt2_tokenizer_metadata, spm_tokenizer_metadata

TOKENIZERS = {
    "bpe": GGUFTokenizer.from_metadata(gpt2_tokenizer_metadata()),
    "spm": GGUFTokenizer.from_metadata(spm_tokenizer_metadata()),
    "spm-prefix": GGUFTokenizer.from_metadata(spm_tokenizer_metadata(add_space_prefix=True)),
}


def stream(tok: Tokenizer, ids: list[int], *, skip_special: bool = False) -> list[str]:
    detok = IncrementalDetokenizer(tok, skip_special=skip_special)
    return [detok.add(i) for i in ids] + [detok.flush()]


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(sorted(TOKENIZERS)),
    raw_ids=st.lists(st.integers(0, 10_000)),
    skip_special=st.booleans(),
)
def test_stream_equals_decode(name: str, raw_ids: list[int], skip_special: bool) -> None:
    # Arbitrary ids: byte tokens that form invalid UTF-8, control tokens, BOS anywhere.
    tok = TOKENIZERS[name]
    ids = [i % tok.vocab_size for i in raw_ids]
    text = "".join(stream(tok, ids, skip_special=skip_special))
    assert text == tok.decode(ids, skip_special=skip_special)


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(TOKENIZERS)), text=st.text())
def test_stream_of_encoded_text(name: str, text: str) -> None:
    tok = TOKENIZERS[name]
    ids = tok.encode(text)
    chunks = stream(tok, ids)
    assert "".join(chunks) == tok.decode(ids)
    assert "\ufffd" not in "".join(chunks) or "\ufffd" in text  # never half a character
    assert chunks[-1] == ""  # valid UTF-8 leaves nothing held back


def test_multibyte_character_is_held_until_complete() -> None:
    tok = TOKENIZERS["bpe"]
    ids = tok.encode("é🤖")  # 2 + 4 byte tokens, no merges
    assert len(ids) == 6
    assert stream(tok, ids) == ["", "é", "", "", "", "🤖", ""]


def test_unfinished_character_flushes_as_replacement() -> None:
    tok = TOKENIZERS["spm"]
    ids = tok.encode("🤖", add_special=False)[:2]
    assert stream(tok, ids) == ["", "", "\ufffd"]


def test_special_tokens() -> None:
    tok = TOKENIZERS["bpe"]
    ids = tok.encode("<|im_start|>hi<|im_end|>", parse_special=True)
    assert "".join(stream(tok, ids)) == "<|im_start|>hi<|im_end|>"
    assert "".join(stream(tok, ids, skip_special=True)) == "hi"


@pytest.mark.parametrize("with_bos", [True, False])
def test_space_prefix_removed_once(with_bos: bool) -> None:
    tok = TOKENIZERS["spm-prefix"]
    ids = tok.encode("hello world", add_special=with_bos)
    assert "".join(stream(tok, ids, skip_special=True)) == "hello world"
    assert "".join(stream(tok, ids)) == ("<bos>" if with_bos else "") + "hello world"


@pytest.fixture(scope="module")
def real_tokenizers() -> list[Tokenizer]:
    from jaxserve.loading.gguf_meta import open_gguf, read_metadata
    from jaxserve.loading.pull import pull

    paths = [pull(name, quiet=True) for name in ("smollm2-135m", "gemma3-270m")]
    return [GGUFTokenizer.from_metadata(read_metadata(open_gguf(p))) for p in paths]


@pytest.mark.slow
@settings(max_examples=100, deadline=None)
@given(text=st.text())
def test_real_models_stream(real_tokenizers: list[Tokenizer], text: str) -> None:
    for tok in real_tokenizers:
        ids = tok.encode(text, parse_special=True)
        assert "".join(stream(tok, ids)) == tok.decode(ids)
