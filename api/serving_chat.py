"""POST /v1/chat/completions: messages -> chat template -> engine -> OpenAI response or SSE.

With tools (`api/tool_calls.py`), the reply is constrained to the model's call format and the
calls come back as `message.tool_calls` / streamed `tool_calls` deltas, never as content. With a
reasoning parser (`api/reasoning.py`), a `<think>` block comes back as `message.reasoning_content`
/ streamed `reasoning_content` deltas; tool calls are read from the text after it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from jaxserve.api.errors import APIError, bad_request, unsupported
from jaxserve.api.generation import Job, merged, submit
from jaxserve.api.protocol import ChatCompletionRequest, ChatMessage
from jaxserve.api.reasoning import ReasoningFormat, reasoning_format
from jaxserve.api.research import research_fields, stream_fields
from jaxserve.api.responses import Choice, Envelope, chat_logprob_entry, new_id, sse, total_usage
from jaxserve.api.sampling import ALIASES, build_params, check_stream_options
from jaxserve.api.server_state import Served, ServerState
from jaxserve.api.tool_calls import (
    ToolUse,
    call_delta,
    chat_prompt,
    finish_reason,
    history_tool_calls,
    tool_use,
)
from jaxserve.errors import JaxserveError
from jaxserve.grammar.tool_parser import ToolCallParser, parse_tool_calls
from jaxserve.sampling_params import CONSTRAINT_FIELDS, MAX_LOGPROBS
from jaxserve.text.tokenizer import encode_prompt

HANDLED = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "max_tokens",
        "max_completion_tokens",
        "logprobs",
        "top_logprobs",
        "response_format",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "add_generation_prompt",
        "priority",
        "chat_template_kwargs",
    }
)


def plain_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """Messages as the chat template wants them; content parts other than text are refused."""
    out = []
    for i, message in enumerate(messages):
        content = message.content
        if isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                kind = part.get("type")
                if kind != "text" or not isinstance(part.get("text"), str):
                    where = f"messages[{i}].content[{j}]"
                    if kind == "text":
                        raise bad_request(f"{where}.text must be a string", f"{where}.text")
                    raise unsupported(f"{where}.type", f"{kind!r}: only text parts are supported")
                texts.append(part["text"])
            content = "\n".join(texts)
        entry: dict[str, Any] = {"role": message.role, "content": content or ""}
        if message.role == "developer":  # OpenAI's newer name for the system role
            entry["role"] = "system"
        for key in ("name", "tool_call_id"):
            if getattr(message, key) is not None:
                entry[key] = getattr(message, key)
        if message.tool_calls:
            if message.role != "assistant":
                where = f"messages[{i}].tool_calls"
                raise bad_request(f"{where}: only assistant messages have tool calls", where)
            entry["tool_calls"] = history_tool_calls(
                message.tool_calls, f"messages[{i}].tool_calls"
            )
        out.append(entry)
    return out


def response_format_fields(response_format: dict[str, Any] | None) -> dict[str, Any]:
    """OpenAI's `response_format` as SamplingParams constraint fields."""
    if response_format is None:
        return {}
    kind = response_format.get("type")
    extra = sorted(set(response_format) - {"type", kind})
    if kind == "text" and not extra:
        return {}
    if kind == "json_object" and not extra:
        return {"json_schema": {"type": "object"}}  # OpenAI: the output is a JSON object
    if kind == "json_schema" and not extra and isinstance(response_format.get(kind), dict):
        spec = response_format[kind]
        unknown = sorted(set(spec) - {"name", "description", "schema", "strict"})
        if unknown:
            message = f"response_format.json_schema has unknown fields {unknown}"
            raise bad_request(message, "response_format")
        if not isinstance(spec.get("schema", {}), dict | bool):
            message = "response_format.json_schema.schema must be an object"
            raise bad_request(message, "response_format")
        return {"json_schema": spec.get("schema", {})}  # always enforced, strict or not
    raise bad_request(
        'response_format must be {"type": "text"}, {"type": "json_object"} or '
        '{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}',
        "response_format",
    )


