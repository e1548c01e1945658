"""The research hooks over HTTP: the same hidden states, logit lens, uncertainty and steering
as the Python API, on completions and chat, streamed or not; bad requests are 400s naming the
field."""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import pytest

from jaxserve import LLM, SamplingParams
from jaxserve.api.async_engine import AsyncEngine
from jaxserve.api.openai_server import Served, ServerConfig, create_app
from jaxserve.loading.control_vector import write_control_vector
from tests.http_server import running

PROMPT = "The ocean is deep."
HOOKS = {
    "return_hidden_states": [0, -1],
    "hidden_positions": "all",
    "logit_lens": [1],
    "logit_lens_top_k": 3,
    "return_uncertainty": True,
}
PARAMS = SamplingParams(
    max_tokens=6,
    temperature=0.0,
    ignore_eos=True,
    return_hidden_states=(0, -1),
    hidden_positions="all",
    logit_lens=(1,),
    logit_lens_top_k=3,
    return_uncertainty=True,
)
DIRECTION = np.linspace(-4.0, 4.0, 64).astype(np.float32)


@pytest.fixture(scope="module")
def setup(tiny_gguf, tmp_path_factory):
    path = write_control_vector(tmp_path_factory.mktemp("cv") / "cv.gguf", {1: DIRECTION})
    llm = LLM(
        str(tiny_gguf),
        weights="int8",
        max_model_len=64,
        capture_layers=3,
        steering_slots=3,
        control_vectors={"tilt": path},
        compilation_cache_dir="",
    )
    # what the Python API gives, computed before the server drives the engine
    expected = llm.generate(PROMPT, PARAMS)[0]
    plain = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    steered = llm.generate(PROMPT, SamplingParams(**{**plain.__dict__, "steering": "tilt"}))[0]
    unsteered = llm.generate(PROMPT, plain)[0]
    engine = AsyncEngine(llm.engine)
    app = create_app(ServerConfig(model_names=("tiny",)), Served.from_llm(llm, engine))
    with running(app) as url, httpx.Client(base_url=url, timeout=120) as client:
        yield client, llm, expected, steered, unsteered
    engine.shutdown()


def _decode(field: str, shape) -> np.ndarray:
    return np.frombuffer(base64.b64decode(field), "<f4").reshape(shape)


def _check_hidden(hidden: dict, expected) -> None:
    assert hidden["positions"] == expected.hidden_positions
    assert hidden["dtype"] == "float32" and hidden["encoding"] == "base64"
    assert set(hidden["layers"]) == {"0", "1", "final"}
    for key in (0, 1, "final"):
        got = _decode(hidden["layers"][str(key)], hidden["shape"])
        np.testing.assert_array_equal(got, expected.hidden_states[key])


def _check_tokens(lens: list, uncertainty: list, expected, tokenizer) -> None:
    assert len(lens) == len(uncertainty) == len(expected.token_ids)
    for got, want in zip(lens, expected.logit_lens, strict=True):
        assert [e["id"] for e in got["1"]] == [t for t, _ in want[1]]
        assert [e["logprob"] for e in got["1"]] == pytest.approx([x for _, x in want[1]])
        assert got["1"][0]["token"] == tokenizer.token_bytes(want[1][0][0], special=True).decode(
            "utf-8", errors="backslashreplace"
        )
    for got, want in zip(uncertainty, expected.uncertainty, strict=True):
        assert got["entropy"] == pytest.approx(want.entropy)
        assert got["processed_entropy"] == pytest.approx(want.processed_entropy)
        assert got["margin"] == pytest.approx(want.margin)


def _body(**more) -> dict:
    return {"model": "tiny", "max_tokens": 6, "temperature": 0, "ignore_eos": True, **more}


def test_completion_returns_what_the_python_api_does(setup):
    client, llm, expected, *_ = setup
    r = client.post("/v1/completions", json=_body(prompt=PROMPT, **HOOKS))
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["text"] == expected.text
    _check_hidden(choice["hidden_states"], expected)
    _check_tokens(choice["logit_lens"], choice["uncertainty"], expected, llm.tokenizer)


