"""OpenAI tool calling as a grammar constraint: `tools`, `tool_choice` -> `{"grammar": ...}`.

Output formats (one call object per call, its `arguments` constrained by the function's
`parameters` JSON Schema and its `name` by the tools' names):

  hermes   `<tool_call>\\n{"name": "f", "arguments": {...}}\\n</tool_call>`, blocks joined by "\\n"
           (Hermes, Qwen 2.5 / Qwen 3, SmolLM and other ChatML models)
  llama3   `{"name": "f", "parameters": {...}}`, calls joined by "; ", optionally after
           `<|python_tag|>` (Llama 3.1+ write it before calls)
  mistral  `[TOOL_CALLS][{"name": "f", "arguments": {...}}, ...]` (Mistral / Mixtral)
  pythonic `[f(a=1, b="x"), g()]` (Llama 3.2 / 4 pythonic templates)
  gemma    a ```tool_code block of calls `f(a=1, b="x")`, one per line (Gemma 3's convention;
           results come back in a ```tool_output block)
  generic  `{"tool_calls": [{"name": "f", "arguments": {...}}, ...]}` (templates without tool
           markup)

Python-style calls (`grammar/tools_python.py`) take the arguments as keyword arguments.

`tool_format(template)` picks one from the chat template; a server's `--tool-call-parser`
overrides it.

`tool_choice` "required" or a named function constrains the whole output; "auto" gives a lazy
constraint (`triggers`: free text until the model starts a call, see `grammar/lazy.py`);
"none" gives no constraint. `parallel_tool_calls=False` allows exactly one call.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .gbnf_print import to_gbnf
from .ir import (
    Alt,
    Grammar,
    Node,
    Ref,
    Repeat,
    Seq,
    UnsupportedConstraintError,
    alt,
    lit,
    opt,
    seq,
    star,
)
from .tools_python import arguments_rules, python_arguments

NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
NAME_ARGS = "[ARGS]"  # between a call's name and its arguments, in the "name_args" style
NO_PARAMETERS = {"type": "object", "properties": {}, "additionalProperties": False}


@dataclass(frozen=True)
class CallFormat:
    """How a model writes tool calls: `begin (open call close) (sep open call close)* end`."""

    trigger: str  # the text that starts the calls in free text ("auto")
    begin: str
    open: str
    close: str
    sep: str
    end: str
    args_key: str  # "arguments" or "parameters"
    lead: str = ""  # a marker the model may write before the calls (`<|python_tag|>`)
    # "json": each call is `{"name": NAME, "<args_key>": ARGUMENTS}`; "name_args": the bare
    # name, `NAME_ARGS`, then the arguments (Mistral's v11 `[TOOL_CALLS]f[ARGS]{...}`);
    # "python": `NAME(key=value, ...)`
    style: str = "json"

    def call(self, name: str, arguments: str) -> str:
        """One call written in this format (`arguments`: JSON text)."""
        if self.style == "python":
            return self.open + name + "(" + python_arguments(arguments) + ")" + self.close
        if self.style == "name_args":
            return self.open + name + NAME_ARGS + arguments + self.close
        obj = f'{{"name": {json.dumps(name)}, "{self.args_key}": {arguments}}}'
        return self.open + obj + self.close

    def calls(self, calls: Sequence[tuple[str, str]]) -> str:
        return self.begin + self.sep.join(self.call(n, a) for n, a in calls) + self.end


FORMATS: dict[str, CallFormat] = {
    "hermes": CallFormat(
        trigger="<tool_call>",
        begin="",
        open="<tool_call>\n",
        close="\n</tool_call>",
        sep="\n",
        end="",
        args_key="arguments",
    ),
    "llama3": CallFormat(
        trigger='{"name"',
        begin="",
        open="",
        close="",
        sep="; ",
        end="",
        args_key="parameters",
        lead="<|python_tag|>",
    ),
    "mistral": CallFormat(
        trigger="[TOOL_CALLS]",
        begin="[TOOL_CALLS][",
        open="",
        close="",
        sep=", ",
        end="]",
        args_key="arguments",
    ),
    "mistral_v11": CallFormat(
        trigger="[TOOL_CALLS]",
        begin="",
        open="[TOOL_CALLS]",
        close="",
        sep="",
        end="",
        args_key="arguments",
        style="name_args",
    ),
    "pythonic": CallFormat(
        trigger="[",
        begin="[",
        open="",
        close="",
        sep=", ",
        end="]",
        args_key="arguments",
        style="python",
    ),
    "gemma": CallFormat(
        trigger="```tool_code",
        begin="```tool_code\n",
        open="",
        close="",
        sep="\n",
        end="\n```",
        args_key="arguments",
        style="python",
    ),
    "generic": CallFormat(
        trigger='{"tool_calls"',
        begin='{"tool_calls": [',
        open="",
        close="",
        sep=", ",
        end="]}",
        args_key="arguments",
    ),
}


class ToolError(ValueError):
    """A malformed `tools` / `tool_choice`; `param` names the field (`tools[2].function.name`)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Tool:
    """One function the model may call."""

    name: str
    description: str | None
    parameters: Mapping[str, Any]  # JSON Schema of the arguments object

    def openai(self) -> dict[str, Any]:
        """Back in OpenAI's shape (what chat templates expect in `tools`)."""
        function: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            function["description"] = self.description
        function["parameters"] = dict(self.parameters)
        return {"type": "function", "function": function}


