"""LoRA adapters over HTTP and gRPC on a real server: `model` routing to an adapter (official
`openai` SDK), llama.cpp's per-request `lora`, loading and unloading at run time."""

from __future__ import annotations

import httpx
import openai
import pytest

from jaxserve import LLM, SamplingParams
from jaxserve.api.async_engine import AsyncEngine
from jaxserve.api.openai_server import Served, ServerConfig, create_app
from jaxserve.loading.loader import GGUFModelFile
from tests.http_server import grpc_running, running
from tests.tiny_lora import write_random_peft

PROMPT = "hello world, the quick brown fox"


def _greedy(**kw) -> SamplingParams:
    return SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True, **kw)


@pytest.fixture(scope="module")
def live(tiny_gguf, tmp_path_factory):
    config = GGUFModelFile.open(tiny_gguf).config
    root = tmp_path_factory.mktemp("adapters")
    paths = {
        "a": write_random_peft(root / "a", config, rank=2, seed=1),
        "b": write_random_peft(root / "b", config, rank=4, seed=2),
    }
    llm = LLM(
        str(tiny_gguf), weights="int8", max_model_len=128, max_loras=3, max_lora_rank=4,
        lora_adapters=paths,
    )  # fmt: skip
    want = {
        "base": llm.generate(PROMPT, _greedy())[0].text,
        "a": llm.generate(PROMPT, _greedy(lora="a"))[0].text,
        "b": llm.generate(PROMPT, _greedy(lora="b"))[0].text,
        "b/2": llm.generate(PROMPT, _greedy(lora="b", lora_scale=0.5))[0].text,
    }
    assert len(set(want.values())) == 4
    engine = AsyncEngine(llm.engine)
    app = create_app(ServerConfig(model_names=("tiny",)), Served.from_llm(llm, engine))
    with running(app) as url, grpc_running(app.state.server) as grpc_address:
        yield url, want, paths, grpc_address
    engine.shutdown()


def _complete(client: httpx.Client, **body) -> httpx.Response:
    body = {"prompt": PROMPT, "max_tokens": 8, "temperature": 0, "ignore_eos": True, **body}
    return client.post("/v1/completions", json=body)


def test_model_names_route_to_adapters(live):
    url, want, _, _ = live
    with openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as sdk:
        for model, key in [("tiny", "base"), ("a", "a"), ("tiny:b", "b")]:
            r = sdk.completions.create(
                model=model,
                prompt=PROMPT,
                max_tokens=8,
                temperature=0,
                extra_body={"ignore_eos": True},
            )
            assert r.choices[0].text == want[key] and r.model == model
        models = {m.id: m for m in sdk.models.list().data}
        assert set(models) == {"tiny", "a", "b"}
        assert models["a"].model_extra["parent"] == "tiny"
        chat = sdk.chat.completions.create(
            model="a", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        assert chat.model == "a" and chat.choices[0].message.content is not None
        with pytest.raises(openai.NotFoundError) as info:
            sdk.completions.create(model="tiny:zzz", prompt=PROMPT, max_tokens=2)
    assert "a" in info.value.body["message"] and "b" in info.value.body["message"]


def test_llama_cpp_lora_field(live):
    url, want, _, _ = live
    with httpx.Client(base_url=url) as client:
        r = _complete(client, lora=[{"id": 1, "scale": 0.5}])
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == want["b/2"]
        r = _complete(client, lora=[{"id": 0, "scale": 0}, {"id": 1, "scale": 1.0}])
        assert r.json()["choices"][0]["text"] == want["b"]
        r = _complete(client, lora=[{"id": 0, "scale": 0.0}])
        assert r.json()["choices"][0]["text"] == want["base"]
        r = _complete(client, lora="a", lora_scale=1.0)  # jaxserve's own spelling
        assert r.json()["choices"][0]["text"] == want["a"]
        for bad in ([{"id": 0, "scale": 1}, {"id": 1, "scale": 1}], [{"id": 7}], [{"x": 1}]):
            r = _complete(client, lora=bad)
            assert r.status_code == 400 and r.json()["error"]["param"] == "lora", bad
        r = _complete(client, model="a", lora=[{"id": 1, "scale": 1}])
        assert r.status_code == 400 and r.json()["error"]["param"] == "lora"
        r = _complete(client, lora="nope")
        assert r.status_code == 400 and "nope" in r.json()["error"]["message"]


def test_load_and_unload_adapters_at_run_time(live):
    url, want, paths, _ = live
    with httpx.Client(base_url=url, timeout=60) as client:
        r = client.post(
            "/v1/load_lora_adapter", json={"lora_name": "c", "lora_path": str(paths["a"])}
        )
        assert r.status_code == 200, r.text
        assert _complete(client, model="c").json()["choices"][0]["text"] == want["a"]
        r = client.post(
            "/v1/load_lora_adapter", json={"lora_name": "c", "lora_path": str(paths["a"])}
        )
        assert r.status_code == 409
        r = client.post("/v1/load_lora_adapter", json={"lora_name": "d", "lora_path": "/nowhere"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "lora_path"
        r = client.post(
            "/v1/load_lora_adapter", json={"lora_name": "d", "lora_path": str(paths["b"])}
        )
        assert r.status_code == 400 and "slots" in r.json()["error"]["message"]  # 3 held
        assert client.post("/v1/unload_lora_adapter", json={"lora_name": "c"}).status_code == 200
        assert _complete(client, model="c").status_code == 404
        assert client.post("/v1/unload_lora_adapter", json={"lora_name": "c"}).status_code == 404
        ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
        assert ids == ["tiny", "a", "b"]


def test_grpc_routes_to_adapters(live):
    import grpc

    from jaxserve.api import jaxserve_v1_pb2 as pb
    from jaxserve.api import jaxserve_v1_pb2_grpc as pb_grpc

    _, want, _, address = live
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GenerationStub(channel)
        sampling = pb.SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
        for model, key in [("tiny:a", "a"), ("b", "b"), ("", "base")]:
            request = pb.GenerateRequest(model=model, text=PROMPT, sampling=sampling)
            text = "".join(r.text for r in stub.Generate(request))
            assert text == want[key], model
