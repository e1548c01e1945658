"""Embeddings: the mean of the final hidden states, L2-normalized, against the numpy oracle; the
same vector alone or in any batch; running requests' KV pages untouched; no compiles past warm-up;
POST /v1/embeddings (OpenAI's shape, base64, errors naming the field) and the gRPC `Embed`."""

from __future__ import annotations

import asyncio
import base64

import grpc
import httpx
import numpy as np
import pytest

from jaxserve import LLM, SamplingParams
from jaxserve.api import jaxserve_v1_pb2 as pb
from jaxserve.api import jaxserve_v1_pb2_grpc as pb_grpc
from jaxserve.api.async_engine import AsyncEngine
from jaxserve.api.openai_server import Served, ServerConfig, create_app
from tests.http_server import grpc_running, running
from tests.numpy_llama import NumpyLlama

TEXTS = ["The ocean is deep.", "hello", "The ocean is deep, and the sky is wide above it all."]
PARAMS = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)


def _llm(tiny_gguf, **kw) -> LLM:
    # prefill_chunk=16: inputs longer than 16 tokens take several prefill chunks
    config = {"max_model_len": 64, "max_prefill_rows": 4, "prefill_chunk": 16, "max_num_seqs": 4}
    return LLM(str(tiny_gguf), decode_steps=4, **(config | kw))


@pytest.fixture(scope="module")
def llm(tiny_gguf) -> LLM:
    return _llm(tiny_gguf, weights="f32")


def test_embedding_is_the_normalized_mean_of_final_hidden_states(llm, tiny_gguf):
    oracle = NumpyLlama(tiny_gguf)
    ids = [llm.tokenize(t) for t in TEXTS]
    assert len(ids[2]) > 16 > len(ids[1])  # one input spans several prefill chunks
    out = llm.embed(TEXTS)
    assert out.shape == (3, llm.config.hidden_size) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    for row, x in zip(out, ids, strict=True):
        mean = oracle.hidden(x).mean(axis=0)
        np.testing.assert_allclose(row, mean / np.linalg.norm(mean), atol=1e-5)


def _batch_invariance(llm: LLM, texts: list[str]) -> None:
    batch = llm.embed([*texts, texts[0]])
    for text, row in zip(texts, batch, strict=False):
        np.testing.assert_allclose(llm.embed(text)[0], row, atol=1e-5)
    assert np.array_equal(batch[0], batch[-1])  # the same input twice in one batch
    assert not np.allclose(batch[0], batch[1], atol=1e-3)


def test_a_vector_does_not_depend_on_its_batch(llm):
    _batch_invariance(llm, [*TEXTS, "x y z"])
    ids = [llm.tokenize(t) for t in TEXTS]
    assert np.array_equal(llm.embed(ids), llm.embed(TEXTS))  # token ids = their text
    assert np.array_equal(llm.embed(ids[1]), llm.embed(TEXTS[1]))


def test_int8_batches_stay_on_the_lone_rows_matmul_path(tiny_gguf):
    # Inputs of 17-32 tokens: four of them (128 activation rows) would leave the int8 x int8
    # kernel a lone row takes (64 rows at most); the runner batches only two at a time.
    llm = _llm(tiny_gguf, weights="int8", prefill_chunk=64)
    _batch_invariance(llm, ["a b c d e f g h i j k l m n o p q r", "ab " * 8, "one two three" * 2])


def test_embedding_between_steps_leaves_running_requests_untouched(llm):
    prompts = [[5, 77, 120, 3, 9, 9, 14, 200, 31] * 2, [250, 18, 42]]
    expected = [o.token_ids for o in llm.generate(prompts, PARAMS)]
    engine = llm.engine
    requests = [engine.add_request(p, PARAMS) for p in prompts]
    engine.step()
    engine.step()
    used = engine.scheduler.pages.num_used
    cached = engine.scheduler.pages.num_cached
    vectors = engine.embed([llm.tokenize(t) for t in TEXTS] * 2)
    assert engine.scheduler.pages.num_used == used  # its pages are free again, none cached
    assert engine.scheduler.pages.num_cached == cached
    while engine.has_unfinished():
        engine.step()
    assert [r.output.token_ids for r in requests] == expected
    np.testing.assert_allclose(vectors[:3], llm.embed(TEXTS), atol=1e-6)


def test_no_compiles_after_warmup(tiny_gguf):
    llm = LLM(
        str(tiny_gguf),
        weights="f32",
        max_model_len=32,
        max_num_seqs=2,
        prefill_chunk=16,
        max_prefill_rows=2,
        warmup=True,
    )
    runner = llm.engine.runner
    llm.embed(["a", "a b c d e f g h i j k l", "b c", "d e f g h"])
    assert runner.num_compiled() == runner.compiled_at_warmup


def test_bad_inputs_are_refused_before_any_work(llm):
    engine = llm.engine
    with pytest.raises(ValueError, match="empty"):
        engine.embed([])
    with pytest.raises(ValueError, match="input 1 is empty"):
        engine.embed([[1], []])
    with pytest.raises(ValueError, match="token ids"):
        engine.embed([[1, 10**6]])
    with pytest.raises(Exception, match="context holds 64"):
        engine.embed([[1] * 65])


