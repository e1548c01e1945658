"""A client that goes away aborts its requests: their pages are free within an engine step."""

from __future__ import annotations

import time

import httpx
import pytest

from jaxserve import LLM
from jaxserve.api.async_engine import AsyncEngine
from jaxserve.api.openai_server import Served, ServerConfig, create_app
from tests.http_server import running

STEP_S = 0.05  # each engine step is slowed so a request lasts seconds, not milliseconds
LONG = {"max_tokens": 200, "ignore_eos": True, "temperature": 0}


@pytest.fixture(scope="module")
def setup(tiny_gguf):
    llm = LLM(str(tiny_gguf), weights="f32", max_num_seqs=4, decode_steps=1, max_model_len=256)
    step = llm.engine.step

    def slow_step():
        time.sleep(STEP_S)
        return step()

    llm.engine.step = slow_step  # type: ignore[method-assign]
    engine = AsyncEngine(llm.engine)
    app = create_app(ServerConfig(model_names=("tiny",)), Served.from_llm(llm, engine))
    with running(app) as url:
        yield url, llm.engine
    engine.shutdown()


def _wait_until_idle(engine, timeout_s: float = 5.0) -> float:
    deadline = time.monotonic() + timeout_s
    while engine.has_unfinished():
        assert time.monotonic() < deadline, "the request was not aborted"
        time.sleep(0.005)
    return time.monotonic()


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_closing_a_stream_aborts_the_request_within_a_step(setup, path):
    url, engine = setup
    prompt = (
        {"messages": [{"role": "user", "content": "Hi"}]} if "chat" in path else {"prompt": "Hi"}
    )
    body = {**prompt, "stream": True, **LONG}
    finished = engine.stats.num_finished
    with httpx.Client(base_url=url, timeout=30) as client:
        with client.stream("POST", path, json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            tokens = 0
            for line in lines:
                tokens += bool(line)
                if tokens == 4:  # a few chunks in: the request is decoding
                    break
            assert engine.scheduler.running
            steps = engine.stats.num_steps
    _wait_until_idle(engine)
    assert engine.stats.num_steps - steps <= 2
    assert engine.stats.num_finished == finished  # aborted, not run to its end
    assert not engine.scheduler.running and not engine.scheduler.waiting
    assert engine.scheduler.pages.num_used == 0


def test_a_client_that_gives_up_on_a_plain_request_aborts_it(setup):
    url, engine = setup
    finished = engine.stats.num_finished
    with httpx.Client(base_url=url, timeout=0.5) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.post("/v1/completions", json={"prompt": "Hello there", **LONG})
        steps = engine.stats.num_steps
    _wait_until_idle(engine)
    assert engine.stats.num_steps - steps <= 2
    assert engine.stats.num_finished == finished
    assert not engine.scheduler.running


def test_the_server_keeps_serving_after_disconnects(setup):
    url, engine = setup
    with httpx.Client(base_url=url, timeout=30) as client:
        r = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 3})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1


def _gauge(metrics: str, name: str) -> float:
    prefix = f"jaxserve_engine_{name}{{model="
    line = next(x for x in metrics.splitlines() if x.startswith(prefix))
    return float(line.split()[1])


def test_metrics_show_an_idle_engine_once_its_clients_are_gone(setup):
    """The engine's gauges follow aborts too, not only steps: after the last client leaves,
    /metrics shows nothing running or waiting and no pages used, with no request after it."""
    url, engine = setup
    body = {"prompt": "Hi", "stream": True, **LONG}
    with httpx.Client(base_url=url, timeout=30) as client:
        streams = [client.stream("POST", "/v1/completions", json=body) for _ in range(3)]
        responses = [s.__enter__() for s in streams]
        for r in responses:
            assert r.status_code == 200
            next(line for line in r.iter_lines() if line)
        busy = client.get("/metrics").text
        assert _gauge(busy, "num_running") + _gauge(busy, "num_waiting") >= 1
        assert _gauge(busy, "kv_pages_used") >= 1
        for s in streams:
            s.__exit__(None, None, None)
    _wait_until_idle(engine)
    with httpx.Client(base_url=url, timeout=30) as client:
        idle = client.get("/metrics").text
    assert _gauge(idle, "num_running") == 0 and _gauge(idle, "num_waiting") == 0
    assert _gauge(idle, "kv_pages_used") == 0
