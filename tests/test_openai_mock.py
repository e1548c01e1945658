"""Both fronts over the hand-computable mock engine: several sequences per request (n > 1) keyed
by their index, in plain responses, SSE streams and gRPC; usage counts each prompt once."""

from __future__ import annotations

import json

import grpc
import httpx
import pytest

from jaxserve.api import jaxserve_v1_pb2 as pb
from jaxserve.api import jaxserve_v1_pb2_grpc as pb_grpc
from jaxserve.api.openai_server import Served, ServerConfig, ServerState, create_app
from tests.http_server import grpc_running, running
from tests.mock_engine import MockEngine, answer, logprob_of, tokenizer


def _render(messages, add_generation_prompt: bool) -> str:
    return "".join(m["content"] for m in messages)


@pytest.fixture(scope="module")
def engine() -> MockEngine:
    return MockEngine()


@pytest.fixture(scope="module")
def served(engine) -> Served:
    return Served(engine=engine, tokenizer=tokenizer(), render_chat=_render, max_model_len=64)


@pytest.fixture(scope="module")
def client(served):
    with running(create_app(ServerConfig(model_names=("mock",)), served)) as url:
        with httpx.Client(base_url=url) as c:
            yield c


CHAT = {"messages": [{"role": "user", "content": "hey"}], "n": 3, "max_tokens": 5}
NUM_PROMPT = len(tokenizer().encode("hey", add_special=False, parse_special=True))


def test_chat_with_n_gives_one_choice_per_sequence(client, engine):
    out = client.post("/v1/chat/completions", json=CHAT).json()
    assert [c["index"] for c in out["choices"]] == [0, 1, 2]
    assert [c["message"]["content"] for c in out["choices"]] == [answer(i)[:5] for i in range(3)]
    assert all(c["finish_reason"] == "length" for c in out["choices"])
    assert out["usage"] == {
        "prompt_tokens": NUM_PROMPT,  # one prompt, counted once
        "completion_tokens": 15,
        "total_tokens": NUM_PROMPT + 15,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    ids, params = engine.requests[-1]
    assert params.n == 3 and params.max_tokens == 5 and len(ids) == NUM_PROMPT


def test_chat_stream_with_n_keys_deltas_by_index(client):
    body = {**CHAT, "max_tokens": 20, "stream": True, "stream_options": {"include_usage": True}}
    r = client.post("/v1/chat/completions", json=body)
    events = [json.loads(e[6:]) for e in r.text.split("\n\n") if e and e != "data: [DONE]"]
    roles = [e["choices"][0]["index"] for e in events[:3]]
    assert roles == [0, 1, 2] and all(e["choices"][0]["delta"]["role"] for e in events[:3])
    texts, finishes = ["", "", ""], [None, None, None]
    for event in events[3:-1]:
        [choice] = event["choices"]
        texts[choice["index"]] += choice["delta"].get("content", "")
        if choice["finish_reason"]:
            assert choice["delta"] == {}
            finishes[choice["index"]] = choice["finish_reason"]
    assert texts == [answer(i) for i in range(3)] and finishes == ["stop"] * 3
    assert events[-1]["usage"]["completion_tokens"] == sum(len(answer(i)) for i in range(3))
    assert events[-1]["usage"]["prompt_tokens"] == NUM_PROMPT


def test_chat_logprobs_per_choice(client):
    body = {**CHAT, "n": 2, "logprobs": True, "top_logprobs": 1}
    out = client.post("/v1/chat/completions", json=body).json()
    for choice in out["choices"]:
        content = choice["logprobs"]["content"]
        assert "".join(t["token"] for t in content) == answer(choice["index"])[:5]
        assert [t["logprob"] for t in content] == pytest.approx([logprob_of(j) for j in range(5)])
        assert all(len(t["top_logprobs"]) == 1 for t in content)


def test_completions_index_is_prompt_times_n_plus_sequence(client, engine):
    body = {"prompt": ["ab", "cde"], "n": 2, "max_tokens": 4, "logprobs": 0}
    out = client.post("/v1/completions", json=body).json()
    assert [c["index"] for c in out["choices"]] == [0, 1, 2, 3]
    assert [c["text"] for c in out["choices"]] == [answer(i % 2)[:4] for i in range(4)]
    lengths = [len(ids) for ids, _ in engine.requests[-2:]]
    assert lengths == [len(tokenizer().encode(p)) for p in ("ab", "cde")]
    assert out["usage"]["prompt_tokens"] == sum(lengths)
    assert out["usage"]["completion_tokens"] == 16
    lp = out["choices"][3]["logprobs"]
    assert lp["tokens"] == list(answer(1)[:4]) and lp["text_offset"] == [0, 1, 2, 3]


def test_completion_stream_with_echo_and_n(client):
    body = {"prompt": "ab", "n": 2, "max_tokens": 3, "echo": True, "stream": True}
    r = client.post("/v1/completions", json=body)
    events = [json.loads(e[6:]) for e in r.text.split("\n\n") if e and e != "data: [DONE]"]
    texts = ["", ""]
    for event in events:
        [choice] = event["choices"]
        texts[choice["index"]] += choice["text"]
    assert texts == ["ab" + answer(0)[:3], "ab" + answer(1)[:3]]


def test_grpc_responses_carry_the_sequence_index(served):
    state = ServerState(ServerConfig(model_names=("mock",)))
    state.served = served
    with grpc_running(state) as address, grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GenerationStub(channel)
        sampling = pb.SamplingParams(n=2, max_tokens=4)
        responses = list(stub.Generate(pb.GenerateRequest(text="ab", sampling=sampling)))
    texts = ["", ""]
    for r in responses:
        texts[r.index] += r.text
    assert texts == [answer(0)[:4], answer(1)[:4]]
    assert sum(r.finish_reason == pb.FINISH_REASON_LENGTH for r in responses) == 2


def test_priority_reaches_the_engine(client, engine):
    client.post("/v1/chat/completions", json={**CHAT, "priority": -3})
    client.post("/v1/completions", json={"prompt": "ab", "max_tokens": 1, "priority": 7})
    assert engine.priorities[-2:] == [-3, 7]
