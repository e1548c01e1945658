"""Tool calling for the chat fronts: the request's tools validated, described to the model, turned
into a constraint, and the calls taken back out of the generated text.

A chat template that reads `tools` renders them (and tool calls and results in the history)
itself. Any other template gets a system message that lists the tools as JSON Schemas and shows
the call format of `Served.tool_format`; earlier calls are written into assistant messages in that
format and tool results become user messages. With tool_choice "none" the tools are not described
at all (the model is not to call them), but history with calls still renders.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jaxserve.api.errors import bad_request
from jaxserve.api.server_state import Served
from jaxserve.grammar import UnsupportedConstraintError
from jaxserve.grammar.tool_parser import CallDelta
from jaxserve.grammar.tools import (
    FORMATS,
    CallFormat,
    Tool,
    ToolError,
    parse_tool_choice,
    parse_tools,
    tool_constraint,
)


@dataclass(frozen=True)
class ToolUse:
    """The request's tools. `choice`: "none", "auto", "required" or "named:<function name>"."""

    tools: tuple[Tool, ...] = ()
    choice: str = "none"
    parallel: bool = True
    format: str = "hermes"

    @property
    def active(self) -> bool:
        """Whether the model may call tools in this reply."""
        return bool(self.tools) and self.choice != "none"

    def constraint(self) -> dict[str, Any]:
        """SamplingParams fields constraining the reply to the call format ({} when inactive)."""
        try:
            spec = tool_constraint(
                self.tools, self.choice, format=self.format, parallel_tool_calls=self.parallel
            )
        except UnsupportedConstraintError as error:
            raise bad_request(f"tools: {error}", "tools", "unsupported_constraint") from None
        if spec is None:
            return {}
        return {"grammar": spec["grammar"], "grammar_triggers": tuple(spec.get("triggers", ()))}


def tool_use(tools: object, tool_choice: object, parallel: bool | None, served: Served) -> ToolUse:
    """Validate OpenAI's `tools`, `tool_choice` and `parallel_tool_calls` (400s name the field)."""
    try:
        parsed = parse_tools(tools or [])
        choice = parse_tool_choice(tool_choice, parsed)
    except ToolError as error:
        raise bad_request(str(error), error.param) from None
    use = ToolUse(tuple(parsed), choice, parallel is not False, served.tool_format)
    if use.active:
        from jaxserve.grammar.json_schema import schema_grammar

        for i, tool in enumerate(parsed):
            try:
                schema_grammar(dict(tool.parameters))
            except UnsupportedConstraintError as error:
                where = f"tools[{i}].function.parameters"
                raise bad_request(f"{where}: {error}", where, "unsupported_constraint") from None
    return use


def history_tool_calls(calls: object, where: str) -> list[dict[str, Any]]:
    """An assistant message's `tool_calls`, checked: `[{"id", "type", "function": {...}}]`."""
    out = []
    for j, call in enumerate(calls if isinstance(calls, list) else [None]):
        at = f"{where}[{j}]"
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping):
            raise bad_request(f"{at}.function must be an object", f"{at}.function")
        if call.get("type", "function") != "function":
            raise bad_request(f'{at}.type must be "function"', f"{at}.type")
        for key in ("name", "arguments"):
            if not isinstance(function.get(key), str):
                raise bad_request(f"{at}.function.{key} must be a string", f"{at}.function.{key}")
        call_id = call.get("id", f"call_{j}")
        if not isinstance(call_id, str):
            raise bad_request(f"{at}.id must be a string", f"{at}.id")
        name, arguments = function["name"], function["arguments"]
        out.append(
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        )
    return out


def chat_prompt(
    messages: list[dict[str, Any]],
    use: ToolUse,
    served: Served,
    add_generation_prompt: bool,
    template_kwargs: Mapping[str, Any] | None = None,
) -> str:
    """The prompt text of `messages` with the request's tools (see the module docstring);
    `template_kwargs` are further template variables (a request's `chat_template_kwargs`)."""
    extra = {"template_kwargs": template_kwargs} if template_kwargs else {}
    if served.template_tools:
        for message in messages:
            for call in message.get("tool_calls", ()):
                call["function"]["arguments"] = _json_or_text(call["function"]["arguments"])
        if use.active:
            tools = [t.openai() for t in use.tools]
            return served.render_chat(messages, add_generation_prompt, tools=tools, **extra)
        return served.render_chat(messages, add_generation_prompt, **extra)
    messages = _written_out(messages, FORMATS[served.tool_format])
    if use.active:
        messages = _with_system(messages, system_prompt(use))
    return served.render_chat(messages, add_generation_prompt, **extra)


