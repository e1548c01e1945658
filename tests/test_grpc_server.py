"""The gRPC front on the tiny model through the generated client: outputs against offline `LLM`
generation, status codes, health, reflection, auth, cancel aborts, generated code up to date."""

from __future__ import annotations

import time

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from jaxserve import LLM, SamplingParams
from jaxserve.api import grpc_codegen
from jaxserve.api import jaxserve_v1_pb2 as pb
from jaxserve.api import jaxserve_v1_pb2_grpc as pb_grpc
from jaxserve.api.async_engine import AsyncEngine
from jaxserve.api.openai_server import Served, ServerConfig, ServerState
from tests.http_server import grpc_running
from tests.mock_engine import FullEngine

PROMPT = "The sea is"
MESSAGES = [{"role": "user", "content": "Tell me about the sea."}]


def _llm(tiny_gguf, **kw) -> LLM:
    return LLM(str(tiny_gguf), weights="f32", max_num_seqs=4, max_model_len=128, **kw)


@pytest.fixture(scope="module")
def oracle(tiny_gguf) -> LLM:
    return _llm(tiny_gguf, decode_steps=4)


@pytest.fixture(scope="module")
def served(tiny_gguf):
    llm = _llm(tiny_gguf, decode_steps=1)
    step = llm.engine.step

    def slow_step():  # long requests last long enough to be cancelled mid-way
        time.sleep(0.01)
        return step()

    llm.engine.step = slow_step  # type: ignore[method-assign]
    engine = AsyncEngine(llm.engine)
    yield Served.from_llm(llm, engine)
    engine.shutdown()


@pytest.fixture(scope="module")
def state(served) -> ServerState:
    state = ServerState(ServerConfig(model_names=("tiny",)))
    state.served = served
    return state


@pytest.fixture(scope="module")
def channel(state):
    with grpc_running(state) as address, grpc.insecure_channel(address) as channel:
        yield channel


@pytest.fixture(scope="module")
def stub(channel):
    return pb_grpc.GenerationStub(channel)


def _greedy(max_tokens: int, **kw) -> pb.SamplingParams:
    return pb.SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True, **kw)


def test_generated_code_is_up_to_date():
    assert grpc_codegen.stale() == []


def test_generate_streams_the_offline_greedy_text(stub, oracle):
    expected = oracle.generate(PROMPT, SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))
    responses = list(stub.Generate(pb.GenerateRequest(text=PROMPT, sampling=_greedy(8))))
    assert "".join(r.text for r in responses) == expected[0].text
    assert [t for r in responses for t in r.token_ids] == expected[0].token_ids
    assert all(r.finish_reason == pb.FINISH_REASON_UNSPECIFIED for r in responses[:-1])
    last = responses[-1]
    assert last.finish_reason == pb.FINISH_REASON_LENGTH
    assert last.usage.prompt_tokens == len(expected[0].prompt_token_ids)
    assert last.usage.completion_tokens == 8


def test_token_ids_prompt_with_logprobs_and_prompt_logprobs(stub, oracle):
    ids = oracle.tokenize("Once upon a time")
    params = SamplingParams(
        max_tokens=4, temperature=0, ignore_eos=True, logprobs=2, prompt_logprobs=1
    )
    want = oracle.generate(ids, params)[0]
    sampling = _greedy(4, logprobs=2, prompt_logprobs=1)
    request = pb.GenerateRequest(token_ids=pb.TokenIds(ids=ids), sampling=sampling)
    responses = list(stub.Generate(request))
    got = [lp for r in responses for lp in r.logprobs]
    assert [lp.token_id for lp in got] == want.token_ids
    assert [lp.logprob for lp in got] == pytest.approx([e.logprob for e in want.logprobs], abs=1e-4)
    assert all(len(lp.top) == 2 and lp.has_logprob for lp in got)
    prompt = responses[0].prompt_logprobs
    assert [p.token_id for p in prompt] == ids and not prompt[0].has_logprob
    want_prompt = [e.logprob for e in want.prompt_logprobs[1:]]
    assert [p.logprob for p in prompt[1:]] == pytest.approx(want_prompt, abs=1e-4)
    assert all(not r.prompt_logprobs for r in responses[1:])


def test_chat(stub, oracle):
    want = oracle.chat(MESSAGES, SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))[0]
    messages = [pb.ChatMessage(role=m["role"], content=m["content"]) for m in MESSAGES]
    responses = list(stub.Chat(pb.ChatRequest(messages=messages, sampling=_greedy(6))))
    assert "".join(r.text for r in responses) == want.text
    assert responses[-1].usage.prompt_tokens == len(want.prompt_token_ids)


