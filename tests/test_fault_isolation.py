"""Faults that belong to one request stay with it, over the real HTTP server: a row whose logits
turn NaN (here through a logits hook keyed on the prompt's length) fails only its own request
with a clear error, the rows beside it give their usual tokens, and /health stays 200; a client
that sends its body slowly holds up nobody."""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import grpc
import httpx
import jax.numpy as jnp
import pytest

from jaxserve import LLM, SamplingParams
from jaxserve.api import jaxserve_v1_pb2 as pb
from jaxserve.api import jaxserve_v1_pb2_grpc as pb_grpc
from jaxserve.api.async_engine import AsyncEngine
from jaxserve.api.openai_server import Served, ServerConfig, ServerState, create_app
from tests.http_server import grpc_running, running

BAD_LEN = 7  # prompts of this many tokens get NaN logits from the hook
GOOD = [[5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15, 16]]


def nan_for_one_length(logits, state):
    bad = (state.prompt_len == BAD_LEN)[:, None]
    return jnp.where(bad, jnp.nan, logits)


def _llm(tiny_gguf, **kwargs) -> LLM:
    return LLM(str(tiny_gguf), max_num_seqs=4, decode_steps=4, max_model_len=128, **kwargs)


@pytest.fixture(scope="module")
def expected(tiny_gguf) -> list[list[int]]:
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    return [o.token_ids for o in _llm(tiny_gguf).generate(GOOD, params)]


@pytest.fixture(scope="module")
def served(tiny_gguf):
    llm = _llm(tiny_gguf, logits_hook=nan_for_one_length)
    engine = AsyncEngine(llm.engine)
    yield Served.from_llm(llm, engine), llm
    engine.shutdown()


@pytest.fixture(scope="module")
def server(served):
    with running(create_app(ServerConfig(model_names=("tiny",)), served[0])) as url:
        yield url, served[1]


def _complete(url: str, prompt: list[int], stream: bool) -> httpx.Response | list:
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 12, "temperature": 0.0,
            "ignore_eos": True, "stream": stream}  # fmt: skip
    with httpx.Client(base_url=url, timeout=120) as client:
        if not stream:
            return client.post("/v1/completions", json=body)
        response = client.post("/v1/completions", json=body)
        return [json.loads(x[5:]) for x in response.text.split("\n\n") if x.startswith("data:")
                and x != "data: [DONE]"]  # fmt: skip


@pytest.mark.parametrize("stream", [False, True])
def test_nan_logits_fail_only_their_own_request(server, expected, stream):
    url, llm = server
    prompts = [GOOD[0], list(range(20, 20 + BAD_LEN)), GOOD[1], GOOD[2]]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda p: _complete(url, p, stream), prompts))
    bad = results[1]
    if stream:
        errors = [e["error"] for e in bad if "error" in e]
        assert errors and "NaN or +inf" in errors[0]["message"]
        assert all(not any("error" in e for e in r) for r in (results[0], results[2], results[3]))
    else:
        assert bad.status_code >= 500 and "NaN or +inf" in bad.json()["error"]["message"]
        assert all(r.status_code == 200 for r in (results[0], results[2], results[3]))
        texts = [r.json()["choices"][0]["text"] for r in (results[0], results[2], results[3])]
        want = [llm.tokenizer.decode(ids) for ids in expected]
        assert texts == want
    with httpx.Client(base_url=url) as client:
        assert client.get("/health").status_code == 200
    assert llm.engine.scheduler.pages.num_used == 0


def test_a_client_sending_its_body_slowly_holds_up_nobody(server):
    url, _ = server
    address = urlparse(url)
    body = json.dumps({"model": "tiny", "prompt": [5, 6], "max_tokens": 4}).encode()
    slow = socket.create_connection((address.hostname, address.port))
    try:
        slow.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:5]
        )
        started = time.monotonic()
        with ThreadPoolExecutor(3) as pool:
            others = list(pool.map(lambda p: _complete(url, p, False), GOOD))
        assert all(r.status_code == 200 for r in others)
        assert time.monotonic() - started < 60
        with httpx.Client(base_url=url) as client:
            assert client.get("/health").status_code == 200
        slow.sendall(body[5:])  # the slow client still gets its answer
        answer = slow.recv(65536).decode(errors="replace")
        assert answer.startswith("HTTP/1.1 200")
    finally:
        slow.close()


def test_a_logits_hook_that_raises_fails_the_requests_of_its_step_only(tiny_gguf):
    """A hook that raises while its step is traced (here: for the 4-row bucket) fails the
    requests of that device call with the hook's error; the engine goes on, and requests that
    run in other buckets are served."""

    def fails_at_four_rows(logits, state):
        if logits.shape[0] == 4:
            raise ValueError("this hook refuses 4 rows")
        return logits

    llm = _llm(tiny_gguf, logits_hook=fails_at_four_rows)
    engine = llm.engine
    params = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    added = [engine.add_request(p, params) for p in [*GOOD, [20, 21]]]  # one 4-row prefill
    while engine.has_unfinished():
        engine.step()
    assert all("this hook refuses 4 rows" in (r.output.error or "") for r in added)
    assert engine.scheduler.pages.num_used == 0
    alone = engine.add_request(GOOD[0], params)
    while engine.has_unfinished():
        engine.step()
    assert alone.output.error is None and len(alone.output.token_ids) == 6


def test_nan_logits_fail_only_their_own_grpc_stream(served, expected):
    state = ServerState(ServerConfig(model_names=("tiny",)))
    state.served = served[0]
    sampling = pb.SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)

    def generate(ids):
        request = pb.GenerateRequest(token_ids=pb.TokenIds(ids=ids), sampling=sampling)
        try:
            return [t for r in stub.Generate(request) for t in r.token_ids]
        except grpc.RpcError as error:
            return error

    with grpc_running(state) as address, grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GenerationStub(channel)
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(generate, [GOOD[0], list(range(20, 20 + BAD_LEN)), *GOOD[1:]]))
    bad = results[1]
    assert isinstance(bad, grpc.RpcError) and bad.code() == grpc.StatusCode.INTERNAL
    assert "NaN or +inf" in bad.details()
    assert [results[0], results[2], results[3]] == expected