def _events(response: httpx.Response) -> list[dict]:
    lines = [x[len("data: ") :] for x in response.text.splitlines() if x.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(x) for x in lines[:-1]]


@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions"])
def test_streams_carry_the_same(setup, route):
    client, llm, expected, *_ = setup
    if route == "/v1/completions":
        body = _body(prompt=PROMPT, stream=True, **HOOKS)
    else:
        ids = llm.tokenize(PROMPT)
        text = llm.detokenize(ids)
        body = _body(messages=[{"role": "user", "content": text}], stream=True, **HOOKS)
    r = client.post(route, json=body)
    assert r.status_code == 200, r.text
    choices = [c for e in _events(r) for c in e["choices"]]
    lens = [x for c in choices for x in c.get("logit_lens", [])]
    uncertainty = [x for c in choices for x in c.get("uncertainty", [])]
    hidden = [c["hidden_states"] for c in choices if "hidden_states" in c]
    assert len(hidden) == 1
    if route == "/v1/completions":
        _check_hidden(hidden[0], expected)
        _check_tokens(lens, uncertainty, expected, llm.tokenizer)
    else:  # the chat prompt differs: check the shapes line up with the tokens
        n = sum(len(c.get("logit_lens", [])) for c in choices)
        assert n == len(uncertainty) == 6
        p = hidden[0]["shape"][0]
        assert hidden[0]["positions"] == list(range(p)) and hidden[0]["shape"][1] == 64


def test_chat_returns_the_fields(setup):
    client, *_ = setup
    body = _body(messages=[{"role": "user", "content": "hi"}], **HOOKS)
    choice = client.post("/v1/chat/completions", json=body).json()["choices"][0]
    assert len(choice["logit_lens"]) == len(choice["uncertainty"]) == 6
    assert choice["hidden_states"]["shape"][1] == 64


def test_steering_by_name_and_inline(setup):
    client, _, _, steered, unsteered = setup
    named = client.post("/v1/completions", json=_body(prompt=PROMPT, steering="tilt"))
    assert named.json()["choices"][0]["text"] == steered.text
    inline = {"1": DIRECTION.tolist()}
    same = client.post("/v1/completions", json=_body(prompt=PROMPT, steering=inline))
    assert same.json()["choices"][0]["text"] == steered.text
    zero = client.post("/v1/completions", json=_body(prompt=PROMPT, steering={"0": [0.0] * 64}))
    assert zero.json()["choices"][0]["text"] == unsteered.text


REFUSALS = [
    ({"return_hidden_states": [5]}, "return_hidden_states"),
    ({"logit_lens": [0, 1, -1, -2]}, "logit_lens"),
    ({"return_hidden_states": "0"}, "return_hidden_states"),
    ({"hidden_positions": "every"}, "hidden_positions"),
    ({"hidden_positions": "all"}, "hidden_positions"),
    ({"logit_lens": [0], "logit_lens_top_k": 50}, "logit_lens_top_k"),
    ({"steering": "nope"}, "steering"),
    ({"steering": {"0": [1.0, 2.0]}}, "steering"),
    ({"steering": {"x": [1.0]}}, "steering"),
    ({"steering": [1.0, 2.0]}, "steering"),
    ({"steering_scale": 2.0}, "steering_scale"),
    ({"return_uncertainty": "yes"}, "return_uncertainty"),
]


@pytest.mark.parametrize(("extra", "param"), REFUSALS, ids=[str(x)[:40] for x, _ in REFUSALS])
def test_bad_requests_are_400_naming_the_field(setup, extra, param):
    client, *_ = setup
    for route, body in (
        ("/v1/completions", _body(prompt=PROMPT, **extra)),
        ("/v1/chat/completions", _body(messages=[{"role": "user", "content": "x"}], **extra)),
    ):
        r = client.post(route, json=body)
        assert r.status_code == 400, (route, r.text)
        error = r.json()["error"]
        assert error["param"] == param, error