def test_async_engine_embeds_between_steps(llm):
    expected = [o.token_ids for o in llm.generate([[5, 77, 120, 3]], PARAMS)]
    alone = llm.embed(TEXTS * 7)
    engine = AsyncEngine(llm.engine)

    async def main():
        async def collect():
            ids = []
            async for out in await engine.generate([5, 77, 120, 3], PARAMS):
                ids += out.new_token_ids
            return ids

        ids = [llm.tokenize(t) for t in TEXTS * 7]  # 21 inputs: two turns of the engine loop
        return await asyncio.gather(collect(), engine.embed(ids))

    try:
        generated, vectors = asyncio.run(main())
    finally:
        engine.shutdown()
    assert [generated] == expected
    np.testing.assert_allclose(vectors, alone, atol=1e-6)


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


def test_openai_embeddings_response(client, llm):
    r = client.post("/v1/embeddings", json={"model": "tiny", "input": TEXTS, "user": "u"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "tiny"
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(d["object"] == "embedding" for d in body["data"])
    vectors = np.array([d["embedding"] for d in body["data"]], np.float32)
    np.testing.assert_array_equal(vectors, llm.embed(TEXTS))
    num_tokens = sum(len(llm.tokenize(t)) for t in TEXTS)
    assert body["usage"] == {"prompt_tokens": num_tokens, "total_tokens": num_tokens}

    one = client.post("/v1/embeddings", json={"input": TEXTS[0]}).json()["data"]
    ids = client.post("/v1/embeddings", json={"input": llm.tokenize(TEXTS[0])}).json()["data"]
    assert len(one) == 1 and one[0]["embedding"] == ids[0]["embedding"]  # token ids = text
    np.testing.assert_allclose(one[0]["embedding"], vectors[0], atol=1e-6)
    width = llm.config.hidden_size
    same = client.post("/v1/embeddings", json={"input": TEXTS, "dimensions": width}).json()
    assert same["data"] == body["data"]


def test_base64_decodes_to_the_same_floats(client):
    plain = client.post("/v1/embeddings", json={"input": TEXTS}).json()["data"]
    packed = client.post("/v1/embeddings", json={"input": TEXTS, "encoding_format": "base64"})
    for p, b in zip(plain, packed.json()["data"], strict=True):
        decoded = np.frombuffer(base64.b64decode(b["embedding"]), "<f4")
        np.testing.assert_array_equal(decoded, np.array(p["embedding"], np.float32))


REFUSALS = [
    ({"input": ""}, "input"),
    ({"input": []}, "input"),
    ({"input": ["a", ""]}, "input"),
    ({"input": [[1, 2], []]}, "input"),
    ({"input": [1, 10**7]}, "input"),
    ({"input": [1.5, 2]}, "input"),
    ({"input": [[1] * 65]}, "input"),
    ({"input": "a", "dimensions": 3}, "dimensions"),
    ({"input": "a", "encoding_format": "int8"}, "encoding_format"),
    ({"input": "a", "frobnicate": 1}, "frobnicate"),
    ({}, "input"),
]


@pytest.mark.parametrize(("body", "param"), REFUSALS, ids=[str(b)[:40] for b, _ in REFUSALS])
def test_bad_requests_are_400_naming_the_field(client, body, param):
    r = client.post("/v1/embeddings", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert param in error["message"] or error["code"] in ("invalid_value", "missing_required")


def test_too_long_and_unknown_model(client):
    error = client.post("/v1/embeddings", json={"input": [[1] * 65]}).json()["error"]
    assert error["code"] == "context_length_exceeded" and "65" in error["message"]
    r = client.post("/v1/embeddings", json={"input": "a", "model": "gpt-9"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"


def test_grpc_embed(served, client):
    from jaxserve.api.openai_server import ServerState

    state = ServerState(ServerConfig(model_names=("tiny",)))
    state.served = served
    http = client.post("/v1/embeddings", json={"input": TEXTS[:2]}).json()["data"]
    with grpc_running(state) as address, grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GenerationStub(channel)
        inputs = [
            pb.EmbedInput(text=TEXTS[0]),
            pb.EmbedInput(token_ids=pb.TokenIds(ids=served.tokenizer.encode(TEXTS[1]))),
        ]
        out = stub.Embed(pb.EmbedRequest(inputs=inputs))
        assert [list(e.values) for e in out.embeddings] == [d["embedding"] for d in http]
        assert out.prompt_tokens == sum(len(served.tokenizer.encode(t)) for t in TEXTS[:2])
        for request, param in [
            (pb.EmbedRequest(), "inputs"),
            (pb.EmbedRequest(inputs=[pb.EmbedInput(text="a"), pb.EmbedInput()]), "inputs[1]"),
            (pb.EmbedRequest(inputs=[pb.EmbedInput(token_ids=pb.TokenIds(ids=[1] * 65))]), ""),
        ]:
            with pytest.raises(grpc.RpcError) as caught:
                stub.Embed(request)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert caught.value.details().startswith(param or "inputs")


def test_openai_sdk_embeddings(client, llm):
    import openai

    base = str(client.base_url).rstrip("/")
    sdk = openai.OpenAI(base_url=f"{base}/v1", api_key="unused")
    out = sdk.embeddings.create(model="tiny", input=TEXTS)  # the SDK asks for base64
    vectors = np.array([d.embedding for d in out.data], np.float32)
    np.testing.assert_array_equal(vectors, llm.embed(TEXTS))
    assert out.usage.prompt_tokens == sum(len(llm.tokenize(t)) for t in TEXTS)
