"""Tool calling through the OpenAI front on the tiny random model: `tool_calls` in plain and
streamed responses, tool_choice required / named / auto, parallel_tool_calls, tool history.

The model is random, so only structure is checked: the calls parse, name a given tool, and their
arguments validate against its schema. The model's template renders `tools` itself, tersely: the
system message the front writes for templates that do not (checked here without a model) is too
long for the tiny model's 256-token context."""

from __future__ import annotations

import json
import re

import grpc
import httpx
import jsonschema
import pytest

from jaxserve import LLM
from jaxserve.api import jaxserve_v1_pb2 as pb
from jaxserve.api import jaxserve_v1_pb2_grpc as pb_grpc
from jaxserve.api.async_engine import AsyncEngine
from jaxserve.api.openai_server import Served, ServerConfig, ServerState, create_app
from jaxserve.api.tool_calls import chat_prompt, tool_use
from jaxserve.text.chat_template import ChatTemplate
from tests.http_server import grpc_running, running
from tests.tiny_gguf import write_tiny_gguf
from tests.tiny_vocab import CHATML_TEMPLATE, gpt2_tokenizer_metadata

WEATHER = {
    "type": "object",
    "properties": {"unit": {"enum": ["c", "f"]}, "ok": {"type": "boolean"}},
    "required": ["unit", "ok"],
    "additionalProperties": False,
}
SCHEMAS = {"get_weather": WEATHER, "ping": {"type": "object", "additionalProperties": False}}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "ping", "description": "Checks the line."}},
]
BODY = {
    "messages": [{"role": "user", "content": "Weather?"}],
    "tools": TOOLS,
    "max_tokens": 120,
    "temperature": 1.0,
}


# ChatML that lists the tools by name and writes earlier calls in the hermes format.
TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools:{% for t in tools %} {{ t.function.name }}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content or '' }}"
    "{% for c in m.tool_calls or [] %}<tool_call>\n"
    '{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}'
    "\n</tool_call>{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    path = tmp_path_factory.mktemp("tools") / "tiny-tools.gguf"
    write_tiny_gguf(path, gpt2_tokenizer_metadata(chat_template=TOOLS_TEMPLATE))
    llm = LLM(str(path), weights="f32", max_num_seqs=4, decode_steps=4, max_model_len=256)
    engine = AsyncEngine(llm.engine)
    yield Served.from_llm(llm, engine)
    engine.shutdown()


@pytest.fixture(scope="module")
def client(served):
    app = create_app(ServerConfig(model_names=("tiny",)), served)
    with running(app) as url, httpx.Client(base_url=url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def stub(served):
    state = ServerState(ServerConfig(model_names=("tiny",)))
    state.served = served
    with grpc_running(state) as address, grpc.insecure_channel(address) as channel:
        yield pb_grpc.GenerationStub(channel)


def _check_calls(calls: list[dict]) -> None:
    for call in calls:
        assert call["type"] == "function" and call["id"].startswith("call_")
        name = call["function"]["name"]
        jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS[name])


def _chat(client: httpx.Client, **extra) -> dict:
    r = client.post("/v1/chat/completions", json={**BODY, **extra})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]


def test_required_tool_choice_gives_calls_that_validate(client):
    names = set()
    for seed in range(3):
        choice = _chat(client, tool_choice="required", parallel_tool_calls=False, seed=seed)
        assert choice["finish_reason"] == "tool_calls", choice
        message = choice["message"]
        assert message["content"] is None and len(message["tool_calls"]) == 1
        _check_calls(message["tool_calls"])
        names.add(message["tool_calls"][0]["function"]["name"])
    assert names <= {"get_weather", "ping"}


def test_named_tool_choice_calls_that_function(client):
    named = {"type": "function", "function": {"name": "get_weather"}}
    num_calls = 0
    for seed in range(2):
        choice = _chat(client, tool_choice=named, seed=seed)
        assert choice["finish_reason"] in ("tool_calls", "length")
        calls = choice["message"].get("tool_calls", [])
        assert all(c["function"]["name"] == "get_weather" for c in calls)
        if choice["finish_reason"] == "tool_calls":
            _check_calls(calls)
            num_calls += len(calls)
    assert num_calls


def _stream(client: httpx.Client, **extra) -> tuple[str, list[dict], str]:
    r = client.post("/v1/chat/completions", json={**BODY, **extra, "stream": True})
    assert r.status_code == 200, r.text
    lines = [line[6:] for line in r.text.split("\n\n") if line]
    assert lines[-1] == "[DONE]"
    content, calls, finish = "", [], None
    for event in map(json.loads, lines[:-1]):
        [choice] = event["choices"]
        delta = choice["delta"]
        content += delta.get("content") or ""
        for piece in delta.get("tool_calls", ()):
            if "id" in piece:  # a call's first delta: index, id, type and name
                assert piece["index"] == len(calls) and piece["type"] == "function"
                calls.append({"id": piece["id"], "type": "function", "function": piece["function"]})
            else:
                assert set(piece) == {"index", "function"} and set(piece["function"]) == {
                    "arguments"
                }
                calls[piece["index"]]["function"]["arguments"] += piece["function"]["arguments"]
        finish = choice["finish_reason"] or finish
    return content, calls, finish


def test_streamed_deltas_reassemble_into_the_same_calls(client):
    extra = {"tool_choice": "required", "seed": 5}
    plain = _chat(client, **extra)
    content, calls, finish = _stream(client, **extra)
    assert finish == plain["finish_reason"]
    assert content == (plain["message"]["content"] or "")
    expected = plain["message"].get("tool_calls", [])
    assert [c["function"] for c in calls] == [c["function"] for c in expected]
    assert calls and "<tool_call>" not in content


