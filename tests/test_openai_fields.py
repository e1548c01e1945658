"""Request fields of the OpenAI HTTP front that other servers have and clients send: stop string
and special-token handling, prompt logprobs, chat template variables."""

from __future__ import annotations

import json

import httpx
import pytest

from jaxserve import LLM, SamplingParams
from jaxserve.api.async_engine import AsyncEngine
from jaxserve.api.openai_server import Served, ServerConfig, create_app
from tests.http_server import running
from tests.test_openai_errors import CHAT, MESSAGES, _error


@pytest.fixture(scope="module")
def llm(tiny_gguf) -> LLM:
    return LLM(str(tiny_gguf), weights="f32", max_num_seqs=4, decode_steps=4, max_model_len=64)


@pytest.fixture(scope="module")
def client(llm):
    engine = AsyncEngine(llm.engine)
    app = create_app(ServerConfig(model_names=("tiny",)), Served.from_llm(llm, engine))
    with running(app) as url, httpx.Client(base_url=url, timeout=60) as c:
        yield c
    engine.shutdown()


def test_stop_string_and_special_token_fields_are_applied(client):
    forced = {"prompt": "Hello", "max_tokens": 2, "logit_bias": {"1": 100}, "ignore_eos": True}
    plain = client.post("/v1/completions", json=forced).json()["choices"][0]["text"]
    written = client.post("/v1/completions", json=forced | {"skip_special_tokens": False})
    assert plain == "" and written.json()["choices"][0]["text"] == "<|im_start|>" * 2
    free = {"prompt": "Hello", "max_tokens": 12, "temperature": 0, "ignore_eos": True}
    text = client.post("/v1/completions", json=free).json()["choices"][0]["text"]
    stop = text[4:6]
    kept = client.post(
        "/v1/completions", json=free | {"stop": [stop], "include_stop_str_in_output": True}
    ).json()["choices"][0]
    assert kept["finish_reason"] == "stop" and kept["text"] == text[: text.find(stop)] + stop
    bad = _error(client.post("/v1/completions", json=free | {"skip_special_tokens": "no"}), 400)
    assert bad["param"] == "skip_special_tokens"


def test_prompt_logprobs_over_http_match_the_engine(client, llm):
    """vLLM's `prompt_logprobs` on /v1/completions: per prompt token (None first), its own
    logprob and its top alternatives, equal to what `LLM.generate` computes; in the first
    streamed chunk too."""
    ids = [5, 77, 120, 3, 250, 18]
    body = {"prompt": ids, "max_tokens": 1, "temperature": 0, "prompt_logprobs": 2}
    expected = llm.generate(ids, SamplingParams(max_tokens=1, prompt_logprobs=2))[0]
    shown = client.post("/v1/completions", json=body).json()["choices"][0]["prompt_logprobs"]
    assert len(shown) == len(ids) and shown[0] is None
    for token, entry, got in zip(ids[1:], expected.prompt_logprobs[1:], shown[1:], strict=True):
        assert got[str(token)]["logprob"] == pytest.approx(entry.logprob, abs=1e-5)
        for alt, lp in entry.top:
            assert got[str(alt)]["logprob"] == pytest.approx(lp, abs=1e-5)
        assert len(got) <= 3 and all("decoded_token" in v for v in got.values())
    with client.stream("POST", "/v1/completions", json=body | {"stream": True}) as r:
        first = next(json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: {"))
    assert first["choices"][0]["prompt_logprobs"] == shown
    for bad in (-1, 21, "3", True):
        error = _error(client.post("/v1/completions", json=body | {"prompt_logprobs": bad}), 400)
        assert error["param"] == "prompt_logprobs"
    refused = _error(client.post("/v1/chat/completions", json=CHAT | {"prompt_logprobs": 2}), 400)
    assert refused["param"] == "prompt_logprobs"


def test_chat_template_kwargs_reach_the_template(client, llm):
    from jaxserve.text.chat_template import ChatTemplate

    original = llm.template
    llm.template = ChatTemplate(
        "{% if greeting %}{{ greeting }} {% endif %}"
        "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    )
    try:
        body = {"messages": MESSAGES, "max_tokens": 1, "temperature": 0}
        plain = client.post("/v1/chat/completions", json=body).json()["usage"]["prompt_tokens"]
        greeted = client.post(
            "/v1/chat/completions",
            json=body | {"chat_template_kwargs": {"greeting": "Good morning to you"}},
        ).json()["usage"]["prompt_tokens"]
        assert greeted > plain
        assert llm.render_chat(MESSAGES, template_kwargs={"greeting": "Hey"}) == "Hey Hello"
        for bad in ({"messages": []}, {"tools": 1}, ["x"], "x"):
            error = _error(
                client.post("/v1/chat/completions", json=body | {"chat_template_kwargs": bad}), 400
            )
            assert error["param"] == "chat_template_kwargs"
    finally:
        llm.template = original


def test_special_token_texts_in_a_prompt_are_their_tokens(client, llm):
    """A hand-written chat prompt means what it says, as in llama-server and vLLM: its
    `<|im_start|>` is the control token, on /v1/completions, /tokenize and in `LLM.generate`
    (`LLM.tokenize` keeps llama.cpp's default, plain text, unless asked)."""
    prompt = "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    ids = client.post("/tokenize", json={"prompt": prompt}).json()["tokens"]
    assert ids.count(1) == 2  # id 1: <|im_start|>, twice
    assert ids == llm.tokenize(prompt, parse_special=True)
    plain = llm.tokenize(prompt)  # as plain text: the same characters as bytes
    assert 1 not in plain and len(plain) > len(ids)
    body = {"prompt": prompt, "max_tokens": 1, "echo": True, "logprobs": 0, "temperature": 0}
    choice = client.post("/v1/completions", json=body).json()
    assert choice["usage"]["prompt_tokens"] == len(ids)
    out = llm.generate(prompt, SamplingParams(max_tokens=1, temperature=0.0))[0]
    assert out.prompt_token_ids == ids