def test_constraints_shape_the_output(stub):
    from jaxserve.grammar import matches

    for constraint, spec in [
        (pb.Constraint(choice=pb.Choices(values=["sea", "sky"])), {"choice": ["sea", "sky"]}),
        (pb.Constraint(regex="[a-c]{3}"), {"regex": "[a-c]{3}"}),
    ]:
        sampling = pb.SamplingParams(max_tokens=20, temperature=1, seed=5)
        request = pb.GenerateRequest(text=PROMPT, sampling=sampling, constraint=constraint)
        responses = list(stub.Generate(request))
        assert matches(spec, "".join(r.text for r in responses))
        assert responses[-1].finish_reason == pb.FINISH_REASON_STOP


def test_extra_sampling_fields_reach_the_engine(stub, oracle):
    first = list(stub.Generate(pb.GenerateRequest(text=PROMPT, sampling=_greedy(8))))
    ids = [t for r in first for t in r.token_ids]
    extra = struct_pb2.Struct()
    extra.update({"stop_token_ids": [ids[3]]})
    sampling = pb.SamplingParams(max_tokens=8, temperature=0, ignore_eos=True, extra=extra)
    responses = list(stub.Generate(pb.GenerateRequest(text=PROMPT, sampling=sampling)))
    assert responses[-1].finish_reason == pb.FINISH_REASON_STOP
    assert responses[-1].usage.completion_tokens == ids.index(ids[3]) + 1


