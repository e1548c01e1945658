"""Token healing: the prompt's last token is backed off and the output must start with its text.

Unit checks of the healed prompt and its pattern; then the real tokenizers (SmolLM2's byte-level
BPE, Gemma 3's SentencePiece) with their models in int8 (the default weights), greedy, through the
Python API and the HTTP field of the same name."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from jaxserve import LLM, SamplingParams
from jaxserve.api.async_engine import AsyncEngine
from jaxserve.api.openai_server import Served, ServerConfig, create_app
from jaxserve.engine.admission import healed_prompt
from jaxserve.grammar import matches

PROMPTS = [
    "The capital of France is Paris. The capital of Germany is Ber",
    "Visit our website at https://www.example.",
    "def fibonacci(n):\n    return n if n < 2 else fibona",
    "Ein schöner Tag in Münch",
    "print(x.",
]


def test_the_pattern_is_the_last_tokens_text_then_anything():
    tokens = {1: b"x", 2: b"(.*[\\", 3: b"", 4: b"\xe2\x82", 5: "é😀".encode()}
    ids, pattern = healed_prompt([1, 2], tokens.__getitem__)
    assert ids == [1]
    assert matches({"regex": pattern}, "(.*[\\") and matches({"regex": pattern}, "(.*[\\ more")
    assert not matches({"regex": pattern}, "(.*") and not matches({"regex": pattern}, "x(.*[\\")
    ids, pattern = healed_prompt([1, 5], tokens.__getitem__)
    assert (
        ids == [1] and matches({"regex": pattern}, "é😀!") and not matches({"regex": pattern}, "e")
    )
    for unhealable in ([1, 3], [1, 4], [2]):  # control token, part of a character, one token
        assert healed_prompt(unhealable, tokens.__getitem__) == (unhealable, "")


def test_not_with_a_constraint():
    with pytest.raises(ValueError, match="token_healing"):
        SamplingParams(token_healing=True, regex="a+")


def _removed(llm: LLM, prompt: str) -> str:
    ids = llm.tokenizer.encode(prompt)
    return llm.tokenizer.token_bytes(ids[-1]).decode()


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    return LLM(str(smollm2_path), max_num_seqs=4, max_model_len=512)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_the_output_starts_with_the_removed_text(model, request):
    llm = request.getfixturevalue("smollm2" if model == "smollm2" else "gemma3_int8")
    healing = SamplingParams(max_tokens=6, temperature=0.0, token_healing=True)
    outputs = llm.generate(PROMPTS, healing)
    for prompt, out in zip(PROMPTS, outputs, strict=True):
        removed = _removed(llm, prompt)
        assert out.text.startswith(removed), (prompt, removed, out.text)
        assert len(out.prompt_token_ids) == len(llm.tokenizer.encode(prompt)) - 1


@pytest.mark.slow
def test_a_prompt_cut_inside_a_word_continues_like_the_whole_word(smollm2):
    """Cut inside "Berlin" (where the plain prompt may go astray: "Ber" + "lina..."), the healed
    text is the one the uncut prompt gives."""
    whole = "The capital of France is Paris. The capital of Germany is Berlin"
    greedy = SamplingParams(max_tokens=8, temperature=0.0)
    reference = whole + smollm2.generate(whole, greedy)[0].text
    for cut in (3, 5):
        prompt = whole[:-cut]
        removed = _removed(smollm2, prompt)
        healed = smollm2.generate(
            prompt, SamplingParams(max_tokens=8, temperature=0.0, token_healing=True)
        )
        text = prompt[: len(prompt) - len(removed)] + healed[0].text
        n = min(len(text), len(reference))
        assert text[:n] == reference[:n], (text, reference)


@pytest.mark.slow
def test_the_http_field(smollm2):
    engine = AsyncEngine(smollm2.engine)
    try:
        app = create_app(ServerConfig(model_names=("m",)), Served.from_llm(smollm2, engine))
        with TestClient(app) as client:
            body = {"model": "m", "prompt": PROMPTS[0], "max_tokens": 4, "temperature": 0}
            r = client.post("/v1/completions", json={**body, "token_healing": True})
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["text"].startswith(_removed(smollm2, PROMPTS[0]))
            bad = client.post("/v1/completions", json={**body, "token_healing": True, "regex": "a"})
            assert bad.status_code == 400 and "token_healing" in bad.json()["error"]["message"]
    finally:
        engine.shutdown()