def tool_format(template: str | None) -> str:
    """The call format that suits a chat template (None: the ChatML fallback)."""
    if template is None or "<tool_call>" in template or "<|im_start|>" in template:
        return "hermes"
    if "<|start_header_id|>" in template or "<|python_tag|>" in template:
        return "llama3"
    if NAME_ARGS in template:  # Mistral's v11 templates (Mistral Small 3.2, Magistral, Devstral)
        return "mistral_v11"
    if "[TOOL_CALLS]" in template or "[AVAILABLE_TOOLS]" in template:
        return "mistral"
    if "[func_name1(" in template:  # Llama 3.2 / 4 pythonic templates describe the syntax so
        return "pythonic"
    if "<start_of_turn>" in template:
        return "gemma"
    return "generic"


def parse_tools(tools: object) -> list[Tool]:
    """OpenAI `tools` (`[{"type": "function", "function": {...}}]`) validated into `Tool`s."""
    if not isinstance(tools, list | tuple):
        raise ToolError("tools must be a list of tools", "tools")
    out: list[Tool] = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, Mapping):
            raise ToolError(f"{where} must be an object", where)
        if tool.get("type") != "function":
            raise ToolError(f'{where}.type must be "function"', f"{where}.type")
        unknown = sorted(set(tool) - {"type", "function"})
        if unknown:
            raise ToolError(f"{where} has unknown field {unknown[0]!r}", f"{where}.{unknown[0]}")
        out.append(_function(tool.get("function"), f"{where}.function"))
        if any(t.name == out[-1].name for t in out[:-1]):
            raise ToolError(
                f"{where}.function.name {out[-1].name!r} is given twice", f"{where}.function.name"
            )
    return out


def _function(function: object, where: str) -> Tool:
    if not isinstance(function, Mapping):
        raise ToolError(f"{where} must be an object", where)
    unknown = sorted(set(function) - {"name", "description", "parameters", "strict"})
    if unknown:
        raise ToolError(f"{where} has unknown field {unknown[0]!r}", f"{where}.{unknown[0]}")
    name = function.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        message = f"{where}.name must be 1 to 64 letters, digits, '_' or '-', got {name!r}"
        raise ToolError(message, f"{where}.name")
    description = function.get("description")
    if description is not None and not isinstance(description, str):
        raise ToolError(f"{where}.description must be a string", f"{where}.description")
    if function.get("strict") is not None and not isinstance(function["strict"], bool):
        raise ToolError(f"{where}.strict must be a boolean", f"{where}.strict")
    parameters = function.get("parameters", NO_PARAMETERS)
    if parameters is None:
        parameters = NO_PARAMETERS
    if not isinstance(parameters, Mapping):
        raise ToolError(f"{where}.parameters must be a JSON Schema object", f"{where}.parameters")
    return Tool(name, description, parameters)


