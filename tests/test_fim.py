"""Fill-in-the-middle: `suffix` on /v1/completions for a vocabulary with FIM tokens, a clear 400
for one without."""

from __future__ import annotations

import httpx
import pytest

from jaxserve import LLM, SamplingParams
from jaxserve.api.async_engine import AsyncEngine
from jaxserve.api.openai_server import Served, ServerConfig, create_app
from jaxserve.text.fim import fim_prompt, fim_tokens
from tests.http_server import running
from tests.tiny_gguf import write_tiny_gguf
from tests.tiny_vocab import gpt2_tokenizer_metadata

FIM = ("<fim_prefix>", "<fim_suffix>", "<fim_middle>")


@pytest.fixture(scope="module")
def fim_llm(tmp_path_factory) -> LLM:
    meta = gpt2_tokenizer_metadata()
    meta["tokenizer.ggml.tokens"] = [*meta["tokenizer.ggml.tokens"], *FIM]
    meta["tokenizer.ggml.token_type"] = [*meta["tokenizer.ggml.token_type"], 3, 3, 3]
    path = write_tiny_gguf(tmp_path_factory.mktemp("fim") / "fim.gguf", meta)
    return LLM(str(path), weights="f32", max_num_seqs=4, decode_steps=4, max_model_len=128)


def _serve(llm: LLM):
    engine = AsyncEngine(llm.engine)
    return engine, create_app(ServerConfig(model_names=("tiny",)), Served.from_llm(llm, engine))


def test_fim_tokens_are_found_by_their_texts(fim_llm, tiny_gguf):
    n = fim_llm.tokenizer.vocab_size
    assert fim_tokens(fim_llm.tokenizer) == (n - 3, n - 2, n - 1)
    assert fim_tokens(LLM(str(tiny_gguf), weights="f32", max_model_len=64).tokenizer) is None


def test_suffix_fills_in_the_middle(fim_llm):
    tok = fim_llm.tokenizer
    ids = fim_prompt(tok, tok.encode("def add(a, b"), "):\n    return", fim_tokens(tok))
    assert ids[-1] == fim_tokens(tok)[2] and ids.count(fim_tokens(tok)[1]) == 1
    greedy = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    expected = fim_llm.generate(ids, greedy)[0]
    engine, app = _serve(fim_llm)
    body = {"prompt": "def add(a, b", "suffix": "):\n    return", "max_tokens": 6}
    body |= {"temperature": 0, "ignore_eos": True}
    try:
        with running(app) as url, httpx.Client(base_url=url, timeout=60) as client:
            r = client.post("/v1/completions", json=body)
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["text"] == expected.text
            assert r.json()["usage"]["prompt_tokens"] == len(ids)
            echo = client.post("/v1/completions", json=body | {"echo": True})
            assert echo.status_code == 400 and echo.json()["error"]["param"] == "suffix"
    finally:
        engine.shutdown()


def test_suffix_without_fim_tokens_is_a_400_naming_it(tiny_gguf):
    engine, app = _serve(LLM(str(tiny_gguf), weights="f32", max_model_len=64))
    try:
        with running(app) as url, httpx.Client(base_url=url, timeout=60) as client:
            r = client.post("/v1/completions", json={"prompt": "a", "suffix": "b"})
    finally:
        engine.shutdown()
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "suffix"
    assert "fill-in-the-middle" in r.json()["error"]["message"]
