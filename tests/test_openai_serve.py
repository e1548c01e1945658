"""`jaxserve serve` pieces: SIGTERM drains, the model loads in the background, CLI arguments."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import pytest
import uvicorn

from jaxserve import LLM
from jaxserve.api.async_engine import AsyncEngine
from jaxserve.api.openai_server import Served, ServerConfig, create_app
from jaxserve.api.serve import DrainingServer, load_in_background
from jaxserve.cli import build_parser
from jaxserve.loading.pull import DEFAULT_MODEL
from tests.http_server import free_port


@pytest.fixture(scope="module")
def slow_served(tiny_gguf):
    llm = LLM(str(tiny_gguf), weights="f32", max_num_seqs=4, decode_steps=1, max_model_len=128)
    step = llm.engine.step

    def slow_step():
        time.sleep(0.03)
        return step()

    llm.engine.step = slow_step  # type: ignore[method-assign]
    engine = AsyncEngine(llm.engine)
    yield Served.from_llm(llm, engine)
    engine.shutdown()


def _start(app, state, grpc_address=None) -> tuple[DrainingServer, threading.Thread, str]:
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = DrainingServer(config, state, grpc_address=grpc_address)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive()
        time.sleep(0.01)
    return server, thread, f"http://127.0.0.1:{port}"


def test_sigterm_refuses_new_requests_and_lets_in_flight_ones_finish(slow_served):
    app = create_app(ServerConfig(model_names=("tiny",), drain_timeout_s=30), slow_served)
    server, thread, url = _start(app, app.state.server)
    body = {"prompt": "Hi", "max_tokens": 40, "ignore_eos": True, "stream": True}
    with httpx.Client(base_url=url, timeout=30) as client:
        with client.stream("POST", "/v1/completions", json=body) as r:
            lines = r.iter_lines()
            assert next(line for line in lines if line).startswith("data: ")
            server.handle_exit(signal.SIGTERM, None)  # what the signal handler calls
            time.sleep(0.1)
            with httpx.Client(base_url=url, timeout=5) as other:
                refused = other.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
                health = other.get("/health")
            rest = [line for line in lines if line]
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "draining"
        assert health.status_code == 503
        assert rest[-1] == "data: [DONE]"
        assert json.loads(rest[-2][6:])["choices"][0]["finish_reason"] == "length"
    thread.join(timeout=10)
    assert not thread.is_alive()  # drained, then uvicorn shut down


def test_drain_gives_up_after_its_timeout(slow_served):
    app = create_app(ServerConfig(model_names=("tiny",), drain_timeout_s=0.3), slow_served)
    server, thread, url = _start(app, app.state.server)
    body = {"prompt": "Hi", "max_tokens": 120, "ignore_eos": True, "stream": True}
    started = time.monotonic()
    with httpx.Client(base_url=url, timeout=30) as client:
        with client.stream("POST", "/v1/completions", json=body) as r:
            lines = r.iter_lines()
            next(line for line in lines if line)
            server.handle_exit(signal.SIGTERM, None)
            with pytest.raises(httpx.RemoteProtocolError):  # the stream is cut off
                for _ in lines:
                    pass
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert time.monotonic() - started < 0.3 + 1 + 1.5  # not run to its end (3.6 s)
    engine = slow_served.engine.engine
    deadline = time.monotonic() + 2
    while engine.has_unfinished() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not engine.has_unfinished()  # the cut request was aborted


def test_health_is_503_while_loading_then_200(slow_served):
    app = create_app(ServerConfig(model_names=("tiny",)), None)
    state = app.state.server
    release = threading.Event()
    failed = []

    def load() -> Served:
        release.wait(10)
        return slow_served

    thread = load_in_background(state, load, lambda: failed.append(True))
    assert state.health()[:2] == (503, "loading")
    release.set()
    thread.join(timeout=10)
    assert state.health()[0] == 200 and not failed


def test_a_failed_load_is_reported_and_stops_the_server():
    app = create_app(ServerConfig(model_names=("tiny",)), None)
    state = app.state.server
    failed = threading.Event()

    def load() -> Served:
        raise FileNotFoundError("no such model: nowhere.gguf")

    load_in_background(state, load, failed.set).join(timeout=10)
    assert failed.is_set()
    status, code, reason = state.health()
    assert (status, code) == (503, "load_failed") and "nowhere.gguf" in reason


def test_serve_arguments():
    args = build_parser().parse_args(["serve"])
    assert args.model == [DEFAULT_MODEL] and args.port == 8000 and args.api_key is None
    args = build_parser().parse_args(
        ["serve", "m.gguf", "--port", "9", "--api-key", "k", "--max-queue", "3"]
        + ["--served-model-name", "a", "--served-model-name", "b", "--cors-origin", "*"]
    )
    assert (args.model, args.port, args.api_key, args.max_queue) == (["m.gguf"], 9, "k", 3)
    assert args.served_model_name == ["a", "b"] and args.cors_origin == ["*"]


def test_both_fronts_share_one_engine_and_drain_together(slow_served):
    import grpc

    from jaxserve.api import jaxserve_v1_pb2 as pb
    from jaxserve.api import jaxserve_v1_pb2_grpc as pb_grpc

    app = create_app(ServerConfig(model_names=("tiny",), drain_timeout_s=30), slow_served)
    address = f"127.0.0.1:{free_port()}"
    server, thread, url = _start(app, app.state.server, grpc_address=address)
    sampling = pb.SamplingParams(max_tokens=30, temperature=0, ignore_eos=True)
    with grpc.insecure_channel(address) as channel, httpx.Client(base_url=url) as client:
        stub = pb_grpc.GenerationStub(channel)
        call = stub.Generate(pb.GenerateRequest(text="Hi", sampling=sampling))
        first = next(call)
        http = client.post(
            "/v1/completions",
            json={"prompt": "Hi", "max_tokens": 30, "temperature": 0, "ignore_eos": True},
        )
        server.handle_exit(signal.SIGTERM, None)
        rest = list(call)  # the in-flight gRPC call finishes during the drain
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.Generate(pb.GenerateRequest(text="Hi", sampling=sampling)))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert rest[-1].finish_reason == pb.FINISH_REASON_LENGTH
    grpc_text = first.text + "".join(r.text for r in rest)
    assert http.status_code == 200 and http.json()["choices"][0]["text"] == grpc_text
    thread.join(timeout=10)
    assert not thread.is_alive()