def parse_tool_choice(choice: object, tools: Sequence[Tool]) -> str:
    """ "none", "auto", "required", or the name of the one function that must be called.

    Unset means "auto" with tools and "none" without."""
    if choice is None:
        return "auto" if tools else "none"
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            message = 'tool_choice must be "none", "auto", "required" or a named function'
            raise ToolError(message, "tool_choice")
        if choice == "required" and not tools:
            raise ToolError('tool_choice "required" needs tools', "tool_choice")
        return choice
    function = choice.get("function") if isinstance(choice, Mapping) else None
    name = function.get("name") if isinstance(function, Mapping) else None
    if (
        not isinstance(choice, Mapping)
        or choice.get("type") != "function"
        or not isinstance(name, str)
    ):
        message = 'a named tool_choice is {"type": "function", "function": {"name": ...}}'
        raise ToolError(message, "tool_choice")
    if name not in {t.name for t in tools}:
        raise ToolError(f"tool_choice names {name!r}, which is not among the tools", "tool_choice")
    return "named:" + name


def tool_grammar(
    tools: Sequence[Tool], *, format: str = "hermes", parallel: bool = True
) -> Grammar:
    """The language of the tool calls of `format` (one call, or one or more when `parallel`).

    Each function's `parameters` schema becomes its own rules, renamed `t<i>-<rule>`; the
    UnsupportedConstraintError of a schema the compiler refuses names the tool."""
    from .json_schema import schema_grammar

    fmt = FORMATS[format]
    if not tools:
        raise UnsupportedConstraintError("tool calls need at least one tool")
    rules: dict[str, Node] = {}
    objects = []
    for i, tool in enumerate(tools):
        prefix = f"t{i}-"
        if fmt.style == "python":
            arg_rules, arguments = arguments_rules(
                tool.name, tool.parameters, prefix, schema_grammar, _renamed
            )
            rules.update(arg_rules)
            objects.append(seq(lit(tool.name + "("), arguments, lit(")")))
            continue
        try:
            schema = schema_grammar(dict(tool.parameters))
        except UnsupportedConstraintError as error:
            raise UnsupportedConstraintError(f"tool {tool.name!r}: {error}") from None
        rules.update({prefix + name: _renamed(node, prefix) for name, node in schema.rules.items()})
        if fmt.style == "name_args":
            objects.append(seq(lit(tool.name + NAME_ARGS), Ref(prefix + schema.start)))
        else:
            head = f'{{"name": {json.dumps(tool.name)}, "{fmt.args_key}": '
            objects.append(seq(lit(head), Ref(prefix + schema.start), lit("}")))
    rules["call"] = seq(
        *(lit(s) for s in (fmt.open,) if s), alt(*objects), *(lit(s) for s in (fmt.close,) if s)
    )
    calls: Node = Ref("call")
    if parallel:
        calls = seq(calls, star(seq(*(lit(s) for s in (fmt.sep,) if s), Ref("call"))))
    rules["root"] = seq(
        *(opt(lit(s)) for s in (fmt.lead,) if s),
        *(lit(s) for s in (fmt.begin,) if s),
        calls,
        *(lit(s) for s in (fmt.end,) if s),
    )
    return Grammar(rules, "root")


def _renamed(node: Node, prefix: str) -> Node:
    if isinstance(node, Ref):
        return Ref(prefix + node.name)
    if isinstance(node, Seq):
        return Seq(tuple(_renamed(item, prefix) for item in node.items))
    if isinstance(node, Alt):
        return Alt(tuple(_renamed(item, prefix) for item in node.items))
    if isinstance(node, Repeat):
        return Repeat(_renamed(node.item, prefix), node.min, node.max)
    return node


def tool_constraint(
    tools: Sequence[Tool], choice: str, *, format: str = "hermes", parallel_tool_calls: bool = True
) -> dict[str, Any] | None:
    """The constraint spec for a `parse_tool_choice` result: None for "none"; a GBNF `grammar`
    for "required" / a named function; for "auto" the same with the format's `triggers`."""
    if choice == "none" or not tools:
        return None
    if choice.startswith("named:"):
        tools = [t for t in tools if t.name == choice[len("named:") :]]
    spec: dict[str, Any] = {
        "grammar": to_gbnf(tool_grammar(tools, format=format, parallel=parallel_tool_calls))
    }
    if choice == "auto":
        fmt = FORMATS[format]
        spec["triggers"] = [fmt.trigger, *((fmt.lead,) if fmt.lead else ())]
    return spec
