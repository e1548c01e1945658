"""The OpenAI HTTP front's error behaviour: strictness (every field applied or refused with a 400
naming it), OpenAI-shaped errors for every failure, auth, CORS, request ids, load/drain states,
queue full, metrics, and malformed bodies that must never give a 5xx."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxserve import LLM
from jaxserve.api.async_engine import AsyncEngine
from jaxserve.api.openai_server import Served, ServerConfig, create_app
from tests.http_server import running
from tests.mock_engine import FullEngine

MESSAGES = [{"role": "user", "content": "Hello"}]
CHAT = {"messages": MESSAGES, "max_tokens": 2}
COMPLETION = {"prompt": "Hello", "max_tokens": 2}


@pytest.fixture(scope="module")
def llm(tiny_gguf) -> LLM:
    return LLM(str(tiny_gguf), weights="f32", max_num_seqs=4, decode_steps=4, max_model_len=64)


@pytest.fixture(scope="module")
def served(llm):
    engine = AsyncEngine(llm.engine)
    yield Served.from_llm(llm, engine)
    engine.shutdown()


@pytest.fixture(scope="module")
def client(served):
    app = create_app(ServerConfig(model_names=("tiny",)), served)
    with running(app) as url, httpx.Client(base_url=url, timeout=60) as c:
        yield c


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "Traceback" not in r.text
    return body["error"]


IMAGE = {"type": "image_url", "image_url": {"url": "http://x/y.png"}}
TOOL = {"type": "function", "function": {"name": "f"}}
NOT_SCHEMA = {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "wat"}}}}
PARAMETERS = "tools[0].function.parameters"
CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
BAD_CALL = {"id": "c1", "type": "function", "function": {"name": "f"}}
BAD_CALL_PARAM = "messages[0].tool_calls[0].function.arguments"
CHAT_REFUSALS = [
    ({"frobnicate": 1}, "frobnicate"),
    ({"grammar": "root ::= ("}, "grammar"),
    ({"regex": "(?=lookahead)"}, "regex"),
    ({"choice": []}, "choice"),
    ({"regex": "a", "choice": ["a"]}, "choice"),
    ({"guided_json": {"type": "object", "not": {}}}, "guided_json"),
    ({"guided_regex": "(a"}, "guided_regex"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": 5}}}, "response_format"),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"schema": {"not": {}}}}},
        "response_format",
    ),
    ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "tool", "function": {"name": "f"}}]}, "tools[0].type"),
    ({"tools": [TOOL, TOOL]}, "tools[1].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": 5}}]}, PARAMETERS),
    ({"tools": [{"type": "function", "function": NOT_SCHEMA}]}, PARAMETERS),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [TOOL], "tool_choice": "sometimes"}, "tool_choice"),
    (
        {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "g"}}},
        "tool_choice",
    ),
    ({"tools": [TOOL], "response_format": {"type": "json_object"}}, "response_format"),
    ({"tools": [TOOL], "regex": "a+"}, "regex"),
    ({"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"messages": [{"role": "assistant", "tool_calls": [BAD_CALL]}]}, BAD_CALL_PARAM),
    ({"messages": [{"role": "user", "tool_calls": [CALL]}]}, "messages[0].tool_calls"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"prompt_logprobs": 1}, "prompt_logprobs"),
    ({"n_probs": 2}, "n_probs"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"top_p": 2.0}, "top_p"),
    ({"temperature": -1}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"presence_penalty": 5}, "presence_penalty"),
    ({"seed": -5}, "seed"),
    ({"logit_bias": {"not-a-token": 1}}, "logit_bias"),
    ({"repeat_penalty": 0}, "repeat_penalty"),
    ({"samplers": ["top_k", "bogus"]}, "samplers"),
    ({"allowed_token_ids": 5}, "allowed_token_ids"),
    ({"allowed_token_ids": [10**6]}, "allowed_token_ids"),  # refused by the engine (vocab)
    ({"logit_bias": {"999999": 1.0}}, "logit_bias"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_completion_tokens": -3}, "max_completion_tokens"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 99}, "top_logprobs"),
    ({"stream_options": {"include_usage": True, "extra": 1}}, "stream_options.extra"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [IMAGE]}]}, "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": "x", "mood": "happy"}]}, "messages[0].mood"),
    ({"stop": [""]}, "stop"),
    ({"stop_token_ids": ["eos"]}, "stop_token_ids[0]"),
    ({"model": None, "priority": "high"}, "priority"),
]


@pytest.mark.parametrize(("extra", "param"), CHAT_REFUSALS, ids=[p for _, p in CHAT_REFUSALS])
def test_chat_field_is_applied_or_refused_naming_it(client, extra, param):
    error = _error(client.post("/v1/chat/completions", json={**CHAT, **extra}), 400)
    assert error["param"] == param
    assert param.split(".")[0].split("[")[0] in error["message"] or error["code"] in (
        "invalid_value",
        "missing_required",
    )


COMPLETION_REFUSALS = [
    ({"suffix": "and then"}, "suffix"),
    ({"best_of": 3}, "best_of"),
    ({"logprobs": 50}, "logprobs"),
    ({"logprobs": True}, "logprobs"),
    ({"echo": "yes"}, "echo"),
    ({"prompt": []}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": [[1, 2], []]}, "prompt"),
    ({"prompt": [1, 10**7]}, "prompt"),
    ({"prompt": [1.5, 2]}, "prompt"),
    ({"max_tokens": -1}, "max_tokens"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"n": 0}, "n"),
    ({"stream_options": {"include_usage": True}, "stream": False}, "stream_options"),
]


@pytest.mark.parametrize(
    ("extra", "param"),
    COMPLETION_REFUSALS,
    ids=[p + str(i) for i, (_, p) in enumerate(COMPLETION_REFUSALS)],
)
def test_completion_field_is_applied_or_refused_naming_it(client, extra, param):
    error = _error(client.post("/v1/completions", json={**COMPLETION, **extra}), 400)
    assert error["param"] == param


def test_llamacpp_alias_names_the_field_as_sent(client):
    same = client.post("/v1/completions", json={**COMPLETION, "repeat_penalty": 1.2})
    canonical = client.post("/v1/completions", json={**COMPLETION, "repetition_penalty": 1.2})
    assert same.status_code == canonical.status_code
    if same.status_code == 400:
        assert _error(same, 400)["param"] == "repeat_penalty"


def test_prompt_longer_than_the_context_is_a_400_with_both_numbers(client, llm):
    ids = list(range(1, 100))
    error = _error(client.post("/v1/completions", json={**COMPLETION, "prompt": ids}), 400)
    assert error["code"] == "context_length_exceeded" and error["param"] == "prompt"
    assert "99" in error["message"] and "64" in error["message"]
    chat = {**CHAT, "messages": [{"role": "user", "content": "word " * 80}]}
    error = _error(client.post("/v1/chat/completions", json=chat), 400)
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    # One token short of the context still fits (it leaves room for one generated token).
    ok = client.post("/v1/completions", json={**COMPLETION, "prompt": list(range(1, 64))})
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 1
    at_limit = client.post("/v1/completions", json={**COMPLETION, "prompt": list(range(1, 65))})
    assert _error(at_limit, 400)["code"] == "context_length_exceeded"


def test_unknown_model_route_method_and_bad_json(client):
    error = _error(client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-9"}), 404)
    assert error["code"] == "model_not_found" and error["param"] == "model"
    _error(client.get("/v1/models/gpt-9"), 404)
    _error(client.get("/v1/nothing-here"), 404)
    _error(client.get("/v1/chat/completions"), 405)
    _error(client.delete("/v1/models"), 405)
    bad = {"content-type": "application/json"}
    assert _error(client.post("/v1/completions", content="{oops", headers=bad), 400)["code"]
    _error(client.post("/v1/completions", content="", headers=bad), 400)
    _error(client.post("/v1/completions", content="[1, 2]", headers=bad), 400)
    _error(client.post("/v1/completions", json={}), 400)
    _error(client.post("/tokenize", json={"prompt": "a", "messages": MESSAGES}), 400)
    _error(client.post("/tokenize", json={}), 400)


def test_request_id_is_echoed_or_generated(client):
    r = client.get("/v1/models", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    generated = client.get("/v1/models").headers["x-request-id"]
    assert len(generated) >= 16 and generated != client.get("/v1/models").headers["x-request-id"]
    bad = client.get("/v1/models", headers={"X-Request-ID": "x" * 500})
    assert bad.headers["x-request-id"] != "x" * 500


def test_metrics_count_requests_and_export_engine_stats(client):
    client.post("/v1/chat/completions", json=CHAT)
    client.post("/v1/chat/completions", json={**CHAT, "bogus": 1})
    text = client.get("/metrics").text
    lines = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    ok = 'jaxserve_http_requests_total{route="/v1/chat/completions",status="200"}'
    bad = 'jaxserve_http_requests_total{route="/v1/chat/completions",status="400"}'
    assert lines[ok] >= 1 and lines[bad] >= 1
    assert lines['jaxserve_http_request_duration_seconds_count{route="/v1/chat/completions"}'] >= 2
    assert lines["jaxserve_time_to_first_token_seconds_count"] >= 1
    assert lines['jaxserve_tokens_total{kind="completion"}'] >= 2
    assert lines['jaxserve_engine_num_finished_total{model="tiny"}'] >= 1
    assert 'jaxserve_engine_kv_pages_free{model="tiny"}' in lines
    assert 'jaxserve_engine_tokens_per_second_1m{model="tiny"}' in lines


def test_api_key_guards_every_route_but_health(served):
    config = ServerConfig(model_names=("tiny",), api_key="s3cret", cors_origins=("http://ui",))
    with running(create_app(config, served)) as url, httpx.Client(base_url=url) as c:
        for method, path, body in [
            ("POST", "/v1/chat/completions", CHAT),
            ("POST", "/v1/completions", COMPLETION),
            ("GET", "/v1/models", None),
            ("POST", "/tokenize", {"prompt": "a"}),
            ("GET", "/metrics", None),
        ]:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                r = c.request(method, path, json=body, headers=headers)
                assert _error(r, 401)["code"] == "invalid_api_key"
            good = c.request(method, path, json=body, headers={"Authorization": "Bearer s3cret"})
            assert good.status_code == 200, (path, good.text)
        assert c.get("/health").status_code == 200
        preflight = c.options(
            "/v1/chat/completions",
            headers={"Origin": "http://ui", "Access-Control-Request-Method": "POST"},
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "http://ui"
        denied = c.get("/v1/models", headers={"Origin": "http://ui"})
        assert denied.status_code == 401
        assert denied.headers["access-control-allow-origin"] == "http://ui"


def test_queue_full_is_429_with_retry_after(served):
    stub = Served(
        engine=FullEngine(),
        tokenizer=served.tokenizer,
        render_chat=served.render_chat,
        max_model_len=64,
    )
    config = ServerConfig(model_names=("tiny",), retry_after_s=3)
    with running(create_app(config, stub)) as url, httpx.Client(base_url=url) as c:
        r = c.post("/v1/completions", json=COMPLETION)
        assert _error(r, 429)["code"] == "queue_full" and r.headers["retry-after"] == "3"
        assert c.post("/v1/chat/completions", json={**CHAT, "stream": True}).status_code == 429


def test_loading_then_ready_then_draining(served):
    app = create_app(ServerConfig(model_names=("tiny",)), None)
    state = app.state.server
    with running(app) as url, httpx.Client(base_url=url) as c:
        assert _error(c.get("/health"), 503)["code"] == "loading"
        assert _error(c.post("/v1/chat/completions", json=CHAT), 503)["code"] == "loading"
        assert c.get("/v1/models").status_code == 200  # the names are known before loading
        state.served = served
        assert c.get("/health").status_code == 200
        assert c.post("/v1/chat/completions", json=CHAT).status_code == 200
        state.draining = True
        assert _error(c.get("/health"), 503)["code"] == "draining"
        r = c.post("/v1/completions", json=COMPLETION)
        assert _error(r, 503)["code"] == "draining" and "retry-after" in r.headers


def test_drain_lets_in_flight_streams_finish(served):
    app = create_app(ServerConfig(model_names=("tiny",)), served)
    state = app.state.server

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            body = {**COMPLETION, "max_tokens": 30, "ignore_eos": True, "stream": True}
            async with c.stream("POST", "/v1/completions", json=body) as r:
                lines = r.aiter_lines()
                first = await anext(lines)
                assert first.startswith("data: ")
                drained = asyncio.create_task(state.drain(timeout_s=30))
                await asyncio.sleep(0.05)
                refused = await c.post("/v1/completions", json=COMPLETION)
                rest = [line async for line in lines if line]
            assert await drained is True
            return refused, rest

    refused, rest = asyncio.run(main())
    assert refused.status_code == 503
    assert rest[-1] == "data: [DONE]"
    assert json.loads(rest[-2][6:])["choices"][0]["finish_reason"] == "length"


def test_the_fronts_do_not_import_jax():
    modules = "jaxserve.api.openai_server, jaxserve.api.grpc_server, jaxserve.api.serve"
    code = f"import sys, {modules}; print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _containers(inner: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=8),
    _containers,
    max_leaves=8,
)
_KEYS = [
    "model",
    "messages",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "n",
    "stop",
    "stream",
    "logprobs",
    "top_logprobs",
    "echo",
    "seed",
    "logit_bias",
    "stream_options",
    "tokens",
    "response_format",
    "tools",
    "top_k",
    "min_p",
    "samplers",
    "suffix",
    "user",
    "role",
    "content",
]
_bodies = st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=6), _json, max_size=6)
_small = st.fixed_dictionaries(
    {"max_tokens": st.integers(-2, 3)},
    optional={
        "messages": st.lists(
            st.fixed_dictionaries(
                {"role": st.sampled_from(["user", "tool", "x"]), "content": _json}
            ),
            max_size=2,
        ),
        "prompt": st.one_of(
            st.text(max_size=10), st.lists(st.integers(-3, 300), max_size=5), _json
        ),
        "temperature": _json,
        "stop": _json,
        "logprobs": _json,
        "stream": st.booleans(),
    },
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    path=st.sampled_from(["/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize"]),
    body=_bodies | _small,
)
def test_malformed_bodies_never_give_a_server_error(client, path, body):
    r = client.post(
        path, content=json.dumps(body, allow_nan=True), headers={"content-type": "application/json"}
    )
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        _error(r, r.status_code)


class _FailingStream:
    """One output, then the engine loop dies."""

    def __init__(self, first) -> None:
        self.first = first

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.first is None:
            raise RuntimeError("the engine loop failed")
        out, self.first = self.first, None
        return out

    async def aclose(self) -> None:
        pass


class _DyingEngine:
    def __init__(self) -> None:
        self.is_alive = True

    def warmup_progress(self) -> tuple[int, int]:
        return 0, 0

    async def generate(self, ids, params, **kwargs):
        from jaxserve.api.async_engine import StreamOutput

        first = StreamOutput(0, (5,), "a", None, len(ids), 1, 0)
        return _FailingStream(first)


def test_an_engine_failure_is_a_shaped_5xx_and_ends_a_stream_with_an_error_event(served):
    engine = _DyingEngine()
    stub = Served(
        engine=engine,
        tokenizer=served.tokenizer,
        render_chat=served.render_chat,
        max_model_len=64,
    )
    with running(create_app(ServerConfig(model_names=("tiny",)), stub)) as url:
        with httpx.Client(base_url=url) as c:
            error = _error(c.post("/v1/completions", json=COMPLETION), 500)
            assert error["code"] == "engine_error"
            r = c.post("/v1/chat/completions", json={**CHAT, "stream": True})
            events = [line for line in r.text.split("\n\n") if line]
            assert json.loads(events[1][6:])["choices"][0]["delta"] == {"content": "a"}
            assert json.loads(events[-1][6:])["error"]["code"] == "engine_error"
            assert "data: [DONE]" not in events
            engine.is_alive = False
            assert _error(c.get("/health"), 503)["code"] == "engine_stopped"
            r = c.post("/v1/completions", json=COMPLETION)
            assert _error(r, 503)["code"] == "engine_stopped"


JSON_HEADERS = {"content-type": "application/json"}
LONE_SURROGATES = [
    ("/v1/completions", '{"prompt": "a\\ud800b", "max_tokens": 2}', "prompt"),
    ("/v1/completions", '{"prompt": ["ok", "\\udfff"], "max_tokens": 2}', "prompt[1]"),
    (
        "/v1/chat/completions",
        '{"messages": [{"role": "user", "content": "\\ud83d"}], "max_tokens": 2}',
        "messages[0].content",
    ),
    (
        "/v1/chat/completions",
        '{"messages": [{"role": "user", "content": "hi"}], "stop": ["x", "\\udc00"]}',
        "stop[1]",
    ),
    ("/v1/completions", '{"prompt": "a", "max_tokens": 2, "user": "\\ud800"}', "user"),
    ("/tokenize", '{"prompt": "\\ud800"}', "prompt"),
]


@pytest.mark.parametrize(("path", "raw", "param"), LONE_SURROGATES)
def test_a_lone_surrogate_is_a_400_naming_the_field(client, path, raw, param):
    error = _error(client.post(path, content=raw, headers=JSON_HEADERS), 400)
    assert error["param"] == param and "surrogate" in error["message"]
    assert error["code"] == "invalid_text"


def test_string_edge_cases_never_give_a_server_error(client):
    # A surrogate pair is one valid character; a NUL is valid text.
    pair = client.post(
        "/v1/completions",
        content='{"prompt": "\\ud83d\\ude00", "max_tokens": 2}',
        headers=JSON_HEADERS,
    )
    assert pair.status_code == 200, pair.text
    nul = client.post("/v1/completions", json={"prompt": "a\x00b", "max_tokens": 2})
    assert nul.status_code == 200, nul.text
    # A 1 MB prompt is longer than the context: a 400 with the numbers, not a crash.
    huge = _error(client.post("/v1/completions", json={"prompt": "ab " * 350_000}), 400)
    assert huge["param"] == "prompt" or "context" in huge["message"]
    # Nesting deeper than any parser recursion limit.
    deep = '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}"
    error = _error(client.post("/v1/completions", content=deep, headers=JSON_HEADERS), 400)
    assert error["code"] == "invalid_json" and "nested" in error["message"]
    the_engine_still_serves = client.post("/v1/completions", json=COMPLETION)
    assert the_engine_still_serves.status_code == 200
