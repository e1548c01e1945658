"""Reasoning parsers: `<think>` blocks split from the reply whole and incrementally (any cut of the
text gives the same parts, no tag ever leaks), and in chat completions over a mock engine whose
reply is chosen by the test: `message.reasoning_content` and streamed `reasoning_content` deltas."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxserve.api.async_engine import StreamOutput
from jaxserve.api.openai_server import Served, ServerConfig, create_app
from jaxserve.api.reasoning import ReasoningParser, reasoning_format, split_reasoning
from jaxserve.cli import build_parser
from tests.http_server import running
from tests.mock_engine import MockEngine, MockStream, byte_token, tokenizer

SPLITS = [
    ("<think>a b</think>c", False, ("a b", "c")),
    ("\n <think>\nplan\n\n</think>\n\nAnswer.", False, ("plan", "Answer.")),
    ("<think>never closed ", False, ("never closed", "")),
    ("plain <think>x</think> text", False, ("", "plain <think>x</think> text")),
    ("  just text  ", False, ("", "  just text  ")),
    ("<thin", False, ("", "<thin")),
    ("<think>a</think>b</think>c", False, ("a", "b</think>c")),
    ("<think></think>", False, ("", "")),
    ("plan</think>\nAnswer", True, ("plan", "Answer")),
    ("still thinking </thi", True, ("still thinking </thi", "")),
    ("<think>x</think>y", True, ("<think>x", "y")),
]


@pytest.mark.parametrize(("text", "inside", "parts"), SPLITS)
def test_split_reasoning(text, inside, parts):
    assert split_reasoning(text, inside=inside) == parts


def _streamed(pieces: list[str], inside: bool) -> tuple[str, str, list[str]]:
    parser = ReasoningParser(inside=inside)
    reasoning, contents = "", []
    for piece in pieces:
        r, c = parser.feed(piece)
        reasoning, contents = reasoning + r, [*contents, c]
    r, c = parser.finish()
    return reasoning + r, "".join([*contents, c]), contents


FRAGMENTS = ["<think>", "</think>", "<", "</", "<th", "think", ">", "/", " ", "\n", "a", "b c"]


@given(
    st.lists(st.sampled_from(FRAGMENTS), max_size=14).map("".join),
    st.lists(st.integers(0, 60), max_size=8),
    st.booleans(),
)
def test_any_cut_gives_the_same_parts(text, cuts, inside):
    bounds = sorted({min(c, len(text)) for c in cuts})
    pieces = [text[a:b] for a, b in zip([0, *bounds], [*bounds, len(text)], strict=True)]
    # Deltas are never taken back, so equal totals mean no delta held part of a tag.
    reasoning, content, _ = _streamed(pieces, inside)
    assert (reasoning, content) == split_reasoning(text, inside=inside)


def test_one_character_at_a_time_never_shows_part_of_a_tag():
    text = "<think>Let me see.</think>\n\nParis."
    reasoning, content, deltas = _streamed(list(text), False)
    assert (reasoning, content) == ("Let me see.", "Paris.")
    assert "".join(deltas) == "Paris." and all(d in "Paris." for d in deltas)


def test_reasoning_format_detects_a_block_the_prompt_opened():
    assert reasoning_format("none", "<think>") is None
    assert reasoning_format("think", "<|assistant|>").inside is False
    assert reasoning_format("think", "<|assistant|><think>\n").inside is True
    assert reasoning_format("think", "<think>old</think><|assistant|>").inside is False
    assert reasoning_format("think-open", "").inside is True
    with pytest.raises(ValueError, match="reasoning parser"):
        reasoning_format("deepseek", "")


def test_config_and_cli():
    assert build_parser().parse_args(["serve", "--reasoning-parser", "think"]).reasoning_parser
    with pytest.raises(ValueError, match="reasoning_parser"):
        ServerConfig(model_names=("m",), reasoning_parser="bogus")


# -- chat completions over a mock engine ------------------------------------------------------


class ReplyEngine(MockEngine):
    """Replies `reply` to any prompt, three characters per output, so tags straddle outputs."""

    reply = ""

    async def generate(self, ids, params, **kwargs) -> MockStream:
        stream = await super().generate(ids, params, **kwargs)
        pieces = [self.reply[i : i + 3] for i in range(0, len(self.reply), 3)]
        stream.outputs = [
            StreamOutput(
                request_id=0,
                new_token_ids=(byte_token(piece[0]),),
                delta=piece,
                finish_reason="stop" if j == len(pieces) - 1 else None,
                prompt_tokens=len(ids),
                completion_tokens=j + 1,
                cached_tokens=0,
            )
            for j, piece in enumerate(pieces)
        ]
        return stream


@pytest.fixture(scope="module")
def engine() -> ReplyEngine:
    return ReplyEngine()


def _render(messages, add_generation_prompt: bool) -> str:
    return "".join(m["content"] for m in messages)


@pytest.fixture(scope="module", params=["think", "none"])
def client(request, engine):
    served = Served(engine=engine, tokenizer=tokenizer(), render_chat=_render, max_model_len=64)
    config = ServerConfig(model_names=("mock",), reasoning_parser=request.param)
    with running(create_app(config, served)) as url, httpx.Client(base_url=url) as c:
        c.parser = request.param  # type: ignore[attr-defined]
        yield c


REPLY = "<think>\nThe capital of France... is Paris.\n</think>\n\nParis."


def _chat(client, content: str = "hi", **extra):
    body = {"messages": [{"role": "user", "content": content}], **extra}
    return client.post("/v1/chat/completions", json=body)


def test_chat_message_has_reasoning_content(client, engine):
    engine.reply = REPLY
    message = _chat(client).json()["choices"][0]["message"]
    if client.parser == "none":
        assert message["content"] == REPLY and "reasoning_content" not in message
    else:
        assert message["reasoning_content"] == "The capital of France... is Paris."
        assert message["content"] == "Paris."


def test_chat_stream_has_reasoning_deltas_and_no_tags_in_content(client, engine):
    engine.reply = REPLY
    r = _chat(client, stream=True)
    events = [json.loads(e[6:]) for e in r.text.split("\n\n") if e and e != "data: [DONE]"]
    deltas = [e["choices"][0]["delta"] for e in events]
    contents = [d["content"] for d in deltas[1:] if "content" in d]
    reasoning = "".join(d.get("reasoning_content", "") for d in deltas)
    if client.parser == "none":
        assert "".join(contents) == REPLY and reasoning == ""
        return
    assert reasoning == "The capital of France... is Paris."
    assert contents and "".join(contents) == "Paris." and all("<" not in c for c in contents)
    first_content = next(i for i, d in enumerate(deltas[1:]) if d.get("content"))
    last_reasoning = max(i for i, d in enumerate(deltas[1:]) if d.get("reasoning_content"))
    assert last_reasoning < first_content
    assert events[-1]["choices"][0]["finish_reason"] == "stop"


def test_a_prompt_that_opens_the_block(client, engine):
    engine.reply = "Hmm, 2 + 2 = 4.</think>4"
    message = _chat(client, content="What is 2 + 2? <think>").json()["choices"][0]["message"]
    if client.parser == "think":
        assert message["reasoning_content"] == "Hmm, 2 + 2 = 4." and message["content"] == "4"
    engine.reply = "No thinking here."
    message = _chat(client).json()["choices"][0]["message"]
    assert message["content"] == "No thinking here."
    assert message.get("reasoning_content") is None


@pytest.mark.parametrize("parser", ["think", "none"])
def test_grpc_chat_splits_reasoning_as_http_does(engine, parser):
    import grpc

    from jaxserve.api import jaxserve_v1_pb2 as pb
    from jaxserve.api import jaxserve_v1_pb2_grpc as pb_grpc
    from jaxserve.api.openai_server import ServerState
    from tests.http_server import grpc_running

    engine.reply = REPLY
    served = Served(engine=engine, tokenizer=tokenizer(), render_chat=_render, max_model_len=64)
    state = ServerState(ServerConfig(model_names=("mock",), reasoning_parser=parser))
    state.served = served
    with grpc_running(state) as address, grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GenerationStub(channel)
        request = pb.ChatRequest(messages=[pb.ChatMessage(role="user", content="hi")])
        responses = list(stub.Chat(request))
    reasoning = "".join(r.reasoning for r in responses)
    text = "".join(r.text for r in responses)
    if parser == "none":
        assert text == REPLY and reasoning == ""
    else:
        assert reasoning == "The capital of France... is Paris." and text == "Paris."
        assert all("<" not in r.text for r in responses)
    assert responses[-1].finish_reason == pb.FINISH_REASON_STOP
