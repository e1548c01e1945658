"""JSON Schema keywords: which are handled or annotations, how each keyword's value is read.

Every reader checks the value's shape and raises `refuse(...)` (an `UnsupportedConstraintError`)
naming the keyword; `drop_trivial` is the keyword policy (unknown keywords refused, applicators
that have no effect dropped). `canonical` is the one spelling of a JSON value used to compare
`const`/`enum` values and to write them. Limits on what is compiled live here too.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any
from urllib.parse import unquote

from .ir import UnsupportedConstraintError

MAX_COUNT = 1_000  # minItems/maxItems/minProperties/maxProperties and prefixItems above: refused
MAX_PREFIX = 100  # prefixItems above: refused
MAX_LENGTH = 65_535  # minLength/maxLength above: refused (a counted repeat: ~0.1 s to build)
MAX_STATES = 20_000  # automaton states when combining pattern/format/length, or counting members
MAX_DEPTH = 32  # nested $ref/allOf merges
MAX_UNIQUE = 8  # uniqueItems over enum/const items: 2^n subsets

ANNOTATIONS = frozenset(
    {
        "title", "description", "default", "examples", "$comment", "deprecated", "readOnly",
        "writeOnly", "contentMediaType", "contentEncoding", "contentSchema", "$schema", "$id",
        "$anchor", "$dynamicAnchor", "$recursiveAnchor", "$vocabulary", "$defs", "definitions",
        "discriminator", "example", "externalDocs", "xml",  # OpenAPI annotations
    }
)  # fmt: skip
HANDLED = frozenset(
    {
        "type", "enum", "const", "nullable", "$ref", "allOf", "anyOf", "oneOf", "not", "if",
        "then", "else", "minLength", "maxLength", "pattern", "format", "minimum", "maximum",
        "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "items", "prefixItems", "minItems",
        "maxItems", "uniqueItems", "contains", "minContains", "maxContains", "properties",
        "required", "additionalProperties", "minProperties", "maxProperties", "patternProperties",
        "propertyNames", "dependentRequired", "dependentSchemas", "unevaluatedProperties",
        "unevaluatedItems",
    }
)  # fmt: skip
TYPE_KINDS = {
    "null": {"null"},
    "boolean": {"boolean"},
    "object": {"object"},
    "array": {"array"},
    "string": {"string"},
    "integer": {"integer"},
    "number": {"integer", "number"},  # kind "number": numbers with a nonzero fraction
}
ALL_KINDS = frozenset().union(*TYPE_KINDS.values())
UNEVALUATED = {"unevaluatedProperties": "additionalProperties", "unevaluatedItems": "items"}
APPLICATORS = frozenset(
    {"$ref", "allOf", "anyOf", "oneOf", "not", "if", "then", "else", "dependentSchemas", "contains"}
)


def refuse(message: str) -> UnsupportedConstraintError:
    return UnsupportedConstraintError(f"JSON Schema: {message}")


def drop_trivial(s: dict) -> dict | bool:
    """Drop the applicators whose effect here is nil, refuse the others.

    `s` holds only handled keywords and annotations (`Dialect.prepare` dropped the rest)."""
    out = dict(s)
    if "not" in out:
        v = out.pop("not")
        if v is True or (isinstance(v, dict) and not validates(v)):
            return False
        if isinstance(v, dict) and set(v) - ANNOTATIONS == {"type"}:
            banned = schema_kinds(v)
            if "integer" in banned and "number" not in banned:
                raise refuse("'not' {'type': 'integer'} (non-integer numbers) is not supported")
            out["type"] = type_names(schema_kinds(out) - banned)
        elif v is not False:
            complement = negation(v)
            if complement is None:
                raise refuse(
                    "'not' is supported only where the complement is expressible ('type', "
                    "'required', one number bound, 'properties' of those)"
                )
            if not complement:
                return False
            out["allOf"] = [*out.get("allOf", []), {"anyOf": complement}]
    if "if" in out and ("then" in out or "else" in out):
        raise refuse("'if'/'then'/'else' is not supported")
    for k in ("if", "then", "else", "minContains", "maxContains"):  # inert on their own
        out.pop(k, None)
    if "contains" in out:
        raise refuse("'contains' is not supported")
    if out.get("propertyNames", True) is True or (
        isinstance(out.get("propertyNames"), dict) and not validates(out["propertyNames"])
    ):
        out.pop("propertyNames", None)  # otherwise kept: objects check names against it
    for k in ("unevaluatedProperties", "unevaluatedItems"):
        v = out.pop(k, True)
        if not (v is True or (isinstance(v, dict) and not validates(v))):
            raise refuse(f"{k!r} is not supported")
    for k in ("patternProperties", "dependentRequired", "dependentSchemas"):
        v = out.pop(k, {})
        if not isinstance(v, dict):
            raise refuse(f"{k!r} must be an object")
        if k == "patternProperties":  # a trivial entry still exempts names from additional*
            trivial = all(x is True or x == {} for x in v.values())
            if v and not (trivial and out.get("additionalProperties", True) in (True, {})):
                out[k] = v
            continue
        v = {n: x for n, x in v.items() if not (x in (True, []) or x == {})}
        if v:
            out[k] = v
    return out


def nullable(s: dict) -> dict:
    """OpenAPI `nullable: true` adds "null" to `type`."""
    if "nullable" not in s:
        return s
    out = {k: v for k, v in s.items() if k != "nullable"}
    if s["nullable"] not in (True, False):
        raise refuse("'nullable' must be a boolean")
    if s["nullable"] and "type" in out:
        types = [out["type"]] if isinstance(out["type"], str) else list(out["type"])
        out["type"] = [*types, "null"]
    return out


def unevaluated(s: dict) -> dict:
    """Without in-place applicators, `unevaluated*` acts as `additionalProperties`/`items`."""
    if not any(k in s for k in UNEVALUATED):
        return s
    out = dict(s)
    for k in UNEVALUATED:
        if out.get(k, False) is True or (isinstance(out.get(k), dict) and not validates(out[k])):
            del out[k]
    if any(k in out for k in APPLICATORS):
        return out
    for k, own in UNEVALUATED.items():
        if k in out:
            value = out.pop(k)
            out.setdefault(own, value)
    return out


def validates(s: dict) -> bool:
    return any(k not in ANNOTATIONS for k in s)


def schema_kinds(s: dict) -> set[str]:
    t = s.get("type")
    if t is None:
        return set(ALL_KINDS)
    names = [t] if isinstance(t, str) else t
    if not isinstance(names, list | tuple) or any(n not in TYPE_KINDS for n in names):
        raise refuse(f"'type' {t!r} is not a JSON Schema type")
    return set().union(*(TYPE_KINDS[n] for n in names))


def type_names(kinds: set[str]) -> list[str]:
    names = [t for t in ("null", "boolean", "object", "array", "string") if t in kinds]
    return names + (["number"] if "number" in kinds else ["integer"] * ("integer" in kinds))


def value_kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "integer" if v.is_integer() else "number"
    kinds = {str: "string", list: "array", dict: "object"}
    for cls, kind in kinds.items():
        if isinstance(v, cls):
            return kind
    raise refuse(f"{v!r} is not a JSON value")


def pointer(ref: Any) -> list[str] | str:
    """The JSON pointer tokens of a `#/...` reference, or the name of a `#name` anchor."""
    if not isinstance(ref, str) or not ref.startswith("#"):
        raise refuse(f"$ref {ref!r}: only references inside the document ('#...') are supported")
    fragment = unquote(ref[1:])
    if not fragment:
        return []
    if not fragment.startswith("/"):
        return fragment
    return [t.replace("~1", "/").replace("~0", "~") for t in fragment[1:].split("/")]


DATA = frozenset({"enum", "const", "default", "examples", "example"})  # JSON values, not schemas


def has_nested_id(s: Any, keys: tuple[str, ...] = ("$id",), top: bool = True) -> bool:
    """Does a subschema below the root set a base URI (an id that is not just a fragment)?"""
    if isinstance(s, dict):
        ids = [s.get(k) for k in keys]
        if not top and any(isinstance(i, str) and not i.startswith("#") for i in ids):
            return True
        return any(has_nested_id(v, keys, False) for k, v in s.items() if k not in DATA)
    return isinstance(s, list) and any(has_nested_id(v, keys, False) for v in s)


def anchors(s: Any, keys: tuple[str, ...], out: dict[str, Any] | None = None) -> dict[str, Any]:
    """`$anchor` names (and fragment ids, `{"$id": "#name"}`) -> their subschemas."""
    out = {} if out is None else out
    if isinstance(s, dict):
        names = [s.get("$anchor")] + [
            s[k][1:] for k in keys if isinstance(s.get(k), str) and s[k].startswith("#")
        ]
        for name in names:
            if isinstance(name, str) and name:
                out.setdefault(name, s)
        for k, v in s.items():
            if k not in DATA:
                anchors(v, keys, out)
    elif isinstance(s, list):
        for v in s:
            anchors(v, keys, out)
    return out


def finds(s: Any, key: str) -> bool:
    if isinstance(s, dict):
        return key in s or any(finds(v, key) for v in s.values())
    return isinstance(s, list) and any(finds(v, key) for v in s)


def number_value(v: Any, k: str) -> int | float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise refuse(f"{k!r} must be a number")
    return v


def decimal_value(v: Any, k: str) -> Decimal:
    v = number_value(v, k)
    return Decimal(v) if isinstance(v, int) else Decimal(repr(v))


def count_value(s: dict, k: str, limit: int) -> int | None:
    if k not in s:
        return None
    v = number_value(s[k], k)
    if v < 0 or v != int(v):
        raise refuse(f"{k!r} must be a non-negative integer")
    if v > limit:
        raise refuse(f"{k!r} above {limit} is not supported")
    return int(v)


def string_list(v: Any, k: str) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise refuse(f"{k!r} must be an array of strings")
    return v


def string_tuple(v: Any, k: str) -> tuple[str, ...]:
    """A keyword that merging may turn into several values (pattern, format)."""
    items = (v,) if isinstance(v, str) else v
    if not isinstance(items, tuple) or not all(isinstance(x, str) for x in items):
        raise refuse(f"{k!r} must be a string")
    return items


def property_key(name: Any) -> str:
    if not isinstance(name, str):
        raise refuse("property names must be strings")
    return name


def canonical(v: Any, *, plain: bool = False) -> str:
    """Compact JSON; equal JSON values (1 == 1.0) give equal text unless `plain` keeps key order.

    Numbers are plain decimals (the spelling `number_literal` and integers accept).
    """
    if isinstance(v, bool) or v is None or isinstance(v, str):
        if isinstance(v, str) and any(0xD800 <= ord(c) <= 0xDFFF for c in v):
            raise refuse("strings with lone surrogates are not supported")
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, int | float):
        return plain_decimal(v)
    if isinstance(v, list | tuple):
        return "[" + ",".join(canonical(x, plain=plain) for x in v) + "]"
    if isinstance(v, dict):
        items = [(canonical(property_key(k)), canonical(x, plain=plain)) for k, x in v.items()]
        return "{" + ",".join(f"{k}:{x}" for k, x in (items if plain else sorted(items))) + "}"
    raise refuse(f"{v!r} is not a JSON value")


def string_literal(v: str) -> str:
    return canonical(v)


def plain_decimal(v: int | float) -> str:
    if isinstance(v, float) and not math.isfinite(v):
        raise refuse(f"{v!r} is not a JSON number")
    text = f"{Decimal(v) if isinstance(v, int) else Decimal(repr(v)):f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("0", "-0") else text


NEGATABLE_BOUNDS = {
    "minimum": "exclusiveMaximum",
    "exclusiveMinimum": "maximum",
    "maximum": "exclusiveMinimum",
    "exclusiveMaximum": "minimum",
}


def negation(s: Any) -> list[Any] | None:
    """Schemas whose union is exactly what `s` rejects, or None when that is not expressible.

    `s` is a conjunction, so its complement is the union of its keywords' complements, each
    over the values that keyword constrains: `type` (the other types; not "integer" alone, whose
    complement holds non-integer numbers), `required` (objects missing a name), one number bound
    (the numbers past it), `properties` (objects whose property holds a value its schema rejects,
    recursively)."""
    if s is True or s is False:
        return [] if s is True else [True]
    if not isinstance(s, dict):
        return None
    out: list[Any] = []
    for k in set(s) - ANNOTATIONS:
        v = s[k]
        if k == "type":
            kinds = schema_kinds(s)
            if "integer" in kinds and "number" not in kinds:
                return None
            if ALL_KINDS - kinds:
                out.append({"type": type_names(set(ALL_KINDS - kinds))})
        elif k == "required":
            names = dict.fromkeys(string_list(v, "required"))
            out += [{"type": "object", "properties": {n: False}} for n in names]
        elif k in NEGATABLE_BOUNDS:  # other values pass a number bound
            out.append({"type": "number", NEGATABLE_BOUNDS[k]: number_value(v, k)})
        elif k == "properties" and isinstance(v, dict):
            for name, sub in v.items():
                rejected = negation(sub)
                if rejected is None:
                    return None
                if rejected:
                    prop = {"anyOf": rejected}
                    out.append({"type": "object", "required": [name], "properties": {name: prop}})
        else:
            return None
    return out