def _status(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as error:
        result = call()
        if not isinstance(result, pb.TokenizeResponse | pb.DetokenizeResponse):
            list(result)
    return error.value.code(), error.value.details()


def _bogus_extra() -> struct_pb2.Struct:
    extra = struct_pb2.Struct()
    extra.update({"bogus_field": 1})
    return extra


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.GenerateRequest(text="a", sampling=pb.SamplingParams(temperature=-1)), "temperature"),
        (pb.GenerateRequest(text="a", sampling=pb.SamplingParams(top_p=3)), "top_p"),
        (pb.GenerateRequest(text="a", sampling=pb.SamplingParams(seed=2**40)), "seed"),
        (
            pb.GenerateRequest(text="a", sampling=pb.SamplingParams(extra=_bogus_extra())),
            "bogus_field",
        ),
        (
            pb.GenerateRequest(text="a", constraint=pb.Constraint(regex="(?=x)")),
            "regex",
        ),
        (
            pb.GenerateRequest(text="a", constraint=pb.Constraint(json_schema="{nope")),
            "json_schema",
        ),
        (pb.GenerateRequest(), "prompt"),
        (pb.GenerateRequest(token_ids=pb.TokenIds(ids=[10**6])), "prompt"),
        (pb.GenerateRequest(token_ids=pb.TokenIds(ids=list(range(200)))), "prompt"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_invalid_generate_arguments_name_the_field(stub, request_, field):
    code, details = _status(lambda: stub.Generate(request_))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and field in details


def test_invalid_chat_arguments_and_unknown_model(stub):
    user = pb.ChatMessage(role="user", content="hi")
    tools = [pb.Tool(name="f")]
    for request_, field in [
        (pb.ChatRequest(), "messages"),
        (pb.ChatRequest(messages=[pb.ChatMessage(role="wizard", content="x")]), "messages[0].role"),
        (pb.ChatRequest(messages=[user], tools=[pb.Tool(name="a b")]), "tools[0].name"),
        (
            pb.ChatRequest(messages=[user], tools=[pb.Tool(name="f", parameters_json_schema="{")]),
            "tools[0].parameters_json_schema",
        ),
        (pb.ChatRequest(messages=[user], tool_choice="required"), "tool_choice"),
        (pb.ChatRequest(messages=[user], tools=tools, tool_choice="g"), "tool_choice"),
        (
            pb.ChatRequest(messages=[user], tools=tools, constraint=pb.Constraint(regex="a")),
            "constraint",
        ),
        (
            pb.ChatRequest(messages=[user], constraint=pb.Constraint(grammar="root ::= x")),
            "grammar",
        ),
    ]:
        code, details = _status(lambda r=request_: stub.Chat(r))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and field in details
    ok = pb.ChatRequest(messages=[user], tools=tools, tool_choice="none", sampling=_greedy(1))
    assert list(stub.Chat(ok))[-1].usage.completion_tokens == 1
    code, _ = _status(lambda: stub.Generate(pb.GenerateRequest(model="gpt-9", text="a")))
    assert code == grpc.StatusCode.NOT_FOUND


def test_tokenize_detokenize_list_models(stub, oracle):
    out = stub.Tokenize(pb.TokenizeRequest(text=PROMPT))
    assert list(out.token_ids) == oracle.tokenize(PROMPT) and out.max_model_len == 128
    back = stub.Detokenize(pb.DetokenizeRequest(token_ids=out.token_ids))
    assert back.text == oracle.detokenize(list(out.token_ids))
    code, _ = _status(lambda: stub.Detokenize(pb.DetokenizeRequest(token_ids=[10**6])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    messages = [pb.ChatMessage(role="user", content="hi")]
    chat = stub.Tokenize(pb.TokenizeRequest(messages=messages))
    rendered = oracle.render_chat([{"role": "user", "content": "hi"}])
    assert list(chat.token_ids) == oracle.tokenizer.encode(
        rendered, add_special=False, parse_special=True
    )
    assert [m.id for m in stub.ListModels(pb.ListModelsRequest()).models] == ["tiny"]


def test_health_follows_the_state_and_reflection_lists_the_services(channel, stub, state):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "jaxserve.v1.Generation"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as error:
        health.Check(health_pb2.HealthCheckRequest(service="nope"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    state.draining = True
    try:
        status = health.Check(health_pb2.HealthCheckRequest()).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        code, _ = _status(lambda: stub.Generate(pb.GenerateRequest(text="a")))
        assert code == grpc.StatusCode.UNAVAILABLE
    finally:
        state.draining = False
    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    [answer] = list(reflect.ServerReflectionInfo(iter([request])))
    names = {s.name for s in answer.list_services_response.service}
    assert {"jaxserve.v1.Generation", "grpc.health.v1.Health"} <= names


def test_cancelling_a_call_aborts_its_request(stub, served):
    engine = served.engine.engine
    finished = engine.stats.num_finished
    call = stub.Generate(pb.GenerateRequest(text=PROMPT, sampling=_greedy(100)))
    for n, _ in enumerate(call):
        if n == 2:
            break
    assert engine.scheduler.running
    steps = engine.stats.num_steps
    call.cancel()
    deadline = time.monotonic() + 5
    while engine.has_unfinished():
        assert time.monotonic() < deadline
        time.sleep(0.005)
    assert engine.stats.num_steps - steps <= 2
    assert engine.stats.num_finished == finished
    assert engine.scheduler.pages.num_used == 0


def test_api_key_is_required_except_for_health(served):
    state = ServerState(ServerConfig(model_names=("tiny",), api_key="k-1"))
    state.served = served
    with grpc_running(state) as address, grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GenerationStub(channel)
        request = pb.GenerateRequest(text="a", sampling=_greedy(1))
        for metadata in ((), (("authorization", "Bearer wrong"),)):
            code, _ = _status(lambda m=metadata: stub.Generate(request, metadata=m))
            assert code == grpc.StatusCode.UNAUTHENTICATED
            code, _ = _status(
                lambda m=metadata: stub.Tokenize(pb.TokenizeRequest(text="a"), metadata=m)
            )
            assert code == grpc.StatusCode.UNAUTHENTICATED
        good = (("authorization", "Bearer k-1"),)
        assert list(stub.Generate(request, metadata=good))[-1].usage.completion_tokens == 1
        health = health_pb2_grpc.HealthStub(channel)
        assert (
            health.Check(health_pb2.HealthCheckRequest()).status
            == health_pb2.HealthCheckResponse.SERVING
        )


def test_queue_full_is_resource_exhausted(served):
    state = ServerState(ServerConfig(model_names=("tiny",)))
    state.served = Served(
        engine=FullEngine(),
        tokenizer=served.tokenizer,
        render_chat=served.render_chat,
        max_model_len=128,
    )
    with grpc_running(state) as address, grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GenerationStub(channel)
        code, _ = _status(lambda: stub.Generate(pb.GenerateRequest(text="a")))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_health_watch_streams_each_change_of_the_state(channel, state):
    health = health_pb2_grpc.HealthStub(channel)
    call = health.Watch(health_pb2.HealthCheckRequest(service="jaxserve.v1.Generation"))
    seen = iter(call)
    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    try:
        assert next(seen).status == serving
        state.draining = True
        assert next(seen).status == not_serving
        state.draining = False
        assert next(seen).status == serving
    finally:
        state.draining = False
        call.cancel()
    unknown = health.Watch(health_pb2.HealthCheckRequest(service="nope"))
    try:
        assert next(iter(unknown)).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
    finally:
        unknown.cancel()
