"""JSON Schema (draft 2020-12) -> grammar IR: the JSON texts that are valid instances.

`schema_grammar(schema)` gives a `Grammar` whose language is the set of JSON texts (UTF-8, no
leading or trailing whitespace) valid under `schema`, or raises `UnsupportedConstraintError` naming
the keyword it cannot honour exactly. No validation keyword is ever silently dropped; annotations
(title, description, default, examples, OpenAPI's discriminator, ...) are ignored.

How keywords compile: `allOf`, and `$ref`/`anyOf`/`oneOf` siblings, are merged keyword by keyword
(or refused); `anyOf` is alternation; `oneOf` only when its branches are provably disjoint
(different types, different constants, or a required property with disjoint constants); each
referenced schema is one rule, so recursion works; `enum`/`const` beside other keywords keep the
values the rest accepts. Strings with `pattern`/`format` and length bounds are intersected as
automata. Number bounds are exact for integers, and for other numbers only when the bound is 0
(others cannot be exact: `1e-3` style spellings make the language non-regular). Formats: date,
time, date-time (real calendar, leap seconds only at 23:59:60 UTC), uuid, ipv4, ipv6, email,
uri, uri-reference, json-pointer, relative-json-pointer, duration.

Deliberate narrowings (valid instances that are not in the language):

- object members appear in declared order: `properties` in order, then `required` names missing from
  `properties`, then additional properties (merged `allOf` branches: first branch's order first);
- integer values (type `integer`, `multipleOf: 1`, integer `enum`/`const` values) are spelled as
  integers, `-?(0|[1-9][0-9]*)`: not `1.0` or `1e0`, which JSON Schema also counts as integers;
- `const`/`enum` values and property names are spelled as `json.dumps(v, ensure_ascii=False)`
  spells them (non-integer numbers: plain decimal, or json.dumps' exponent form);
- in `pattern`/`format` strings and additional property names, characters use only the escapes
  JSON requires (`\\"`, `\\\\`, control characters); unconstrained strings accept every escape;
- lone surrogate escapes (`\\ud800` alone) are never accepted.

Wider than valid: email addresses longer than RFC 5321's limits; additional property names are not
checked against each other for duplicates (JSON parsers keep the last).
"""

from __future__ import annotations

import functools
import itertools
import json
import math
from collections.abc import Iterable
from decimal import Decimal
from fractions import Fraction
from typing import Any
from urllib.parse import unquote

from .ir import (
    EMPTY,
    MAX_CODE_POINT,
    NOTHING,
    SURROGATES,
    Alt,
    Chars,
    Grammar,
    Node,
    Ref,
    Repeat,
    Seq,
    UnsupportedConstraintError,
    alt,
    chars,
    choice,
    lit,
    normalize_ranges,
    opt,
    plus,
    seq,
    star,
    subtract,
)
from .regex import regex_node

MAX_COUNT = 1_000  # minItems/maxItems/minProperties/maxProperties and prefixItems above: refused
MAX_PREFIX = 100  # prefixItems above: refused
MAX_LENGTH = 10_000  # minLength/maxLength above: refused
MAX_STATES = 20_000  # automaton states when combining pattern/format/length, or counting members
MAX_DEPTH = 32  # nested $ref/allOf merges

