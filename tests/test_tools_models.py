"""tool_choice "auto" on a real model: Gemma 3 (its ```tool_code format, chosen from its chat
template), greedy, in a conversation where the tool was used before and the user plainly asks
for it again. Fails if the model answers without calling the tool, streamed or not."""

from __future__ import annotations

import json

import httpx
import pytest

from jaxserve import LLM
from jaxserve.api.async_engine import AsyncEngine
from jaxserve.api.openai_server import Served, ServerConfig, create_app
from tests.http_server import running

pytestmark = pytest.mark.slow

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "description": "City name"}},
    "required": ["city"],
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city",
            "parameters": WEATHER,
        },
    }
]
HISTORY = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
    {"role": "assistant", "content": "It is 18 C and sunny in Paris."},
]
BODY = {"tools": TOOLS, "temperature": 0, "max_tokens": 60}


@pytest.fixture(scope="module")
def client(gemma3_path):
    llm = LLM(str(gemma3_path), max_model_len=1024)
    engine = AsyncEngine(llm.engine)
    served = Served.from_llm(llm, engine)
    assert served.tool_format == "gemma"
    app = create_app(ServerConfig(model_names=("gemma",)), served)
    with running(app) as url, httpx.Client(base_url=url, timeout=600) as c:
        yield c
    engine.shutdown()


@pytest.mark.parametrize("city", ["Berlin", "London"])
def test_auto_tool_choice_calls_the_tool_when_asked(client, city):
    question = {
        "Berlin": "Check the weather in Berlin for me.",
        "London": "And in London?",
    }[city]
    messages = [*HISTORY, {"role": "user", "content": question}]
    r = client.post("/v1/chat/completions", json={**BODY, "messages": messages})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls", choice
    calls = choice["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_weather"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": city}
    assert "tool_code" not in (choice["message"]["content"] or "")

    r = client.post("/v1/chat/completions", json={**BODY, "messages": messages, "stream": True})
    events = [json.loads(x[6:]) for x in r.text.split("\n\n") if x and x != "data: [DONE]"]
    deltas = [e["choices"][0] for e in events if e["choices"]]
    pieces = [p for d in deltas for p in d["delta"].get("tool_calls", ())]
    assert [p["function"]["name"] for p in pieces if "id" in p] == ["get_weather"]
    arguments = "".join(p["function"].get("arguments", "") for p in pieces)
    assert json.loads(arguments) == {"city": city}
    assert deltas[-1]["finish_reason"] == "tool_calls"
    content = "".join(d["delta"].get("content") or "" for d in deltas)
    assert content == (choice["message"]["content"] or "")
