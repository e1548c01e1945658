"""Several models in one server: routing by `model`, loading and unloading at run time
(`/admin/models`), per-model stats, the admin key. Real engines on two tiny random GGUFs (f32),
a real uvicorn server, the official `openai` SDK for routing."""

from __future__ import annotations

import gc
import threading
import time
import weakref

import httpx
import openai
import pytest

from jaxserve import LLM, SamplingParams
from jaxserve.api.openai_server import ServerConfig, create_app
from jaxserve.api.serve import LLMLoader, load_in_background
from tests.http_server import grpc_running, running

OPTIONS = dict(weights="f32", max_model_len=64, max_num_seqs=4, kv_cache_bytes=2**20)
PROMPT = "hello world"
GREEDY = {"prompt": PROMPT, "max_tokens": 6, "temperature": 0}


class GatedLoader(LLMLoader):
    """Loads as `LLMLoader` does, once `gate` is set (a load the test can hold open)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.gate = threading.Event()
        self.gate.set()

    def load(self, source, options=None):
        assert self.gate.wait(60)
        return super().load(source, options)


def _expected(path) -> str:
    llm = LLM(str(path), **OPTIONS)
    return llm.generate(PROMPT, SamplingParams(max_tokens=6, temperature=0.0))[0].text


def _wait(client: httpx.Client, model_id: str, status: str) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        info = client.get(f"/admin/models/{model_id}").json()
        if info.get("status") == status:
            return info
        time.sleep(0.05)
    raise AssertionError(f"{model_id} never turned {status}: {info}")


@pytest.fixture(scope="module")
def expected(tiny_gguf, tiny_gguf_untied):
    return {"a": _expected(tiny_gguf), "b": _expected(tiny_gguf_untied)}


@pytest.fixture(scope="module")
def server(tiny_gguf, tiny_gguf_untied):
    """Models "a" (with the alias "first") and "b" from the start; the loader loads more."""
    loader = GatedLoader(**OPTIONS)
    app = create_app(ServerConfig(model_names=("a", "first")), loader=loader)
    state = app.state.server
    failed = threading.Event()
    b = (("b",), str(tiny_gguf_untied), lambda: loader.load(str(tiny_gguf_untied)))
    load_in_background(state, lambda: loader.load(str(tiny_gguf)), failed.set, [b]).join(120)
    assert not failed.is_set() and state.health()[0] == 200
    with running(app) as url, grpc_running(state) as grpc_address:
        yield url, state, loader, grpc_address
    for entry in state.models:
        if entry.served is not None:
            entry.served.engine.shutdown()


def test_requests_go_to_the_model_they_name(server, expected):
    url, _, _, _ = server
    with openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as sdk:
        for model, want in [("a", "a"), ("first", "a"), ("b", "b")]:
            r = sdk.completions.create(model=model, prompt=PROMPT, max_tokens=6, temperature=0)
            assert r.choices[0].text == expected[want]
            assert r.model == want  # responses name the model by its id
        assert [m.id for m in sdk.models.list().data] == ["a", "first", "b"]
        with pytest.raises(openai.NotFoundError) as info:
            sdk.completions.create(model="nope", prompt=PROMPT, max_tokens=2)
    message = info.value.body["message"]
    assert "nope" in message and all(name in message for name in ("a", "first", "b"))
    with httpx.Client(base_url=url, timeout=60) as client:  # no `model`: the first model
        r = client.post("/v1/completions", json=GREEDY).json()
        assert r["choices"][0]["text"] == expected["a"]
        health = client.get("/health").json()
        assert health["models"]["a"]["status"] == "ready" and "b" in health["models"]


def test_grpc_lists_the_loaded_models(server):
    import grpc

    from jaxserve.api import jaxserve_v1_pb2 as pb
    from jaxserve.api import jaxserve_v1_pb2_grpc as pb_grpc

    with grpc.insecure_channel(server[3]) as channel:
        models = pb_grpc.GenerationStub(channel).ListModels(pb.ListModelsRequest()).models
    assert [m.id for m in models] == ["a", "first", "b"]
    assert all(m.max_model_len == 64 for m in models)


def test_load_serve_and_unload_at_run_time(server, tiny_gguf_untied, expected):
    url, state, loader, _ = server
    loader.gate.clear()  # hold the load open: the other models must keep serving meanwhile
    with httpx.Client(base_url=url, timeout=60) as client:
        body = {"model": str(tiny_gguf_untied), "name": "c", "max_model_len": 64}
        r = client.post("/admin/models", json=body)
        assert r.status_code == 202 and r.json()["status"] == "loading"
        r = client.post("/v1/completions", json={**GREEDY, "model": "c"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "loading"
        r = client.post("/v1/completions", json={**GREEDY, "model": "a"})
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == expected["a"]
        assert client.get("/health").status_code == 200
        loader.gate.set()
        _wait(client, "c", "ready")
        r = client.post("/v1/completions", json={**GREEDY, "model": "c"}).json()
        assert r["choices"][0]["text"] == expected["b"]  # the same file as "b"
        ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
        assert ids == ["a", "first", "b", "c"]

        stats = {m["id"]: m for m in client.get("/admin/stats").json()["models"]}
        c = stats["c"]
        assert c["status"] == "ready" and c["generated_tokens"] >= 6
        assert c["tokens_per_second_1m"] > 0 and c["compiled_shapes"] > 0
        assert c["kv_pages_total"] > 0 and c["num_running"] == 0 and c["uptime_seconds"] >= 0
        metrics = client.get("/metrics").text
        assert 'jaxserve_engine_generated_tokens_total{model="c"}' in metrics

        # A request in flight finishes; the unload answers once it has, and frees the model.
        engine = weakref.ref(state.models.get("c").served.engine.engine)
        chunks: list[str] = []
        started = threading.Event()

        def stream() -> None:
            body = {**GREEDY, "model": "c", "max_tokens": 40, "ignore_eos": True, "stream": True}
            with httpx.Client(base_url=url, timeout=60) as other:
                with other.stream("POST", "/v1/completions", json=body) as response:
                    for line in response.iter_lines():
                        if line:
                            chunks.append(line)
                            started.set()

        reader = threading.Thread(target=stream)
        reader.start()
        assert started.wait(60)
        r = client.delete("/admin/models/c")
        assert r.status_code == 200 and r.json() == {"id": "c", "object": "model", "deleted": True}
        reader.join(60)
        assert chunks[-1] == "data: [DONE]" and any('"finish_reason":"length"' in c for c in chunks)
        r = client.post("/v1/completions", json={**GREEDY, "model": "c"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["a", "first", "b"]
        assert client.delete("/admin/models/c").status_code == 404
    gc.collect()
    assert engine() is None  # nothing holds the unloaded model's engine (or its arrays)


def test_admin_refusals_and_a_failed_load(server, tmp_path, tiny_gguf):
    url, _, _, _ = server
    not_a_model = tmp_path / "broken.gguf"
    not_a_model.write_bytes(b"not a gguf file")
    with httpx.Client(base_url=url, timeout=60) as client:
        r = client.post("/admin/models", json={"model": str(tiny_gguf), "bogus": 1})
        assert r.status_code == 400 and r.json()["error"]["param"] == "bogus"
        r = client.post("/admin/models", json={"model": "/no/such/file.gguf"})
        assert r.status_code == 400 and "/no/such/file.gguf" in r.json()["error"]["message"]
        r = client.post("/admin/models", json={"model": str(tiny_gguf), "name": "first"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "model_exists"
        r = client.post("/admin/models", json={"model": str(not_a_model), "name": "bad"})
        assert r.status_code == 202
        info = _wait(client, "bad", "failed")
        assert info["error"]
        r = client.post("/v1/completions", json={**GREEDY, "model": "bad"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "load_failed"
        assert client.get("/health").status_code == 200  # the others serve on
        assert client.post("/v1/completions", json={**GREEDY, "model": "b"}).status_code == 200
        assert client.delete("/admin/models/bad").status_code == 200
        assert client.get("/admin/models/bad").status_code == 404


def test_admin_routes_take_the_admin_key(served_stub):
    config = ServerConfig(model_names=("tiny",), api_key="api-1", admin_key="admin-1")
    with running(create_app(config, served_stub)) as url, httpx.Client(base_url=url) as client:
        api = {"Authorization": "Bearer api-1"}
        admin = {"Authorization": "Bearer admin-1"}
        assert client.get("/admin/models", headers=api).status_code == 401
        assert client.get("/admin/models").status_code == 401
        assert client.get("/admin/models", headers=admin).status_code == 200
        assert client.get("/v1/models", headers=admin).status_code == 401
        assert client.get("/v1/models", headers=api).status_code == 200
        r = client.post("/admin/models", headers=admin, json={"model": "x"})
        assert r.status_code == 400  # built without a loader
        assert r.json()["error"]["code"] == "unsupported_parameter"
    config = ServerConfig(model_names=("tiny",), api_key="api-1")
    with running(create_app(config, served_stub)) as url, httpx.Client(base_url=url) as client:
        assert client.get("/admin/stats").status_code == 401
        stats = client.get("/admin/stats", headers={"Authorization": "Bearer api-1"}).json()
        assert [m["id"] for m in stats["models"]] == ["tiny"]


@pytest.fixture()
def served_stub(tiny_gguf):
    from jaxserve.api.async_engine import AsyncEngine
    from jaxserve.api.server_state import Served

    llm = LLM(str(tiny_gguf), **OPTIONS)
    engine = AsyncEngine(llm.engine)
    yield Served.from_llm(llm, engine)
    engine.shutdown()


def test_ready_answers_200_once_every_shape_is_compiled():
    from fastapi.testclient import TestClient

    from jaxserve.api.server_state import Served

    class Warming:
        is_alive = True
        progress = (1, 5)

        def warmup_progress(self):
            return self.progress

        def warmup_pending(self):
            return ["prefill 4x512, 32 pages"]

    engine = Warming()
    served = Served(engine=engine, tokenizer=None, render_chat=None, max_model_len=64)
    with TestClient(create_app(ServerConfig(model_names=("tiny",)), served)) as client:
        assert client.get("/health").status_code == 200  # serving meanwhile
        r = client.get("/ready")
        assert r.status_code == 503 and r.json()["error"]["code"] == "warming_up"
        assert r.json()["models"]["tiny"] == {
            "status": "ready", "compiled": 1, "total": 5, "warm": False,
            "pending": ["prefill 4x512, 32 pages"],
        }  # fmt: skip
        engine.progress = (5, 5)
        assert client.get("/ready").status_code == 200