def _check_tools(body: ChatCompletionRequest, use: ToolUse) -> None:
    """Tool calls are a constraint of their own: no other may be combined with them."""
    if not use.active:
        return
    if response_format_fields(body.response_format):
        message = 'response_format cannot be combined with tools (unless tool_choice is "none")'
        raise bad_request(message, "response_format")
    for name in body.model_extra or {}:
        if ALIASES.get(name, name) in (*CONSTRAINT_FIELDS, "grammar_triggers"):
            message = f'{name} cannot be combined with tools (unless tool_choice is "none")'
            raise bad_request(message, name)


async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, state: ServerState, model: str, served: Served
) -> JSONResponse | StreamingResponse:
    started = time.perf_counter()
    include_usage = check_stream_options(body)
    use = tool_use(body.tools, body.tool_choice, body.parallel_tool_calls, served)
    _check_tools(body, use)
    messages = plain_messages(body.messages)
    add_generation_prompt = body.add_generation_prompt is not False
    template_kwargs = (body.model_extra or {}).get("chat_template_kwargs")
    if template_kwargs is not None and not isinstance(template_kwargs, dict):
        raise bad_request("chat_template_kwargs must be an object", "chat_template_kwargs")
    try:
        text = chat_prompt(messages, use, served, add_generation_prompt, template_kwargs)
    except JaxserveError as error:
        raise bad_request(f"The chat template failed: {error}", "messages") from None
    except ValueError as error:  # a variable the renderer sets itself
        raise bad_request(str(error), "chat_template_kwargs") from None
    ids = encode_prompt(served.tokenizer, text, add_special=False)
    fixed: dict[str, Any] = {"max_tokens": _max_tokens(body, served, len(ids))}
    if body.top_logprobs is not None and not body.logprobs:
        raise bad_request("top_logprobs requires logprobs to be true", "top_logprobs")
    if body.logprobs:
        top = body.top_logprobs or 0
        if not 0 <= top <= MAX_LOGPROBS:
            message = f"top_logprobs must be in [0, {MAX_LOGPROBS}], got {top}"
            raise bad_request(message, "top_logprobs")
        fixed["logprobs"] = top
    fixed.update(response_format_fields(body.response_format))
    fixed.update(use.constraint())
    try:
        params = build_params(
            body, handled=HANDLED, fixed=fixed, adapters=served.adapters(), routed=served.lora
        )
    except APIError as error:
        if body.response_format is not None and error.param == "json_schema":
            error.param = "response_format"
            error.message = "response_format: " + error.message.removeprefix("json_schema: ")
        raise
    priority = _priority(body)
    job = Job(ids, params, priority=priority)
    streams = await submit(
        served.engine, [job], prompt_param="messages", retry_after_s=state.config.retry_after_s
    )
    envelope = Envelope(new_id("chat"), model, state.config.system_fingerprint)
    outputs = state.metered(
        merged(streams, request, num_sequences=params.n), started=started, n=params.n
    )
    thinking = reasoning_format(state.config.reasoning_parser, text)
    if body.stream:
        stream = _stream(
            outputs, envelope, served, params.n, include_usage, bool(body.logprobs), use, thinking
        )
        return StreamingResponse(state.track(stream), media_type="text/event-stream")
    async with state.tracking():
        choices = {i: Choice(i) for i in range(params.n)}
        async for index, out in outputs:
            choices[index].add(out)
    ordered = [choices[i] for i in sorted(choices)]
    body_out = envelope.wrap(
        "chat.completion",
        choices=[_choice(c, served, bool(body.logprobs), use, thinking) for c in ordered],
        usage=total_usage(ordered, params.n),
    )
    return JSONResponse(body_out)


def _priority(body: ChatCompletionRequest) -> int:
    value = (body.model_extra or {}).get("priority", 0)
    if not isinstance(value, int) or isinstance(value, bool):
        raise bad_request("priority must be an integer", "priority")
    return value


