"""Tool calls written as Python calls, `get_weather(city="Oslo", days=3)` (Llama 3.2 / 4's
"pythonic" lists, Gemma 3's `tool_code` blocks).

Arguments are keyword arguments, one per property of the function's `parameters` object, in
declared order (required ones always, optional ones when given); each value is spelled as the
JSON Schema compiler spells it, with Python's `True`, `False` and `None` for JSON's literals (a
JSON string or number is a Python literal already). Parameters that are not an object with named
properties (additional or pattern properties, combinators at the top) cannot be written as
keyword arguments and are refused, naming the tool.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from .ir import Alt, Node, Ref, Repeat, Seq, UnsupportedConstraintError, alt, lit, opt, seq

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
PYTHON_LITERALS = {"true": "True", "false": "False", "null": "None"}
_LITERAL_NODES = {lit(k): lit(v) for k, v in PYTHON_LITERALS.items()}
# keywords a parameters object may carry beside its properties (annotations included)
_OBJECT_KEYS = {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "$defs",
    "definitions",
    "$schema",
    "title",
    "description",
    "$comment",
    "examples",
    "default",
    "strict",
}


def arguments_rules(
    name: str,
    parameters: Mapping[str, Any],
    prefix: str,
    compile_schema: Callable[[dict], Any],
    renamed: Callable[[Node, str], Node],
) -> tuple[dict[str, Node], Node]:
    """(rules, node) of the keyword arguments of tool `name` (rules prefixed `prefix`)."""
    params = dict(parameters)
    extra = params.get("additionalProperties", False)
    unknown = sorted(set(params) - _OBJECT_KEYS)
    if params.get("type", "object") != "object" or unknown or extra not in (False, None):
        what = unknown[0] if unknown else "additionalProperties" if extra else "type"
        raise UnsupportedConstraintError(
            f"tool {name!r}: Python-style calls need parameters as an object of named "
            f"properties ({what!r} cannot be written as keyword arguments)"
        )
    properties = params.get("properties") or {}
    required = set(params.get("required") or ())
    defs = {k: params[k] for k in ("$defs", "definitions", "$schema") if k in params}
    rules: dict[str, Node] = {}
    items: list[tuple[Node, bool]] = []
    for i, (key, schema) in enumerate(properties.items()):
        if not IDENTIFIER.fullmatch(key):
            raise UnsupportedConstraintError(
                f"tool {name!r}: property {key!r} is not a Python keyword argument name"
            )
        sub = {**schema, **defs} if isinstance(schema, Mapping) else schema
        try:
            grammar = compile_schema(sub)
        except UnsupportedConstraintError as error:
            raise UnsupportedConstraintError(f"tool {name!r}: {key}: {error}") from None
        p = f"{prefix}a{i}-"
        rules.update({p + r: pythonized(renamed(node, p)) for r, node in grammar.rules.items()})
        items.append((seq(lit(key + "="), Ref(p + grammar.start)), key in required))
    missing = sorted(required - set(properties))
    if missing:
        raise UnsupportedConstraintError(f"tool {name!r}: required {missing[0]!r} has no schema")
    sep = seq(lit(","), opt(lit(" ")))
    # after[i]: items i.. once something was written (each item led by a separator);
    # first[i]: items i.. with nothing written yet.
    after: Node = seq()
    first: Node = seq()
    for item, needed in reversed(items):
        led = seq(sep, item)
        new_after = seq(led, after) if needed else seq(opt(led), after)
        first = seq(item, after) if needed else alt(seq(item, after), first)
        after = new_after
    return rules, first


def pythonized(node: Node) -> Node:
    """`node` with JSON's `true` / `false` / `null` literals spelled as Python's."""
    if node in _LITERAL_NODES:
        return _LITERAL_NODES[node]
    if isinstance(node, Seq):
        return Seq(tuple(pythonized(item) for item in node.items))
    if isinstance(node, Alt):
        return Alt(tuple(pythonized(item) for item in node.items))
    if isinstance(node, Repeat):
        return Repeat(pythonized(node.item), node.min, node.max)
    return node


def python_value(value: Any) -> str:
    """A JSON value as a Python literal (strings in double quotes, as JSON writes them)."""
    if value is None or isinstance(value, bool):
        return PYTHON_LITERALS[json.dumps(value)]
    if isinstance(value, list):
        return "[" + ", ".join(python_value(v) for v in value) + "]"
    if isinstance(value, dict):
        pairs = (
            f"{json.dumps(k, ensure_ascii=False)}: {python_value(v)}" for k, v in value.items()
        )
        return "{" + ", ".join(pairs) + "}"
    return json.dumps(value, ensure_ascii=False)


def python_arguments(arguments: str) -> str:
    """JSON arguments text as keyword arguments (text that is not a JSON object: as it is)."""
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError:
        return arguments
    if not isinstance(value, dict) or not all(IDENTIFIER.fullmatch(k) for k in value):
        return arguments
    return ", ".join(f"{k}={python_value(v)}" for k, v in value.items())


def json_arguments(text: str) -> str | None:
    """Keyword arguments text (what is between a call's parentheses) as JSON object text, or
    None if it is not keyword arguments of literals."""
    try:
        call = ast.parse(f"f({text})", mode="eval").body
    except SyntaxError:
        return None
    if not isinstance(call, ast.Call) or call.args:
        return None
    out: dict[str, Any] = {}
    for keyword in call.keywords:
        if keyword.arg is None:
            return None
        segment = ast.get_source_segment(f"f({text})", keyword.value)
        value = _json_value(segment) if segment is not None else None
        if value is _INVALID:
            return None
        out[keyword.arg] = value
    return json.dumps(out, ensure_ascii=False)


_INVALID = object()


def _json_value(segment: str) -> Any:
    """A value as JSON reads it once Python's literals are JSON's (so JSON escapes mean what
    they do in JSON); Python-only spellings (single quotes, tuples) through `literal_eval`."""
    try:
        return json.loads(_jsonish(segment))
    except json.JSONDecodeError:
        pass
    try:
        value = ast.literal_eval(segment)
    except (ValueError, SyntaxError):
        return _INVALID
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return _INVALID


def _jsonish(segment: str) -> str:
    """`True` / `False` / `None` outside strings as `true` / `false` / `null`."""
    out, i, quote = [], 0, None
    while i < len(segment):
        c = segment[i]
        if quote:
            out.append(c)
            if c == "\\":
                out.append(segment[i + 1 : i + 2])
                i += 1
            elif c == quote:
                quote = None
            i += 1
            continue
        if c in "\"'":
            quote = c
            out.append(c)
            i += 1
            continue
        word = IDENTIFIER.match(segment, i)
        if word:
            text = word.group(0)
            out.append({v: k for k, v in PYTHON_LITERALS.items()}.get(text, text))
            i = word.end()
            continue
        out.append(c)
        i += 1
    return "".join(out)