ANNOTATIONS = frozenset(
    {
        "title", "description", "default", "examples", "$comment", "deprecated", "readOnly",
        "writeOnly", "contentMediaType", "contentEncoding", "contentSchema", "$schema", "$id",
        "$anchor", "$dynamicAnchor", "$defs", "definitions",
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
DIALECTS = {
    "https://json-schema.org/draft/2020-12/schema": False,
    "https://json-schema.org/draft/2019-09/schema": False,
    "http://json-schema.org/draft-07/schema": True,  # True: `$ref` siblings are ignored there
    "http://json-schema.org/draft-06/schema": True,
    "http://json-schema.org/draft-04/schema": True,
}
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
ALL_CHARS = ((0, MAX_CODE_POINT),)
SHORT_ESCAPES = {0x22: '\\"', 0x5C: "\\\\", 0x08: "\\b", 0x0C: "\\f", 0x0A: "\\n", 0x0D: "\\r"}
SHORT_ESCAPES[0x09] = "\\t"
NEEDS_ESCAPE = ((0, 0x1F), (0x22, 0x22), (0x5C, 0x5C), SURROGATES)
DIGIT = chars([(0x30, 0x39)])
NONZERO = chars([(0x31, 0x39)])


def schema_grammar(
    schema: dict | bool, *, whitespace: str = "compact", max_whitespace: int = 4
) -> Grammar:
    """The JSON texts valid under `schema` (draft 2020-12), in the module's documented spelling.

    `whitespace="compact"`: no whitespace outside strings. `"bounded"`: 0..`max_whitespace` of
    space, tab or newline between any two structural tokens. Raises `UnsupportedConstraintError`
    (naming the keyword) for what cannot be compiled exactly, `ValueError` for a bad `whitespace`.
    """
    if whitespace == "compact":
        ws: Node = EMPTY
    elif whitespace == "bounded":
        if not isinstance(max_whitespace, int) or max_whitespace < 0:
            raise ValueError("max_whitespace must be a non-negative integer")
        ws = Repeat(chars([(9, 10), (32, 32)]), 0, max_whitespace) if max_whitespace else EMPTY
    else:
        raise ValueError(f"whitespace must be 'compact' or 'bounded', not {whitespace!r}")
    try:
        return _Compiler(schema, ws).compile()
    except RecursionError:
        raise _refuse("the schema nests (or refers to itself) too deeply") from None


def json_value_grammar(*, whitespace: str = "compact", max_whitespace: int = 4) -> Grammar:
    """Any JSON value (the `true` schema)."""
    return schema_grammar(True, whitespace=whitespace, max_whitespace=max_whitespace)


def _refuse(message: str) -> UnsupportedConstraintError:
    return UnsupportedConstraintError(f"JSON Schema: {message}")


class _Compiler:
    def __init__(self, schema: Any, ws: Node) -> None:
        self.schema = schema
        self.ws = ws
        self.sep = seq(ws, lit(","), ws)
        self.colon = seq(ws, lit(":"), ws)
        self.rules: dict[str, Node] = {}
        self.pending: dict[str, tuple[Node, Node, list[Any]]] = {}  # enum rule -> (lits, rest)
        self.memo: dict[Any, Node] = {}
        self.ids = itertools.count()
        self.legacy = False

    def compile(self) -> Grammar:
        if isinstance(self.schema, dict):
            self.legacy = _dialect(self.schema.get("$schema"))
            if _has_nested_id(self.schema) and _finds(self.schema, "$ref"):
                raise _refuse("$id in a subschema changes $ref resolution (not supported)")
        elif not isinstance(self.schema, bool):
            raise _refuse("a schema must be an object or a boolean")
        self.rules["root"] = NOTHING
        self.rules["root"] = self.node(self.schema)
        self._finalize_enums()
        _check_left_recursion(self.rules)
        if not _productive(self.rules)["root"]:
            raise _refuse("no JSON value is valid under this schema")
        return Grammar(dict(self.rules), "root")

    def fresh(self, hint: str) -> str:
        return f"{hint}.{next(self.ids)}"

    def share(self, node: Node, hint: str) -> Node:
        """`node`, or a reference to a new rule holding it when it is big (rules are built once)."""
        if _size(node, 24) < 24:
            return node
        name = self.fresh(hint)
        self.rules[name] = node
        return Ref(name)

    # ---- schemas -------------------------------------------------------------------------------

    def node(self, s: Any) -> Node:
        if s is True:
            return self.any_value()
        if s is False:
            return NOTHING
        if not isinstance(s, dict):
            raise _refuse("a schema must be an object or a boolean")
        s = self._drop_trivial(_unevaluated(_nullable(s)))
        if s is False:
            return NOTHING
        if "$ref" in s:
            rest = {k: v for k, v in s.items() if k != "$ref"}
            if not _validates(rest):
                return self.ref(s["$ref"])
            if self.legacy:
                raise _refuse("$ref with sibling keywords under a pre-2019 $schema")
            return self._merged(s)
        if "allOf" in s:
            return self.node(self.merge_all(s, 0))
        for key in ("anyOf", "oneOf"):
            if key in s:
                return self._union(s, key)
        if "const" in s or "enum" in s:
            return self._enum(s)
        return self._typed(s)

    def _drop_trivial(self, s: dict) -> dict | bool:
        """Check keywords; drop the applicators whose effect here is nil, refuse the others."""
        if "$schema" in s:
            _dialect(s["$schema"])
        for k in s:
            if k not in HANDLED and k not in ANNOTATIONS:
                raise _refuse(f"unsupported keyword {k!r}")
        out = dict(s)
        if "not" in out:
            v = out.pop("not")
            if v is True or (isinstance(v, dict) and not _validates(v)):
                return False
            if isinstance(v, dict) and set(v) - ANNOTATIONS == {"type"}:
                banned = _kinds(v)
                if "integer" in banned and "number" not in banned:
                    raise _refuse(
                        "'not' {'type': 'integer'} (non-integer numbers) is not supported"
                    )
                out["type"] = _type_names(_kinds(out) - banned)
            elif v is not False:
                raise _refuse("'not' is supported only with a trivial schema or a 'type'")
        if "if" in out and ("then" in out or "else" in out):
            raise _refuse("'if'/'then'/'else' is not supported")
        for k in ("if", "then", "else", "minContains", "maxContains"):  # inert on their own
            out.pop(k, None)
        if "contains" in out:
            raise _refuse("'contains' is not supported")
        for k in ("propertyNames", "unevaluatedProperties", "unevaluatedItems"):
            v = out.pop(k, True)
            if not (v is True or (isinstance(v, dict) and not _validates(v))):
                raise _refuse(f"{k!r} is not supported")
        if out.get("patternProperties") and out.get("additionalProperties", True) not in (True, {}):
            raise _refuse("'patternProperties' with 'additionalProperties' is not supported")
        for k in ("patternProperties", "dependentRequired", "dependentSchemas"):
            v = out.pop(k, {})
            if not isinstance(v, dict) or any(
                x not in (True, [], {}) and (not isinstance(x, dict) or _validates(x))
                for x in v.values()
            ):
                raise _refuse(f"{k!r} is not supported")
        return out

    def ref(self, ref: Any) -> Node:
        pointer = _pointer(ref)
        if not pointer:
            return Ref("root")
        name = "def:" + "/".join(pointer)
        if name not in self.rules:
            self.rules[name] = NOTHING
            self.rules[name] = self.node(self.resolve(ref))
        return Ref(name)

    def resolve(self, ref: Any) -> Any:
        target = self.schema
        for token in _pointer(ref):
            if isinstance(target, dict) and token in target:
                target = target[token]
            elif isinstance(target, list) and token.isdigit() and int(token) < len(target):
                target = target[int(token)]
            else:
                raise _refuse(f"$ref {ref!r} does not resolve inside the document")
        return target

    def _merged(self, s: dict) -> Node:
        """A `$ref` with sibling keywords: the target merged with them, one rule per content."""
        key = ("merged", json.dumps(s, sort_keys=True, default=list))
        if key not in self.memo:
            name = self.fresh("merged")
            self.memo[key] = Ref(name)
            self.rules[name] = NOTHING
            rest = {k: v for k, v in s.items() if k != "$ref"}
            self.rules[name] = self.node(self.merge(self.resolve(s["$ref"]), rest, 0))
        return self.memo[key]

    def _union(self, s: dict, key: str) -> Node:
        branches = s[key]
        if not isinstance(branches, list) or not branches:
            raise _refuse(f"{key!r} must be a non-empty array")
        rest = {k: v for k, v in s.items() if k != key}
        if _validates(rest):
            branches = [self.merge(rest, b, 0) for b in branches]
        if key == "oneOf":
            branches = [b for b in branches if self.kinds_of(b)]
            for i, j in itertools.combinations(range(len(branches)), 2):
                if not self.disjoint(branches[i], branches[j]):
                    raise _refuse(f"'oneOf' branches {i} and {j} may overlap (cannot prove not)")
        return alt(*(self.node(b) for b in branches))

    def _enum(self, s: dict) -> Node:
        values = s.get("enum", [])
        if not isinstance(values, list):
            raise _refuse("'enum' must be an array")
        if "const" in s:
            c = _canonical(s["const"])
            values = [s["const"]] if "enum" not in s else [v for v in values if _canonical(v) == c]
        values = list({_canonical(v): v for v in values}.values())
        rest = {k: v for k, v in s.items() if k not in ("enum", "const")}
        kinds = _kinds(rest)
        values = [v for v in values if _kind(v) in kinds]
        if set(rest) - ANNOTATIONS <= {"type"}:
            return alt(*(self.literal(v) for v in values))
        rest["type"] = _type_names({_kind(v) for v in values})  # the rest matters only there
        # Keep the values the rest of the schema accepts; decided once every rule is complete.
        name = self.fresh("enum")
        self.rules[name] = NOTHING
        self.pending[name] = (alt(*(self.literal(v) for v in values)), self.node(rest), values)
        return Ref(name)

    def _finalize_enums(self) -> None:
        for name, (_, rest, values) in self.pending.items():
            keep = [v for v in values if self.matches(rest, _canonical(v, plain=True))]
            self.rules[name] = alt(*(self.literal(v) for v in keep))
        self.pending.clear()

    def _typed(self, s: dict) -> Node:
        kinds = _kinds(s)
        parts = []
        if "null" in kinds:
            parts.append(lit("null"))
        if "boolean" in kinds:
            parts.append(alt(lit("true"), lit("false")))
        if kinds & {"integer", "number"}:
            parts.append(self.number(s, fractional="number" in kinds))
        if "string" in kinds:
            parts.append(self.string(s))
        if "array" in kinds:
            parts.append(self.array(s))
        if "object" in kinds:
            parts.append(self.object(s))
        return alt(*parts)

    # ---- merging (allOf, $ref siblings, anyOf/oneOf siblings) ----------------------------------

    def merge_all(self, s: dict, depth: int) -> dict | bool:
        branches = s["allOf"]
        if not isinstance(branches, list) or not branches:
            raise _refuse("'allOf' must be a non-empty array")
        out: dict | bool = {k: v for k, v in s.items() if k != "allOf"}
        for b in branches:
            out = self.merge(out, b, depth + 1)
        return out

    def merge(self, a: Any, b: Any, depth: int) -> dict | bool:
        """A schema whose instances are those valid under both, or refuse the keyword."""
        if depth > MAX_DEPTH:
            raise _refuse("$ref/allOf nest too deeply to merge")
        if a is False or b is False:
            return False
        if a is True or b is True:
            return b if a is True else a
        if not isinstance(a, dict) or not isinstance(b, dict):
            raise _refuse("a schema must be an object or a boolean")
        a, b = _unevaluated(_nullable(a)), _unevaluated(_nullable(b))
        if any(k in x for x in (a, b) for k in _UNEVALUATED):
            raise _refuse("'unevaluatedProperties'/'unevaluatedItems' beside applicators")
        if self.legacy and any("$ref" in x and len(set(x) - ANNOTATIONS) > 1 for x in (a, b)):
            raise _refuse("$ref with sibling keywords under a pre-2019 $schema")
        if "allOf" in a or "allOf" in b:
            x = self.merge_all(a, depth) if "allOf" in a else a
            y = self.merge_all(b, depth) if "allOf" in b else b
            return self.merge(x, y, depth + 1)
        if "$ref" in a and "$ref" in b and a["$ref"] != b["$ref"]:
            rest = {k: v for k, v in b.items() if k != "$ref"}
            return self.merge(a, self.merge(self.resolve(b["$ref"]), rest, depth + 1), depth + 1)
        out = {k: v for k, v in a.items() if k not in ANNOTATIONS}
        for k, v in b.items():
            if k in ANNOTATIONS or k in _JOINT:
                continue
            if k not in out:
                out[k] = v
            elif k == "const" and _canonical(out[k]) != _canonical(v):
                return False
            else:
                out[k] = self._merge_keyword(k, out[k], v, depth)
        if {"type"} & out.keys() and not _kinds(out):
            return False
        if _JOINT_OBJECT & (a.keys() | b.keys()):
            pa, pb = a.get("properties", {}), b.get("properties", {})
            xa, xb = a.get("additionalProperties", True), b.get("additionalProperties", True)
            if not isinstance(pa, dict) or not isinstance(pb, dict):
                raise _refuse("'properties' must be an object")
            names = [*pa, *(k for k in pb if k not in pa)]
            out["properties"] = {
                k: self.merge(pa.get(k, xa), pb.get(k, xb), depth + 1) for k in names
            }
            out["additionalProperties"] = self.merge(xa, xb, depth + 1)
        if _JOINT_ARRAY & (a.keys() | b.keys()):
            pa, pb = a.get("prefixItems", []), b.get("prefixItems", [])
            xa, xb = a.get("items", True), b.get("items", True)
            if not all(isinstance(x, list) for x in (pa, pb)) or isinstance(xa, list | tuple):
                raise _refuse("'prefixItems' must be an array and 'items' a schema")
            out["prefixItems"] = [
                self.merge(pa[i] if i < len(pa) else xa, pb[i] if i < len(pb) else xb, depth + 1)
                for i in range(max(len(pa), len(pb)))
            ]
            out["items"] = self.merge(xa, xb, depth + 1)
        return out

    def _merge_keyword(self, k: str, u: Any, v: Any, depth: int) -> Any:
        if k == "type":
            return _type_names(_kinds({"type": u}) & _kinds({"type": v}))
        if k in ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties"):
            return max(_number(u, k), _number(v, k))
        if k in ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties"):
            return min(_number(u, k), _number(v, k))
        if k == "required":
            return list(dict.fromkeys([*_strings(u, k), *_strings(v, k)]))
        if k == "enum":
            allowed = {_canonical(x) for x in v}
            return [x for x in u if _canonical(x) in allowed]
        if k in ("pattern", "format"):
            return tuple(dict.fromkeys([*_str_tuple(u, k), *_str_tuple(v, k)]))
        if k == "uniqueItems":
            return bool(u) or bool(v)
        if k == "anyOf" and isinstance(u, list) and isinstance(v, list):
            if len(u) * len(v) > 64:
                raise _refuse("too many 'anyOf' combinations to merge")
            return [self.merge(x, y, depth + 1) for x in u for y in v]
        if _canonical(u) == _canonical(v):
            return u
        raise _refuse(f"cannot merge two different {k!r} (allOf/$ref siblings)")

    # ---- oneOf disjointness (a sufficient test) ------------------------------------------------

    def view(self, s: Any) -> Any:
        """`s` with top-level `$ref`/`allOf` merged in (True when that nests too deep)."""
        for _ in range(MAX_DEPTH):
            if not isinstance(s, dict) or ("$ref" not in s and "allOf" not in s):
                return s
            if "$ref" in s:
                rest = {k: v for k, v in s.items() if k != "$ref"}
                s = self.merge(self.resolve(s["$ref"]), rest, 0)
            else:
                s = self.merge_all(s, 0)
        return True

    def kinds_of(self, s: Any, depth: int = 0) -> set[str]:
        """A superset of the kinds of values valid under `s`."""
        s = self.view(s)
        if depth > MAX_DEPTH:
            return set(ALL_KINDS)
        if not isinstance(s, dict):
            return set() if s is False else set(ALL_KINDS)
        s = _nullable(s)
        kinds = _kinds(s)
        if "const" in s:
            kinds &= {_kind(s["const"])}
        if isinstance(s.get("enum"), list):
            kinds &= {_kind(v) for v in s["enum"]}
        for key in ("anyOf", "oneOf"):
            if isinstance(s.get(key), list):
                kinds &= set().union(*(self.kinds_of(b, depth + 1) for b in s[key]))
        return kinds

    def values_of(self, s: Any) -> set[str] | None:
        s = self.view(s)
        if not isinstance(s, dict) or ("const" not in s and "enum" not in s):
            return set() if s is False else None
        out = {_canonical(v) for v in s.get("enum", [s.get("const")])}
        return out & {_canonical(s["const"])} if "const" in s else out

    def disjoint(self, x: Any, y: Any) -> bool:
        vx, vy = self.values_of(x), self.values_of(y)
        if vx is not None and vy is not None:
            return not vx & vy
        common = self.kinds_of(x) & self.kinds_of(y)
        if not common:
            return True
        if common != {"object"}:
            return False
        x, y = self.view(x), self.view(y)
        if not isinstance(x, dict) or not isinstance(y, dict):
            return False  # `true` overlaps every non-empty schema
        for a, b in ((x, y), (y, x)):
            for name in _strings(a.get("required", []), "required"):
                other = b.get("properties", {}).get(name, b.get("additionalProperties", True))
                if self.view(other) is False:
                    return True
                if name in b.get("required", []):
                    va = self.values_of(a.get("properties", {}).get(name, True))
                    vb = self.values_of(other)
                    if va is not None and vb is not None and not va & vb:
                        return True
        return False

    # ---- values --------------------------------------------------------------------------------

    def any_value(self) -> Node:
        if "json.value" not in self.rules:
            self.rules["json.value"] = NOTHING
            value = Ref("json.value")
            member = seq(self.any_string(), self.colon, value)
            self.rules["json.value"] = alt(
                lit("null"),
                lit("true"),
                lit("false"),
                self.shared_rule("json.number", _number_syntax),
                self.any_string(),
                self._sequence("[", value, "]"),
                self._sequence("{", member, "}"),
            )
        return Ref("json.value")

    def _sequence(self, open_: str, item: Node, close: str) -> Node:
        """`open_` (item (, item)*)? `close` with whitespace between tokens."""
        body = opt(seq(item, star(seq(self.sep, item)), self.ws))
        return seq(lit(open_), self.ws, body, lit(close))

    def shared_rule(self, name: str, build: Any) -> Node:
        if name not in self.rules:
            self.rules[name] = build()
        return Ref(name)

    def any_string(self) -> Node:
        return self.shared_rule(
            "json.string", lambda: seq(lit('"'), star(self.json_char()), lit('"'))
        )

    def json_char(self) -> Node:
        """One string character in any spelling JSON allows (raw, short escape, \\u, pair)."""
        return self.shared_rule("json.char", _json_char)

    def literal(self, v: Any) -> Node:
        """`v` spelled as json.dumps spells it (numbers: plain decimal, as `_number_literal`)."""
        if v is None or isinstance(v, bool):
            return lit(json.dumps(v))
        if isinstance(v, int | float):
            return _number_literal(v)
        if isinstance(v, str):
            return lit(_string_literal(v))
        if isinstance(v, list):
            items = [self.literal(x) for x in v]
        elif isinstance(v, dict):
            items = [seq(lit(_string_literal(_key(k))), self.colon, self.literal(x))
                     for k, x in v.items()]  # fmt: skip
        else:
            raise _refuse(f"{v!r} is not a JSON value")
        open_, close = ("[", "]") if isinstance(v, list) else ("{", "}")
        if not items:
            return seq(lit(open_), self.ws, lit(close))
        body = [items[0], *(seq(self.sep, x) for x in items[1:])]
        return seq(lit(open_), self.ws, *body, self.ws, lit(close))

    def matches(self, node: Node, text: str) -> bool:
        """Is `text` in the language of `node` (pending enum rules as intersections)?"""
        try:
            return len(text) in self._ends(node, text, 0, {}, set())
        except RecursionError:
            raise _refuse("an 'enum' value is too deeply nested to check") from None

    def _ends(self, node: Node, text: str, pos: int, memo: dict, active: set) -> frozenset[int]:
        key = (id(node), pos)
        if key in memo:
            return memo[key]
        if isinstance(node, Chars):
            c = ord(text[pos]) if pos < len(text) else -1
            out = frozenset([pos + 1] if any(lo <= c <= hi for lo, hi in node.ranges) else [])
        elif isinstance(node, Seq):
            cur = frozenset([pos])
            for item in node.items:
                cur = frozenset().union(*(self._ends(item, text, p, memo, active) for p in cur))
            out = cur
        elif isinstance(node, Alt):
            out = frozenset().union(*(self._ends(i, text, pos, memo, active) for i in node.items))
        elif isinstance(node, Repeat):
            cur, n = frozenset([pos]), 0
            while n < node.min and cur:
                cur = frozenset().union(
                    *(self._ends(node.item, text, p, memo, active) for p in cur)
                )
                n += 1
            seen, frontier = set(cur), cur
            while frontier and (node.max is None or n < node.max):
                nxt = set().union(*(self._ends(node.item, text, p, memo, active) for p in frontier))
                frontier, n = frozenset(nxt - seen), n + 1
                seen |= nxt
            out = frozenset(seen)
        else:
            if (node.name, pos) in active:
                return frozenset()  # left recursion: refused later by _check_left_recursion
            active.add((node.name, pos))
            if node.name in self.pending:
                lits, rest, _ = self.pending[node.name]
                out = self._ends(lits, text, pos, memo, active) & self._ends(
                    rest, text, pos, memo, active
                )
            else:
                out = self._ends(self.rules[node.name], text, pos, memo, active)
            active.discard((node.name, pos))
        memo[key] = out
        return out

    # ---- numbers -------------------------------------------------------------------------------

    def number(self, s: dict, *, fractional: bool) -> Node:
        if "multipleOf" in s:
            m = Fraction(_decimal(s["multipleOf"], "multipleOf"))
            if m <= 0 or (1 / m).denominator != 1:
                raise _refuse("'multipleOf' is supported only when every integer satisfies it")
            if fractional and m != 1:
                raise _refuse("'multipleOf' other than 1 on non-integer numbers")
            fractional = False  # multipleOf 1: integers only
        bounds = {k: Fraction(_decimal(s[k], k)) for k in _BOUNDS if k in s}
        if not fractional:
            los = [math.ceil(v) for k, v in bounds.items() if k == "minimum"]
            los += [math.floor(v) + 1 for k, v in bounds.items() if k == "exclusiveMinimum"]
            his = [math.floor(v) for k, v in bounds.items() if k == "maximum"]
            his += [math.ceil(v) - 1 for k, v in bounds.items() if k == "exclusiveMaximum"]
            lo = max(los) if los else None
            hi = min(his) if his else None
            return _integer(lo, hi)
        signs = {"neg", "zero", "pos"}
        for k, v in bounds.items():
            if v != 0:
                raise _refuse(f"{k!r} on non-integer numbers is supported only for 0")
            signs -= _SIGNS_OUT[k]
        return _signed_number(signs)

    # ---- strings -------------------------------------------------------------------------------

    def string(self, s: dict) -> Node:
        lo = _count(s, "minLength", MAX_LENGTH) or 0
        hi = _count(s, "maxLength", MAX_LENGTH)
        if hi is not None and lo > hi:
            return NOTHING
        languages = [self._pattern(p) for p in _str_tuple(s.get("pattern", ()), "pattern")]
        languages += [_format(f) for f in _str_tuple(s.get("format", ()), "format")]
        quote = lit('"')
        if not languages:
            return seq(quote, Repeat(self.json_char(), lo, hi), quote)
        if len(languages) == 1:
            a, b = _length_range(languages[0])
            if a >= lo and (hi is None or (b is not None and b <= hi)):
                return seq(quote, self.encode(languages[0]), quote)
        return seq(quote, self._product(languages, lo, hi), quote)

    def _pattern(self, pattern: str) -> Node:
        try:
            return regex_node(pattern, search=True)
        except UnsupportedConstraintError as e:
            raise _refuse(f"'pattern' {pattern!r}: {e}") from None

    def encode(self, node: Node) -> Node:
        """A decoded-character language as JSON string contents (mandatory escapes only)."""
        key = ("encode", id(node))
        if key not in self.memo:
            self.memo[key] = self.share(self._encode(node, {}), "chars")
            self.memo[("keep", id(node))] = node  # keeps id(node) unique while memoized
        return self.memo[key]

    def _encode(self, node: Node, memo: dict[int, Node]) -> Node:
        if id(node) in memo:
            return memo[id(node)]
        if isinstance(node, Chars):
            out = self.canonical_char(node.ranges)
        elif isinstance(node, Seq):
            out = seq(*(self._encode(i, memo) for i in node.items))
        elif isinstance(node, Alt):
            out = alt(*(self._encode(i, memo) for i in node.items))
        elif isinstance(node, Repeat):
            out = Repeat(self._encode(node.item, memo), node.min, node.max)
        else:
            raise _refuse("a pattern may not refer to grammar rules")
        memo[id(node)] = out
        return out

    def canonical_char(self, ranges: Iterable[tuple[int, int]]) -> Node:
        """One character from `ranges` as json.dumps(ensure_ascii=False) spells it."""
        ranges = tuple(ranges)
        if ("char", ranges) in self.memo:
            return self.memo[("char", ranges)]
        key_ranges, ranges = ranges, normalize_ranges(ranges)
        raw = subtract(ranges, NEEDS_ESCAPE)
        special = tuple(c for lo, hi in ranges for c in range(lo, min(hi, 0x1F) + 1)) + tuple(
            c for c in (0x22, 0x5C) if any(lo <= c <= hi for lo, hi in ranges)
        )
        parts: list[Node] = [Chars(raw)] if raw else []
        if special:
            key = ("escapes", special)
            if key not in self.memo:
                self.memo[key] = self.share(alt(*(_escape(c) for c in special)), "escapes")
            parts.append(self.memo[key])
        self.memo[("char", key_ranges)] = alt(*parts)
        return self.memo[("char", key_ranges)]

    def _product(self, languages: list[Node], lo: int, hi: int | None) -> Node:
        """Strings in every language with lo..hi characters, as right-linear rules."""
        nfas = [_Nfa(n) for n in languages]
        cap = hi if hi is not None else lo
        start = ((0,) * len(nfas), 0)
        ids = {start: 0}
        order = [start]
        edges: list[list[tuple[tuple[tuple[int, int], ...], int]]] = []
        accept: list[bool] = []
        for qs, count in order:
            accept.append(count >= lo and all(n.accept[q] for n, q in zip(nfas, qs, strict=True)))
            out = []
            if hi is None or count < hi:
                moves = [n.moves[q] for n, q in zip(nfas, qs, strict=True)]
                for combo in itertools.product(*moves):
                    ranges = combo[0][0]
                    for r, _ in combo[1:]:
                        ranges = _intersect(ranges, r)
                    if not ranges:
                        continue
                    target = (tuple(t for _, t in combo), min(count + 1, cap))
                    if target not in ids:
                        if len(ids) >= MAX_STATES:
                            raise _refuse(
                                "'pattern'/'format'/'minLength'/'maxLength' combine into too "
                                "large an automaton"
                            )
                        ids[target] = len(order)
                        order.append(target)
                    out.append((ranges, ids[target]))
            edges.append(out)
        live = _coreachable(accept, edges)
        if not live[0]:
            return NOTHING
        prefix = self.fresh("str")
        for q, out in enumerate(edges):
            if not live[q]:
                continue
            by_target: dict[int, list[tuple[int, int]]] = {}
            for ranges, t in out:
                if live[t]:
                    by_target.setdefault(t, []).extend(ranges)
            parts = [EMPTY] if accept[q] else []
            for t, ranges in by_target.items():
                parts.append(seq(self.canonical_char(ranges), Ref(f"{prefix}.{t}")))
            self.rules[f"{prefix}.{q}"] = alt(*parts)
        return Ref(f"{prefix}.0")

    # ---- arrays --------------------------------------------------------------------------------

    def array(self, s: dict) -> Node:
        prefix = s.get("prefixItems", [])
        items = s.get("items", True)
        if not isinstance(prefix, list) or isinstance(items, list | tuple):
            raise _refuse("'prefixItems' must be an array and 'items' a schema")
        if len(prefix) > MAX_PREFIX:
            raise _refuse(f"'prefixItems' longer than {MAX_PREFIX}")
        lo = _count(s, "minItems", MAX_COUNT) or 0
        hi = _count(s, "maxItems", MAX_COUNT)
        if s.get("uniqueItems", False) not in (False, True):
            raise _refuse("'uniqueItems' must be a boolean")
        if s.get("uniqueItems") and (hi is None or hi > 1):
            raise _refuse("'uniqueItems' is not supported (beyond maxItems <= 1)")
        if hi is not None and lo > hi:
            return NOTHING
        elems = [self.share(self.node(p), "item") for p in prefix]
        item = self.share(self.node(items), "item")

        def after(k: int) -> Node:  # the rest of an array that already has k >= 1 elements
            stop = EMPTY if k >= lo else NOTHING
            if hi is not None and k >= hi:
                return stop
            if k < len(elems):
                return alt(stop, seq(self.sep, elems[k], after(k + 1)))
            return Repeat(seq(self.sep, item), max(0, lo - k), None if hi is None else hi - k)

        first = elems[0] if elems else item
        parts = [seq(lit("["), self.ws, lit("]"))] if lo == 0 else []
        if hi != 0:
            parts.append(seq(lit("["), self.ws, first, after(1), self.ws, lit("]")))
        return alt(*parts)

    # ---- objects -------------------------------------------------------------------------------

    def object(self, s: dict) -> Node:
        props = s.get("properties", {})
        if not isinstance(props, dict):
            raise _refuse("'properties' must be an object")
        required = list(dict.fromkeys(_strings(s.get("required", []), "required")))
        extra_schema = s.get("additionalProperties", True)
        lo = _count(s, "minProperties", MAX_COUNT) or 0
        hi = _count(s, "maxProperties", MAX_COUNT)
        names = [*props, *(r for r in required if r not in props)]
        members: list[tuple[Node, bool]] = []
        for name in names:
            value = self.node(props[name] if name in props else extra_schema)
            if isinstance(value, Alt) and not value.items:
                if name in required:
                    return NOTHING
                continue
            key = lit(_string_literal(_key(name)))
            members.append((self.share(seq(key, self.colon, value), "member"), name in required))
        value = self.node(extra_schema)
        extra = None
        if not (isinstance(value, Alt) and not value.items):
            extra = self.share(seq(self._key_except(names), self.colon, value), "member")
        if hi is not None and lo > hi:
            return NOTHING
        cap = hi if hi is not None else lo  # member counts above cap are all alike
        if (len(members) + 1) * (cap + 1) > MAX_STATES:
            raise _refuse("'minProperties'/'maxProperties' with too many properties")
        prefix = self.fresh("obj")

        def state(i: int, c: int, first: bool) -> str:
            return f"{prefix}.{i}.{c}.{int(first)}"

        n = len(members)
        for c in range(cap + 1):
            for first in (True, False):
                self.rules[state(n, c, first)] = self._extras(extra, c, first, lo, hi)
        for i in reversed(range(n)):
            node, req = members[i]
            for c in range(cap + 1):
                for first in (True, False):
                    options = []
                    if hi is None or c < hi:
                        nxt = Ref(state(i + 1, min(c + 1, cap), False))
                        options.append(seq(*(() if first else (self.sep,)), node, nxt))
                    if not req:
                        options.append(Ref(state(i + 1, c, first)))
                    self.rules[state(i, c, first)] = alt(*options)
        parts = []
        if lo == 0 and not any(req for _, req in members):
            parts.append(seq(lit("{"), self.ws, lit("}")))
        parts.append(seq(lit("{"), self.ws, Ref(state(0, 0, True)), self.ws, lit("}")))
        return alt(*parts)

    def _extras(self, extra: Node | None, c: int, first: bool, lo: int, hi: int | None) -> Node:
        """Additional members after c declared ones (first: none yet, so at least one here)."""
        need, room = max(0, lo - c), None if hi is None else hi - c
        if extra is None:
            return EMPTY if need == 0 and not first else NOTHING
        if not first:
            return Repeat(seq(self.sep, extra), need, room)
        if room is not None and room < 1:
            return NOTHING
        rest = Repeat(seq(self.sep, extra), max(0, need - 1), None if room is None else room - 1)
        return seq(extra, rest)

    def _key_except(self, names: list[str]) -> Node:
        """A property name (canonical spelling) that is none of `names`."""
        trie: dict = {}
        for name in names:
            t = trie
            for ch in name:
                t = t.setdefault(ch, {})
            t[None] = {}
        tail = star(self.canonical_char(ALL_CHARS))

        def build(t: dict) -> Node:
            kids = sorted(k for k in t if k is not None)
            parts = [] if None in t else [EMPTY]
            others = subtract(ALL_CHARS, [(ord(k), ord(k)) for k in kids])
            parts.append(seq(self.canonical_char(others), tail))
            parts += [seq(self.canonical_char([(ord(k), ord(k))]), build(t[k])) for k in kids]
            return alt(*parts)

        return seq(lit('"'), build(trie), lit('"'))


_JOINT_OBJECT = frozenset({"properties", "additionalProperties"})
_JOINT_ARRAY = frozenset({"prefixItems", "items"})
_JOINT = _JOINT_OBJECT | _JOINT_ARRAY
_UNEVALUATED = {"unevaluatedProperties": "additionalProperties", "unevaluatedItems": "items"}
_APPLICATORS = frozenset(
    {"$ref", "allOf", "anyOf", "oneOf", "not", "if", "then", "else", "dependentSchemas", "contains"}
)
_BOUNDS = ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum")
_SIGNS_OUT = {
    "minimum": {"neg"},
    "exclusiveMinimum": {"neg", "zero"},
    "maximum": {"pos"},
    "exclusiveMaximum": {"pos", "zero"},
}


# ---- schema helpers ----------------------------------------------------------------------------


def _dialect(uri: Any) -> bool:
    """Whether `$schema` names a pre-2019 dialect; refuse dialects we do not know."""
    if uri is None:
        return False
    key = uri.rstrip("#") if isinstance(uri, str) else None
    if key not in DIALECTS:
        raise _refuse(f"$schema {uri!r} is not a supported dialect")
    return DIALECTS[key]


def _nullable(s: dict) -> dict:
    """OpenAPI `nullable: true` adds "null" to `type`."""
    if "nullable" not in s:
        return s
    out = {k: v for k, v in s.items() if k != "nullable"}
    if s["nullable"] not in (True, False):
        raise _refuse("'nullable' must be a boolean")
    if s["nullable"] and "type" in out:
        types = [out["type"]] if isinstance(out["type"], str) else list(out["type"])
        out["type"] = [*types, "null"]
    return out


def _unevaluated(s: dict) -> dict:
    """Without in-place applicators, `unevaluated*` acts as `additionalProperties`/`items`."""
    if not any(k in s for k in _UNEVALUATED):
        return s
    out = dict(s)
    for k in _UNEVALUATED:
        if out.get(k, False) is True or (isinstance(out.get(k), dict) and not _validates(out[k])):
            del out[k]
    if any(k in out for k in _APPLICATORS):
        return out
    for k, own in _UNEVALUATED.items():
        if k in out:
            value = out.pop(k)
            out.setdefault(own, value)
    return out


def _validates(s: dict) -> bool:
    return any(k not in ANNOTATIONS for k in s)


def _kinds(s: dict) -> set[str]:
    t = s.get("type")
    if t is None:
        return set(ALL_KINDS)
    names = [t] if isinstance(t, str) else t
    if not isinstance(names, list | tuple) or any(n not in TYPE_KINDS for n in names):
        raise _refuse(f"'type' {t!r} is not a JSON Schema type")
    return set().union(*(TYPE_KINDS[n] for n in names))


def _type_names(kinds: set[str]) -> list[str]:
    names = [t for t in ("null", "boolean", "object", "array", "string") if t in kinds]
    return names + (["number"] if "number" in kinds else ["integer"] * ("integer" in kinds))


def _kind(v: Any) -> str:
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
    raise _refuse(f"{v!r} is not a JSON value")


def _pointer(ref: Any) -> list[str]:
    if not isinstance(ref, str) or not ref.startswith("#"):
        raise _refuse(f"$ref {ref!r}: only references inside the document ('#...') are supported")
    fragment = unquote(ref[1:])
    if not fragment:
        return []
    if not fragment.startswith("/"):
        raise _refuse(f"$ref {ref!r}: anchors are not supported")
    return [t.replace("~1", "/").replace("~0", "~") for t in fragment[1:].split("/")]


def _has_nested_id(s: Any, top: bool = True) -> bool:
    if isinstance(s, dict):
        if not top and isinstance(s.get("$id"), str):
            return True
        return any(_has_nested_id(v, False) for v in s.values())
    return isinstance(s, list) and any(_has_nested_id(v, False) for v in s)


def _finds(s: Any, key: str) -> bool:
    if isinstance(s, dict):
        return key in s or any(_finds(v, key) for v in s.values())
    return isinstance(s, list) and any(_finds(v, key) for v in s)


def _number(v: Any, k: str) -> int | float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise _refuse(f"{k!r} must be a number")
    return v


def _decimal(v: Any, k: str) -> Decimal:
    v = _number(v, k)
    return Decimal(v) if isinstance(v, int) else Decimal(repr(v))


def _count(s: dict, k: str, limit: int) -> int | None:
    if k not in s:
        return None
    v = _number(s[k], k)
    if v < 0 or v != int(v):
        raise _refuse(f"{k!r} must be a non-negative integer")
    if v > limit:
        raise _refuse(f"{k!r} above {limit} is not supported")
    return int(v)


def _strings(v: Any, k: str) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise _refuse(f"{k!r} must be an array of strings")
    return v


def _str_tuple(v: Any, k: str) -> tuple[str, ...]:
    """A keyword that merging may turn into several values (pattern, format)."""
    items = (v,) if isinstance(v, str) else v
    if not isinstance(items, tuple) or not all(isinstance(x, str) for x in items):
        raise _refuse(f"{k!r} must be a string")
    return items


def _key(name: Any) -> str:
    if not isinstance(name, str):
        raise _refuse("property names must be strings")
    return name


def _canonical(v: Any, *, plain: bool = False) -> str:
    """Compact JSON; equal JSON values (1 == 1.0) give equal text unless `plain` keeps key order.

    Numbers are plain decimals (the spelling `_number_literal` and integers accept).
    """
    if isinstance(v, bool) or v is None or isinstance(v, str):
        if isinstance(v, str) and any(0xD800 <= ord(c) <= 0xDFFF for c in v):
            raise _refuse("strings with lone surrogates are not supported")
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, int | float):
        return _plain_decimal(v)
    if isinstance(v, list | tuple):
        return "[" + ",".join(_canonical(x, plain=plain) for x in v) + "]"
    if isinstance(v, dict):
        items = [(_canonical(_key(k)), _canonical(x, plain=plain)) for k, x in v.items()]
        return "{" + ",".join(f"{k}:{x}" for k, x in (items if plain else sorted(items))) + "}"
    raise _refuse(f"{v!r} is not a JSON value")


def _string_literal(v: str) -> str:
    return _canonical(v)


def _plain_decimal(v: int | float) -> str:
    if isinstance(v, float) and not math.isfinite(v):
        raise _refuse(f"{v!r} is not a JSON number")
    text = f"{Decimal(v) if isinstance(v, int) else Decimal(repr(v)):f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("0", "-0") else text


# ---- lexical pieces ----------------------------------------------------------------------------


def _digits(lo: int, hi: int, base: int = 10) -> Chars:
    """Digit values lo..hi (hex letters in both cases)."""
    ranges = []
    for d in range(lo, hi + 1):
        for ch in {f"{d:x}", f"{d:X}"}:
            ranges.append((ord(ch), ord(ch)))
    return chars(ranges)


def _fixed_width(lo: int, hi: int, width: int, base: int = 10) -> Node:
    """Numbers lo..hi written with exactly `width` digits (leading zeros included)."""
    if width == 0:
        return EMPTY
    p = base ** (width - 1)
    a, b = lo // p, hi // p
    if a == b:
        return seq(_digits(a, a, base), _fixed_width(lo % p, hi % p, width - 1, base))
    parts = []
    first, last = a, b
    if lo % p:
        parts.append(seq(_digits(a, a, base), _fixed_width(lo % p, p - 1, width - 1, base)))
        first = a + 1
    if hi % p != p - 1:
        last = b - 1
    if first <= last:
        tail = Repeat(_digits(0, base - 1, base), width - 1, width - 1) if width > 1 else EMPTY
        parts.append(seq(_digits(first, last, base), tail))
    if hi % p != p - 1:
        parts.append(seq(_digits(b, b, base), _fixed_width(0, hi % p, width - 1, base)))
    return alt(*parts)


def _natural(lo: int, hi: int | None) -> Node:
    """Decimal spellings (no leading zeros) of the integers lo..hi, lo >= 0, hi None: unbounded."""
    parts: list[Node] = []
    if lo == 0:
        parts.append(lit("0"))
        lo = 1
    if hi is not None and lo > hi:
        return alt(*parts)
    wa = len(str(lo))
    wb = len(str(hi)) if hi is not None else wa
    for w in range(wa, wb + 1):
        a, b = max(lo, 10 ** (w - 1)), 10**w - 1 if hi is None else min(hi, 10**w - 1)
        if (a, b) == (10 ** (w - 1), 10**w - 1) and w not in (wa, wb):
            continue  # whole widths between wa and wb: one repeat below
        parts.append(_fixed_width(a, b, w))
    if wb - wa > 1:
        parts.append(seq(NONZERO, Repeat(DIGIT, wa, wb - 2)))
    if hi is None:
        parts.append(seq(NONZERO, Repeat(DIGIT, wa, None)))
    return alt(*parts)


def _integer(lo: int | None, hi: int | None) -> Node:
    """Integers lo..hi spelled `-?(0|[1-9][0-9]*)`."""
    if lo is not None and hi is not None and lo > hi:
        return NOTHING
    parts = []
    if hi is None or hi >= 0:
        parts.append(_natural(max(lo, 0) if lo is not None else 0, hi))
    if lo is None or lo <= -1:
        magnitude_lo = 1 if hi is None or hi >= 0 else -hi
        parts.append(seq(lit("-"), _natural(magnitude_lo, None if lo is None else -lo)))
    if (lo is None or lo <= 0) and (hi is None or hi >= 0):
        parts.append(lit("-0"))
    return alt(*parts)


_FRAC = seq(lit("."), plus(DIGIT))
_EXP = seq(
    chars([(0x45, 0x45), (0x65, 0x65)]), opt(chars([(0x2B, 0x2B), (0x2D, 0x2D)])), plus(DIGIT)
)


def _number_syntax() -> Node:
    return seq(opt(lit("-")), alt(lit("0"), seq(NONZERO, star(DIGIT))), opt(_FRAC), opt(_EXP))


def _signed_number(signs: set[str]) -> Node:
    """JSON numbers whose value is negative / zero / positive as `signs` allows."""
    if signs == {"neg", "zero", "pos"}:
        return _number_syntax()
    nonzero = alt(
        seq(NONZERO, star(DIGIT), opt(_FRAC)), seq(lit("0."), star(lit("0")), NONZERO, star(DIGIT))
    )
    parts = []
    if "pos" in signs:
        parts.append(seq(nonzero, opt(_EXP)))
    if "neg" in signs:
        parts.append(seq(lit("-"), nonzero, opt(_EXP)))
    if "zero" in signs:
        parts.append(seq(opt(lit("-")), lit("0"), opt(seq(lit("."), plus(lit("0")))), opt(_EXP)))
    return alt(*parts)


def _number_literal(v: int | float) -> Node:
    """`v` in plain decimal (integer values as integers), or as json.dumps writes a fraction."""
    text = _plain_decimal(v)
    node = alt(lit("0"), lit("-0")) if text == "0" else lit(text)
    dumped = json.dumps(v)
    return alt(node, lit(dumped)) if "." in text and "e" in dumped else node


def _json_char() -> Node:
    hex_ = _digits(0, 15, 16)
    bmp = alt(  # \uXXXX outside the surrogates
        seq(_digits(0, 12, 16), Repeat(hex_, 3, 3)),
        seq(_digits(13, 13, 16), _digits(0, 7, 16), hex_, hex_),
        seq(_digits(14, 15, 16), Repeat(hex_, 3, 3)),
    )
    high = seq(_digits(13, 13, 16), _digits(8, 11, 16), hex_, hex_)
    low = seq(_digits(13, 13, 16), _digits(12, 15, 16), hex_, hex_)
    escape = alt(chars((ord(c), ord(c)) for c in '"\\/bfnrt'), seq(lit("u"), bmp),
                 seq(lit("u"), high, lit("\\u"), low))  # fmt: skip
    return alt(Chars(subtract(ALL_CHARS, NEEDS_ESCAPE)), seq(lit("\\"), escape))


def _escape(c: int) -> Node:
    """The escape json.dumps writes for `c` (hex digits in either case)."""
    if c in SHORT_ESCAPES:
        return lit(SHORT_ESCAPES[c])
    return seq(lit("\\u00"), _digits(c >> 4, c >> 4, 16), _digits(c & 15, c & 15, 16))


# ---- formats (languages over decoded characters) ---------------------------------------------


def _two(lo: int, hi: int) -> Node:
    return _fixed_width(lo, hi, 2)


def _date() -> Node:
    year = Repeat(DIGIT, 4, 4)
    fours = [f"{n:02d}" for n in range(4, 100, 4)]
    leap = alt(seq(DIGIT, DIGIT, choice(fours)), seq(choice(["00", *fours]), lit("00")))
    day_29_30 = seq(alt(lit("01"), _two(3, 12)), lit("-"), choice(["29", "30"]))
    day_31 = seq(choice(["01", "03", "05", "07", "08", "10", "12"]), lit("-31"))
    month_day = alt(seq(_two(1, 12), lit("-"), _two(1, 28)), day_29_30, day_31)
    return alt(seq(year, lit("-"), month_day), seq(leap, lit("-02-29")))


def _time() -> Node:
    """RFC 3339 full-time; second 60 only where the time is 23:59:60 UTC."""
    hour, minute = _two(0, 23), _two(0, 59)
    frac = opt(_FRAC)
    zulu = chars([(0x5A, 0x5A), (0x7A, 0x7A)])
    offset = alt(zulu, seq(chars([(43, 43), (45, 45)]), hour, lit(":"), minute))
    normal = seq(hour, lit(":"), minute, lit(":"), _two(0, 59), frac, offset)
    leap_hours = []
    for h in range(24):
        minutes = []
        for m in range(60):
            local = 60 * h + m  # UTC 23:59 = local - offset, so offset = local - 23:59 (mod 24h)
            east, west = (local + 1) % 1440, (1439 - local) % 1440
            offsets = [lit(f"+{east // 60:02d}:{east % 60:02d}")]
            offsets.append(lit(f"-{west // 60:02d}:{west % 60:02d}"))
            if local == 1439:
                offsets.append(zulu)
            minutes.append(seq(lit(f"{m:02d}:60"), frac, alt(*offsets)))
        leap_hours.append(seq(lit(f"{h:02d}:"), alt(*minutes)))
    return alt(normal, *leap_hours)


def _email() -> Node:
    """RFC 5321 Mailbox: dot-atom or quoted local part @ host name or address literal.

    Host-name labels have 1-63 letters, digits or inner hyphens; the overall length limits of
    RFC 5321 section 4.5.3.1 are not modelled.
    """
    alnum = chars([(48, 57), (65, 90), (97, 122)])
    atom = plus(_set(b"!#$%&'*+-/=?^_`{|}~", (48, 57), (65, 90), (97, 122)))
    qtext = chars([(32, 33), (35, 91), (93, 126)])
    quoted = seq(lit('"'), star(alt(qtext, seq(lit("\\"), chars([(32, 126)])))), lit('"'))
    local = alt(seq(atom, star(seq(lit("."), atom))), quoted)
    label = seq(alnum, opt(seq(Repeat(alt(alnum, lit("-")), 0, 61), alnum)))
    literal = seq(lit("["), alt(_ipv4(), seq(lit("IPv6:"), _format("ipv6"))), lit("]"))
    return seq(local, lit("@"), alt(seq(label, star(seq(lit("."), label))), literal))


def _set(text: bytes, *ranges: tuple[int, int]) -> Chars:
    return chars([(c, c) for c in text] + list(ranges))


def _uri_parts() -> dict[str, Node]:
    """RFC 3986 pieces (ASCII only: IRIs are not URIs)."""
    alnum = [(48, 57), (65, 90), (97, 122)]
    hex_ = _digits(0, 15, 16)
    pct = seq(lit("%"), hex_, hex_)
    unreserved_sub = _set(b"-._~!$&'()*+,;=", *alnum)
    pchar = alt(_set(b"-._~!$&'()*+,;=:@", *alnum), pct)
    segment = star(pchar)
    h16 = Repeat(hex_, 1, 4)
    ls32 = alt(seq(h16, lit(":"), h16), _ipv4())
    c_h16 = seq(h16, lit(":"))
    ipv6 = alt(
        seq(Repeat(c_h16, 6, 6), ls32),
        seq(lit("::"), Repeat(c_h16, 5, 5), ls32),
        *(
            seq(opt(seq(Repeat(c_h16, 0, k), h16)), lit("::"), Repeat(c_h16, 4 - k, 4 - k), ls32)
            for k in range(5)
        ),
        seq(opt(seq(Repeat(c_h16, 0, 5), h16)), lit("::"), h16),
        seq(opt(seq(Repeat(c_h16, 0, 6), h16)), lit("::")),
    )
    future = seq(lit("v"), plus(hex_), lit("."), plus(alt(unreserved_sub, lit(":"))))
    host = alt(seq(lit("["), alt(ipv6, future), lit("]")), star(alt(unreserved_sub, pct)))
    userinfo = star(alt(unreserved_sub, pct, lit(":")))
    authority = seq(opt(seq(userinfo, lit("@"))), host, opt(seq(lit(":"), star(DIGIT))))
    slash_segments = star(seq(lit("/"), segment))
    absolute = seq(lit("/"), opt(seq(plus(pchar), slash_segments)))
    query = star(alt(pchar, _set(b"/?")))  # fragment: the same characters
    tail = seq(opt(seq(lit("?"), query)), opt(seq(lit("#"), query)))
    scheme = seq(chars(alnum[1:]), star(_set(b"+-.", *alnum)))
    hier = alt(
        seq(lit("//"), authority, slash_segments), absolute, opt(seq(plus(pchar), slash_segments))
    )
    nc = alt(_set(b"-._~!$&'()*+,;=@", *alnum), pct)  # a first segment without ':'
    relative = alt(
        seq(lit("//"), authority, slash_segments), absolute, opt(seq(plus(nc), slash_segments))
    )
    uri = seq(scheme, lit(":"), hier, tail)
    return {"uri": uri, "uri-reference": alt(uri, seq(relative, tail)), "ipv6": ipv6}


def _json_pointer() -> Node:
    unescaped = chars([(0, 0x2E), (0x30, 0x7D), (0x7F, MAX_CODE_POINT)])
    return star(seq(lit("/"), star(alt(unescaped, seq(lit("~"), _set(b"01"))))))


def _duration() -> Node:
    """ISO 8601 durations as RFC 3339 appendix A writes them."""
    n = plus(DIGIT)
    second = seq(n, lit("S"))
    minute = seq(n, lit("M"), opt(second))
    hour = seq(n, lit("H"), opt(minute))
    time = seq(lit("T"), alt(hour, minute, second))
    day = seq(n, lit("D"))
    month = seq(n, lit("M"), opt(day))
    year = seq(n, lit("Y"), opt(month))
    return seq(lit("P"), alt(seq(alt(day, month, year), opt(time)), time, seq(n, lit("W"))))


def _ipv4() -> Node:
    octet = _natural(0, 255)
    return seq(octet, Repeat(seq(lit("."), octet), 3, 3))


def _uuid() -> Node:
    hex_ = _digits(0, 15, 16)
    groups = [Repeat(hex_, n, n) for n in (8, 4, 4, 4, 12)]
    return seq(*(seq(lit("-"), g) if i else g for i, g in enumerate(groups)))


@functools.cache
def _format(name: str) -> Node:
    if name == "date-time":
        return seq(_format("date"), chars([(0x54, 0x54), (0x74, 0x74)]), _format("time"))
    if name in ("uri", "uri-reference", "ipv6"):
        return _uri_parts()[name]
    if name == "relative-json-pointer":
        return seq(_natural(0, None), alt(lit("#"), _format("json-pointer")))
    builders = {"date": _date, "time": _time, "email": _email, "ipv4": _ipv4, "uuid": _uuid}
    builders |= {"json-pointer": _json_pointer, "duration": _duration}
    if name not in builders:
        raise _refuse(f"'format' {name!r} is not supported")
    return builders[name]()


# ---- IR analysis -------------------------------------------------------------------------------


def _size(node: Node, limit: int) -> int:
    """Number of nodes in `node` (stops counting at `limit`)."""
    count, work = 0, [node]
    while work and count < limit:
        n = work.pop()
        count += 1
        if isinstance(n, Seq | Alt):
            work.extend(n.items)
        elif isinstance(n, Repeat):
            work.append(n.item)
            count += min(n.max or n.min, limit)  # expanded copies
    return count


def _length_range(node: Node) -> tuple[int, int | None]:
    """Fewest and most characters of a rule-free node (None: unbounded)."""
    if isinstance(node, Chars):
        return 1, 1
    if isinstance(node, Seq | Alt):
        ranges = [_length_range(i) for i in node.items]
        if isinstance(node, Seq):
            his = [b for _, b in ranges]
            return sum(a for a, _ in ranges), None if None in his else sum(his)
        if not ranges:
            return 0, 0
        his = [b for _, b in ranges]
        return min(a for a, _ in ranges), None if None in his else max(his)
    if isinstance(node, Repeat):
        a, b = _length_range(node.item)
        if node.max == 0 or b == 0:
            return 0, 0
        return a * node.min, None if node.max is None or b is None else b * node.max
    return 0, None


def _intersect(a: tuple[tuple[int, int], ...], b: tuple[tuple[int, int], ...]) -> tuple:
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo <= hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return tuple(out)


def _coreachable(accept: list[bool], edges: list[list[tuple[Any, int]]]) -> list[bool]:
    back: list[list[int]] = [[] for _ in accept]
    for q, out in enumerate(edges):
        for _, t in out:
            back[t].append(q)
    live = list(accept)
    work = [q for q, a in enumerate(accept) if a]
    while work:
        for p in back[work.pop()]:
            if not live[p]:
                live[p] = True
                work.append(p)
    return live


class _Nfa:
    """Epsilon-free NFA of a rule-free node over characters: `moves[q]` = [(ranges, target)]."""

    def __init__(self, node: Node) -> None:
        self.edges: list[list[tuple[tuple, int]]] = []
        self.eps: list[list[int]] = []
        start = self._new()
        end = self._build(node, start)
        self.moves: list[list[tuple[tuple, int]]] = []
        self.accept: list[bool] = []
        for q in range(len(self.edges)):
            closure = self._closure(q)
            by_target: dict[int, list[tuple[int, int]]] = {}
            for p in closure:
                for ranges, t in self.edges[p]:
                    by_target.setdefault(t, []).extend(ranges)
            self.moves.append([(normalize_ranges(r), t) for t, r in by_target.items()])
            self.accept.append(end in closure)

    def _new(self) -> int:
        if len(self.edges) >= MAX_STATES:
            raise _refuse("'pattern'/'format' (with 'minLength'/'maxLength') is too large")
        self.edges.append([])
        self.eps.append([])
        return len(self.edges) - 1

    def _build(self, node: Node, q: int) -> int:
        if isinstance(node, Chars):
            end = self._new()
            self.edges[q].append((node.ranges, end))
            return end
        if isinstance(node, Seq):
            for item in node.items:
                q = self._build(item, q)
            return q
        if isinstance(node, Alt):
            end = self._new()
            for item in node.items:
                s = self._new()
                self.eps[q].append(s)
                self.eps[self._build(item, s)].append(end)
            return end
        if isinstance(node, Repeat):
            for _ in range(node.min):
                q = self._build(node.item, q)
            end = self._new()
            if node.max is None:
                loop = self._new()
                self.eps[q].append(loop)
                self.eps[self._build(node.item, loop)].append(loop)
                self.eps[loop].append(end)
                return end
            for _ in range(node.max - node.min):
                self.eps[q].append(end)
                q = self._build(node.item, q)
            self.eps[q].append(end)
            return end
        raise _refuse("a pattern may not refer to grammar rules")

    def _closure(self, q: int) -> set[int]:
        seen, work = {q}, [q]
        while work:
            for t in self.eps[work.pop()]:
                if t not in seen:
                    seen.add(t)
                    work.append(t)
        return seen


def _productive(rules: dict[str, Node]) -> dict[str, bool]:
    """Which rules match at least one string."""
    done = dict.fromkeys(rules, False)

    def productive(node: Node) -> bool:
        if isinstance(node, Chars):
            return bool(node.ranges)
        if isinstance(node, Seq):
            return all(productive(i) for i in node.items)
        if isinstance(node, Alt):
            return any(productive(i) for i in node.items)
        if isinstance(node, Repeat):
            return node.min == 0 or productive(node.item)
        return done[node.name]

    changed = True
    while changed:
        changed = False
        for name, body in rules.items():
            if not done[name] and productive(body):
                done[name] = changed = True
    return done


def _check_left_recursion(rules: dict[str, Node]) -> None:
    """Refuse grammars where a rule can reach itself without reading a character."""
    nullable = dict.fromkeys(rules, False)

    def can_be_empty(node: Node) -> bool:
        if isinstance(node, Chars):
            return False
        if isinstance(node, Seq):
            return all(can_be_empty(i) for i in node.items)
        if isinstance(node, Alt):
            return any(can_be_empty(i) for i in node.items)
        if isinstance(node, Repeat):
            return node.min == 0 or can_be_empty(node.item)
        return nullable[node.name]

    changed = True
    while changed:
        changed = False
        for name, body in rules.items():
            if not nullable[name] and can_be_empty(body):
                nullable[name] = changed = True

    def heads(node: Node, out: set[str]) -> None:
        if isinstance(node, Ref):
            out.add(node.name)
        elif isinstance(node, Seq):
            for item in node.items:
                heads(item, out)
                if not can_be_empty(item):
                    break
        elif isinstance(node, Alt):
            for item in node.items:
                heads(item, out)
        elif isinstance(node, Repeat) and node.max != 0:
            heads(node.item, out)

    graph = {}
    for name, body in rules.items():
        graph[name] = set()
        heads(body, graph[name])
    state: dict[str, int] = {}  # 1: on the DFS stack, 2: done
    for root in graph:
        if root in state:
            continue
        stack = [(root, iter(graph[root]))]
        state[root] = 1
        while stack:
            name, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[name] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                raise _refuse("$ref: a schema refers to itself without consuming input")
            elif nxt not in state:
                state[nxt] = 1
                stack.append((nxt, iter(graph[nxt])))