def _max_tokens(body: ChatCompletionRequest, served: Served, num_prompt: int) -> int:
    name = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    value = getattr(body, name)
    if value is None:  # OpenAI: up to the end of the context
        return max(1, served.max_model_len - num_prompt)
    if value < 1:
        raise bad_request(f"{name} must be at least 1, got {value}", name)
    return value


def _choice(
    choice: Choice,
    served: Served,
    logprobs: bool,
    use: ToolUse,
    thinking: ReasoningFormat | None,
) -> dict[str, Any]:
    lp = None
    if logprobs:
        entries = [chat_logprob_entry(served.tokenizer, e) for e in choice.logprobs]
        lp = {"content": entries, "refusal": None}
    text = choice.text
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    if thinking is not None:
        reasoning, text = thinking.split(text)
        message["content"], message["reasoning_content"] = text, reasoning or None
    calls = []
    if use.active:
        message["content"], calls = parse_tool_calls(text, use.format)
        if calls:
            message["tool_calls"] = calls
    return {
        "index": choice.index,
        "message": message,
        "logprobs": lp,
        "finish_reason": finish_reason(choice.finish_reason, len(calls)),
        **research_fields(served.tokenizer, choice),
    }


async def _stream(
    outputs: AsyncIterator,
    envelope: Envelope,
    served: Served,
    n: int,
    include_usage: bool,
    logprobs: bool,
    use: ToolUse,
    thinking: ReasoningFormat | None,
) -> AsyncIterator[bytes]:
    extra = {"usage": None} if include_usage else {}

    def chunk(
        index: int, delta: dict, lp: Any = None, finish: str | None = None, **more: Any
    ) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish, **more}
        return sse(envelope.wrap("chat.completion.chunk", choices=[choice], **extra))

    choices = {i: Choice(i) for i in range(n)}
    parsers = {i: ToolCallParser(use.format) for i in range(n)} if use.active else {}
    thinkers = {i: thinking.parser() for i in range(n)} if thinking is not None else {}
    for i in range(n):
        yield chunk(i, {"role": "assistant", "content": ""})
    try:
        async for index, out in outputs:
            choices[index].add(out)
            fields = stream_fields(served.tokenizer, out)
            if fields:  # research outputs of these tokens ride on a chunk of their own
                yield chunk(index, {}, **fields)
            lp = None
            if logprobs and out.logprobs:
                entries = [chat_logprob_entry(served.tokenizer, e) for e in out.logprobs]
                lp = {"content": entries, "refusal": None}
            text = out.delta
            if index in thinkers:
                reasoning, text = thinkers[index].feed(out.delta)
                if out.finish_reason is not None:
                    more_reasoning, more_text = thinkers[index].finish()
                    reasoning, text = reasoning + more_reasoning, text + more_text
                if reasoning:
                    yield chunk(index, {"reasoning_content": reasoning}, lp)
                    lp = None
            if index not in parsers:
                if text or lp is not None:
                    yield chunk(index, {"content": text}, lp)
                if out.finish_reason is not None:
                    yield chunk(index, {}, None, out.finish_reason)
                continue
            parser = parsers[index]
            events = parser.feed(text)
            if out.finish_reason is not None:
                events += parser.finish()
            for event in events:  # logprobs ride on the first chunk of their output
                if isinstance(event, str):
                    yield chunk(index, {"content": event}, lp)
                else:
                    yield chunk(index, {"tool_calls": [call_delta(event)]}, lp)
                lp = None
            if lp is not None:
                yield chunk(index, {}, lp)
            if out.finish_reason is not None:
                reason = finish_reason(out.finish_reason, parser.num_calls)
                yield chunk(index, {}, None, reason)
    except APIError as error:
        yield sse(error.body())
        return
    if include_usage:
        ordered = [choices[i] for i in sorted(choices)]
        yield sse(envelope.wrap("chat.completion.chunk", choices=[], usage=total_usage(ordered, n)))
    yield sse("[DONE]")