def _json_or_text(arguments: str) -> Any:
    """Arguments as a JSON value (templates write `arguments | tojson`), or the text if not JSON."""
    try:
        return json.loads(arguments)
    except json.JSONDecodeError:
        return arguments


def system_prompt(use: ToolUse) -> str:
    """The tools and the call format, for a template that does not render tools itself."""
    fmt = FORMATS[use.format]
    lines = ["You can call these functions (tools); each is given as a JSON Schema signature:"]
    lines += [json.dumps(t.openai(), ensure_ascii=False) for t in use.tools]
    lines += ["", "To call a function, reply with exactly:"]
    placeholder = "<name>=<value>, ..." if fmt.style == "python" else "<arguments as a JSON object>"
    lines += [fmt.calls([("<function name>", placeholder)])]
    if not use.parallel:
        lines += ["Call one function at a time."]
    elif fmt.open:
        lines += [f"Write one {fmt.open.strip()} block per call."]
    else:
        lines += [f"Separate several calls with {json.dumps(fmt.sep)}."]
    if use.choice == "required":
        lines += ["You must call a function now."]
    elif use.choice.startswith("named:"):
        lines += [f"You must call the function {use.choice[len('named:') :]} now."]
    else:
        lines += ["Call a function only when it helps; otherwise answer in plain text."]
    return "\n".join(lines)


def _with_system(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    if messages and messages[0]["role"] == "system":
        first = {**messages[0], "content": f"{messages[0]['content']}\n\n{text}"}
        return [first, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def _written_out(messages: list[dict[str, Any]], fmt: CallFormat) -> list[dict[str, Any]]:
    """Calls and results as plain text: for a template that knows no tool calls or tool role."""
    names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for message in messages:
        calls = message.get("tool_calls")
        if calls:
            names.update({c["id"]: c["function"]["name"] for c in calls})
            pairs = [(c["function"]["name"], _json_text(c["function"]["arguments"])) for c in calls]
            text = fmt.calls(pairs)
            content = f"{message['content']}\n{text}" if message["content"] else text
            out.append({"role": "assistant", "content": content})
        elif message["role"] == "tool":
            result = _tool_result(message, names.get(message.get("tool_call_id")), fmt)
            if out and out[-1].get("tool_results"):
                out[-1] = {**out[-1], "content": out[-1]["content"] + "\n" + result}
            else:
                out.append({"role": "user", "content": result, "tool_results": True})
        else:
            out.append(message)
    return [{k: v for k, v in m.items() if k != "tool_results"} for m in out]


def _json_text(arguments: str) -> str:
    try:
        json.loads(arguments)
        return arguments
    except json.JSONDecodeError:
        return json.dumps(arguments)


def _tool_result(message: Mapping[str, Any], name: str | None, fmt: CallFormat) -> str:
    if fmt is FORMATS["hermes"]:
        return f"<tool_response>\n{message['content']}\n</tool_response>"
    if fmt is FORMATS["gemma"]:
        return f"```tool_output\n{message['content']}\n```"
    response = {"name": name, "content": message["content"]} if name else message["content"]
    return json.dumps({"tool_response": response}, ensure_ascii=False)


def finish_reason(reason: str | None, num_calls: int) -> str | None:
    return "tool_calls" if num_calls and reason == "stop" else reason


def call_delta(event: CallDelta) -> dict[str, Any]:
    """OpenAI's streamed `tool_calls` entry for one piece of a call."""
    if event.id is None:
        return {"index": event.index, "function": {"arguments": event.arguments}}
    function = {"name": event.name, "arguments": event.arguments}
    return {"index": event.index, "id": event.id, "type": "function", "function": function}