def test_auto_tool_choice_answers_in_text_or_calls(client):
    for seed in range(2):
        choice = _chat(client, seed=seed, max_tokens=12)  # tool_choice defaults to auto
        assert choice["finish_reason"] in ("stop", "length", "tool_calls")
        message = choice["message"]
        assert "<tool_call>" not in (message["content"] or "")
        _check_calls(message.get("tool_calls", []))
        content, _, _ = _stream(client, seed=seed, max_tokens=12)
        assert content == (message["content"] or "")


def test_grammar_triggers_make_a_lazy_constraint(client):
    """The engine side of tool_choice "auto": free text, then the grammar from the trigger on."""
    body = {"prompt": "The sea is", "max_tokens": 30, "n": 4, "temperature": 1.0}
    body |= {"grammar": 'root ::= "e" [xyz]{3}', "grammar_triggers": ["e"]}
    triggered = 0
    for seed in range(2):
        r = client.post("/v1/completions", json={**body, "seed": seed})
        assert r.status_code == 200, r.text
        for choice in r.json()["choices"]:
            match = re.fullmatch(r"([^e]*)(e[xyz]{0,3})?", choice["text"], re.S)
            assert match, choice
            if match.group(2) and len(match.group(2)) == 4:
                assert choice["finish_reason"] == "stop"
                triggered += 1
    assert triggered


def test_grpc_chat_applies_tools_and_returns_the_parsed_calls(stub):
    tools = [
        pb.Tool(name="get_weather", parameters_json_schema=json.dumps(WEATHER)),
        pb.Tool(name="ping", description="Checks the line."),
    ]
    user = pb.ChatMessage(role="user", content="Weather?")
    sampling = pb.SamplingParams(max_tokens=120, temperature=1.0, seed=1)
    for choice, names in [("required", {"get_weather", "ping"}), ("ping", {"ping"})]:
        request = pb.ChatRequest(
            messages=[user],
            tools=tools,
            tool_choice=choice,
            parallel_tool_calls=False,
            sampling=sampling,
        )
        responses = list(stub.Chat(request))
        last = responses[-1]
        assert last.finish_reason == pb.FINISH_REASON_TOOL_CALLS
        [call] = last.tool_calls
        assert call.name in names and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])
        assert call.arguments in "".join(r.text for r in responses)  # raw text, markup and all


CALL = {"id": "c1", "type": "function", "function": {"name": "ping", "arguments": "{}"}}
HISTORY = [
    {"role": "user", "content": "Ping?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "c1", "content": "pong"},
]


def test_tool_history_renders_and_none_leaves_the_tools_out(client):
    body = {"messages": HISTORY, "max_tokens": 2, "temperature": 0}
    out = client.post("/v1/chat/completions", json={**body, "tools": TOOLS, "tool_choice": "none"})
    assert out.status_code == 200, out.text
    plain = client.post("/v1/chat/completions", json=body).json()
    assert out.json()["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"]
    assert "tool_calls" not in out.json()["choices"][0]["message"]
    with_tools = client.post("/v1/chat/completions", json={**body, "tools": TOOLS}).json()
    assert with_tools["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"]


def _plain_messages(messages):
    from jaxserve.api.protocol import ChatMessage
    from jaxserve.api.serving_chat import plain_messages

    return plain_messages([ChatMessage(**m) for m in messages])


@pytest.mark.parametrize("fmt", ["hermes", "llama3", "generic"])
def test_a_template_without_tools_gets_them_in_a_system_message(fmt):
    template = ChatTemplate(CHATML_TEMPLATE)
    served = Served(
        engine=None,
        tokenizer=None,
        render_chat=lambda m, add: template.render(m, add_generation_prompt=add),
        max_model_len=0,
        tool_format=fmt,
    )
    use = tool_use(TOOLS, "required", False, served)
    text = chat_prompt(_plain_messages(HISTORY), use, served, True)
    assert text.startswith("<|im_start|>system\nYou can call these functions")
    assert json.dumps(TOOLS[0]) in text and "You must call a function now." in text
    written = {"hermes": '<tool_call>\n{"name": "ping", "arguments": {}}\n</tool_call>'}
    assert written.get(fmt, "ping") in text and "pong" in text
    assert "<|im_start|>tool" not in text  # results go in a user message
    unused = chat_prompt(
        _plain_messages(HISTORY), tool_use(TOOLS, "none", None, served), served, True
    )
    assert "You can call" not in unused and "pong" in unused


@pytest.mark.parametrize("parser", ["mistral", "mistral_v11", "llama3", "generic"])
def test_tool_call_parser_overrides_the_template_format(served, parser):
    """`--tool-call-parser`: the constraint and the parser of replies follow the named format."""
    app = create_app(ServerConfig(model_names=("tiny",), tool_call_parser=parser), served)
    assert app.state.server.served.tool_format == parser
    with running(app) as url, httpx.Client(base_url=url, timeout=120) as c:
        choice = _chat(c, tool_choice="required", parallel_tool_calls=False, seed=1)
    assert choice["finish_reason"] == "tool_calls", choice
    assert choice["message"]["content"] is None and len(choice["message"]["tool_calls"]) == 1
    _check_calls(choice["message"]["tool_calls"])
    with pytest.raises(ValueError, match="tool_call_parser"):
        ServerConfig(model_names=("tiny",), tool_call_parser="xml")
