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

This module walks the schema (`_Compiler`: one subschema at a time). The rest of the compiler:
`json_keywords.py` (which keywords are handled or refused, reading their values, limits),
`json_merge.py` (allOf / `$ref` sibling merging, `oneOf` disjointness), `json_rules.py` (the rules
under construction and shared JSON text pieces), `json_lexical.py` (numbers, integer ranges,
escapes), `json_formats.py` (`format` languages), `json_automata.py` (pattern/format/length
intersection), `json_checks.py` (productive rules, left recursion).
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from .ir import (
    EMPTY,
    MAX_CODE_POINT,
    NOTHING,
    Alt,
    Grammar,
    Node,
    Ref,
    Repeat,
    UnsupportedConstraintError,
    alt,
    chars,
    lit,
    seq,
    star,
)
from .json_automata import length_range, product
from .json_checks import check_left_recursion, productive_rules
from .json_decimal import bounded_number
from .json_dialects import Dialect
from .json_keys import Dfa, KeyClasses
from .json_keywords import (
    ANNOTATIONS,
    MAX_COUNT,
    MAX_LENGTH,
    MAX_PREFIX,
    MAX_STATES,
    MAX_UNIQUE,
    canonical,
    count_value,
    drop_trivial,
    finds,
    has_nested_id,
    nullable,
    pointer,
    property_key,
    refuse,
    schema_kinds,
    string_list,
    string_literal,
    string_tuple,
    type_names,
    unevaluated,
    validates,
    value_kind,
)
from .json_merge import SchemaMerger
from .json_rules import JsonRules
from .regex import regex_node


def schema_grammar(
    schema: dict | bool,
    *,
    whitespace: str = "compact",
    max_whitespace: int = 4,
    unbounded_numbers: bool = False,
    property_order: str = "declared",
) -> Grammar:
    """The JSON texts valid under `schema` (draft 2020-12), in the module's documented spelling.

    `whitespace="compact"`: no whitespace outside strings. `"bounded"`: 0..`max_whitespace` of
    space, tab or newline between any two structural tokens. Numbers without a bound of their
    own stay within what parsers read back (integers in the signed 64-bit range, other numbers
    at most 20 digits each side of the point and a 3-digit exponent) unless `unbounded_numbers`.
    `property_order="sorted"`: an object's named members in name order instead of declared order
    (a canonical spelling, e.g. to check instances whose keys were sorted).
    Raises `UnsupportedConstraintError` (naming the keyword) for what cannot be compiled exactly,
    `ValueError` for a bad `whitespace`.
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
        if property_order not in ("declared", "sorted"):
            raise ValueError(
                f"property_order must be 'declared' or 'sorted', not {property_order!r}"
            )
        compiler = _Compiler(schema, ws, limited=not unbounded_numbers)
        compiler.sort_members = property_order == "sorted"
        return compiler.compile()
    except RecursionError:
        raise refuse("the schema nests (or refers to itself) too deeply") from None


def json_value_grammar(
    *, whitespace: str = "compact", max_whitespace: int = 4, unbounded_numbers: bool = False
) -> Grammar:
    """Any JSON value (the `true` schema)."""
    return schema_grammar(
        True,
        whitespace=whitespace,
        max_whitespace=max_whitespace,
        unbounded_numbers=unbounded_numbers,
    )


class _Compiler:
    """Schema -> rules, one subschema at a time; `$ref` targets become rules of their own."""

    def __init__(self, schema: Any, ws: Node, *, limited: bool) -> None:
        self.dialect = Dialect(schema.get("$schema") if isinstance(schema, dict) else None)
        self.schema = schema
        self.out = JsonRules(ws, limited=limited)
        self.merger = SchemaMerger(schema, self.dialect)
        self.merged: dict[str, Node] = {}
        self.sort_members = False  # `$ref` with siblings, by content -> its rule

    def compile(self) -> Grammar:
        if isinstance(self.schema, dict):
            if has_nested_id(self.schema, self.merger.id_keys) and finds(self.schema, "$ref"):
                raise refuse("$id in a subschema changes $ref resolution (not supported)")
        elif not isinstance(self.schema, bool):
            raise refuse("a schema must be an object or a boolean")
        rules = self.out.rules
        rules["root"] = NOTHING
        rules["root"] = self.node(self.schema)
        self.out.finalize_enums()
        check_left_recursion(rules)
        if not productive_rules(rules)["root"]:
            raise refuse("no JSON value is valid under this schema")
        return Grammar(dict(rules), "root", ignored=tuple(self.dialect.ignored))

    # ---- schemas -------------------------------------------------------------------------------

    def node(self, s: Any) -> Node:
        if s is True:
            return self.out.any_value()
        if s is False:
            return NOTHING
        if not isinstance(s, dict):
            raise refuse("a schema must be an object or a boolean")
        s = drop_trivial(unevaluated(nullable(self.dialect.prepare(s))))
        if s is False:
            return NOTHING
        if "dependentRequired" in s or "dependentSchemas" in s:
            return alt(*(self.node(b) for b in self.merger.dependent(s)))
        if "$ref" in s:
            rest = {k: v for k, v in s.items() if k != "$ref"}
            if not validates(rest):
                return self.ref(s["$ref"])
            return self._merged(s)
        if "allOf" in s:
            return self.node(self.merger.merge_all(s, 0))
        for key in ("anyOf", "oneOf"):
            if key in s:
                return self._union(s, key)
        if "const" in s or "enum" in s:
            return self._enum(s)
        return self._typed(s)

    def ref(self, ref: Any) -> Node:
        tokens = pointer(self.merger.local(ref))
        if not tokens:
            return Ref("root")
        name = "anchor:" + tokens if isinstance(tokens, str) else "def:" + "/".join(tokens)
        if name not in self.out.rules:
            self.out.rules[name] = NOTHING
            self.out.rules[name] = self.node(self.merger.resolve(ref))
        return Ref(name)

    def _merged(self, s: dict) -> Node:
        """A `$ref` with sibling keywords: the target merged with them, one rule per content."""
        key = json.dumps(s, sort_keys=True, default=list)
        if key not in self.merged:
            name = self.out.fresh("merged")
            self.merged[key] = Ref(name)
            self.out.rules[name] = NOTHING
            rest = {k: v for k, v in s.items() if k != "$ref"}
            target = self.merger.merge(self.merger.resolve(s["$ref"]), rest, 0)
            self.out.rules[name] = self.node(target)
        return self.merged[key]

    def _union(self, s: dict, key: str) -> Node:
        branches = s[key]
        if not isinstance(branches, list) or not branches:
            raise refuse(f"{key!r} must be a non-empty array")
        rest = {k: v for k, v in s.items() if k != key}
        if validates(rest):  # the outer keywords first: their properties come first
            branches = [self.merger.merge(rest, self.merger.inline(b), 0) for b in branches]
        if key == "oneOf":
            branches = [b for b in branches if self.merger.kinds_of(b)]
            overlap = next(
                (
                    (i, j)
                    for i, j in itertools.combinations(range(len(branches)), 2)
                    if not self.merger.disjoint(branches[i], branches[j])
                ),
                None,
            )
            if overlap is not None:
                branches = self.merger.exactly_one(s[key], rest, overlap)
        return alt(*(self.node(b) for b in branches))

    def _enum(self, s: dict) -> Node:
        values = s.get("enum", [])
        if not isinstance(values, list):
            raise refuse("'enum' must be an array")
        if "const" in s:
            c = canonical(s["const"])
            values = [s["const"]] if "enum" not in s else [v for v in values if canonical(v) == c]
        values = list({canonical(v): v for v in values}.values())
        rest = {k: v for k, v in s.items() if k not in ("enum", "const")}
        kinds = schema_kinds(rest)
        values = [v for v in values if value_kind(v) in kinds]
        if set(rest) - ANNOTATIONS <= {"type"}:
            return alt(*(self.out.literal(v) for v in values))
        rest["type"] = type_names({value_kind(v) for v in values})  # the rest matters only there
        # Keep the values the rest of the schema accepts; decided once every rule is complete.
        name = self.out.fresh("enum")
        self.out.rules[name] = NOTHING
        literals = alt(*(self.out.literal(v) for v in values))
        self.out.pending[name] = (literals, self.node(rest), values)
        return Ref(name)

    def _typed(self, s: dict) -> Node:
        kinds = schema_kinds(s)
        parts = []
        if "null" in kinds:
            parts.append(lit("null"))
        if "boolean" in kinds:
            parts.append(alt(lit("true"), lit("false")))
        if kinds & {"integer", "number"}:
            parts.append(bounded_number(s, fractional="number" in kinds, limited=self.out.limited))
        if "string" in kinds:
            parts.append(self.string(s))
        if "array" in kinds:
            parts.append(self.array(s))
        if "object" in kinds:
            parts.append(self.object(s))
        return alt(*parts)

    # ---- strings -------------------------------------------------------------------------------

    def string(self, s: dict) -> Node:
        lo = count_value(s, "minLength", MAX_LENGTH) or 0
        hi = count_value(s, "maxLength", MAX_LENGTH)
        if hi is not None and lo > hi:
            return NOTHING
        languages = [self._pattern(p) for p in string_tuple(s.get("pattern", ()), "pattern")]
        formats = string_tuple(s.get("format", ()), "format")
        languages += [self.out.format_language(f) for f in formats]
        quote = lit('"')
        if not languages:
            return seq(quote, Repeat(self.out.json_char(), lo, hi), quote)
        if len(languages) == 1:
            a, b = length_range(languages[0])
            if a >= lo and (hi is None or (b is not None and b <= hi)):
                return seq(quote, self.out.encode(languages[0]), quote)
        return seq(quote, self.out.string_product(languages, lo, hi), quote)

    def _pattern(self, pattern: str) -> Node:
        try:
            return regex_node(pattern, search=True)
        except UnsupportedConstraintError as e:
            raise refuse(f"'pattern' {pattern!r}: {e}") from None

    # ---- arrays --------------------------------------------------------------------------------

    def array(self, s: dict) -> Node:
        prefix = s.get("prefixItems", [])
        items = s.get("items", True)
        if not isinstance(prefix, list) or isinstance(items, list | tuple):
            raise refuse("'prefixItems' must be an array and 'items' a schema")
        if len(prefix) > MAX_PREFIX:
            raise refuse(f"'prefixItems' longer than {MAX_PREFIX}")
        lo = count_value(s, "minItems", MAX_COUNT) or 0
        hi = count_value(s, "maxItems", MAX_COUNT)
        if s.get("uniqueItems", False) not in (False, True):
            raise refuse("'uniqueItems' must be a boolean")
        if hi is not None and lo > hi:
            return NOTHING
        if s.get("uniqueItems") and (hi is None or hi > 1):
            values = None if prefix else self._finite_items(items)
            if values is None:
                raise refuse(
                    f"'uniqueItems' is supported for items of at most {MAX_UNIQUE} enum/const "
                    "values (or maxItems <= 1)"
                )
            return self.out.unique_array(values, lo, hi)
        elems = [self.out.share(self.node(p), "item") for p in prefix]
        item = self.out.share(self.node(items), "item")

        def after(k: int) -> Node:  # the rest of an array that already has k >= 1 elements
            stop = EMPTY if k >= lo else NOTHING
            if hi is not None and k >= hi:
                return stop
            if k < len(elems):
                return alt(stop, seq(self.out.sep, elems[k], after(k + 1)))
            return Repeat(seq(self.out.sep, item), max(0, lo - k), None if hi is None else hi - k)

        first = elems[0] if elems else item
        parts = [seq(lit("["), self.out.ws, lit("]"))] if lo == 0 else []
        if hi != 0:
            parts.append(seq(lit("["), self.out.ws, first, after(1), self.out.ws, lit("]")))
        return alt(*parts)

    def _finite_items(self, items: Any) -> list[Any] | None:
        """The distinct values `items` allows when it is an enum/const of few values, else None."""
        items = self.dialect.prepare(items)
        if not isinstance(items, dict) or set(items) - ANNOTATIONS - {"enum", "const", "type"}:
            return None
        if "enum" not in items and "const" not in items:
            return None
        values = items.get("enum", [items.get("const")])
        if not isinstance(values, list):
            return None
        if "const" in items:
            values = [v for v in values if canonical(v) == canonical(items["const"])]
        kinds = schema_kinds(items)
        values = list({canonical(v): v for v in values if value_kind(v) in kinds}.values())
        return values if len(values) <= MAX_UNIQUE else None

    # ---- objects -------------------------------------------------------------------------------

    def object(self, s: dict) -> Node:
        props = s.get("properties", {})
        if not isinstance(props, dict):
            raise refuse("'properties' must be an object")
        required = list(dict.fromkeys(string_list(s.get("required", []), "required")))
        extra_schema = s.get("additionalProperties", True)
        lo = count_value(s, "minProperties", MAX_COUNT) or 0
        hi = count_value(s, "maxProperties", MAX_COUNT)
        names = [*props, *(r for r in required if r not in props)]
        if self.sort_members:
            names.sort()
        pattern_props = s.get("patternProperties", {})
        patterns = [(Dfa.of_node(self._pattern(p)), v) for p, v in pattern_props.items()]
        allowed = self._name_language(s["propertyNames"]) if "propertyNames" in s else None
        members: list[tuple[Node, bool]] = []
        for name in names:
            if allowed is not None and not allowed.accepts(name):
                if name in required:
                    return NOTHING
                continue
            schema = props[name] if name in props else extra_schema
            matched = [v for dfa, v in patterns if dfa.accepts(name)]
            if matched:
                schema = props.get(name, True)
                for v in matched:
                    schema = self.merger.merge(schema, v, 0)
            value = self.node(schema)
            if isinstance(value, Alt) and not value.items:
                if name in required:
                    return NOTHING
                continue
            key = lit(string_literal(property_key(name)))
            member = self.out.share(seq(key, self.out.colon, value), "member")
            members.append((member, name in required))
        extra = self._extra_member(names, patterns, extra_schema, allowed)
        if hi is not None and lo > hi:
            return NOTHING
        cap = hi if hi is not None else lo  # member counts above cap are all alike
        if (len(members) + 1) * (cap + 1) > MAX_STATES:
            raise refuse("'minProperties'/'maxProperties' with too many properties")
        prefix = self.out.fresh("obj")

        def state(i: int, c: int, first: bool) -> str:
            return f"{prefix}.{i}.{c}.{int(first)}"

        n = len(members)
        for c in range(cap + 1):
            for first in (True, False):
                self.out.rules[state(n, c, first)] = self._extras(extra, c, first, lo, hi)
        for i in reversed(range(n)):
            node, req = members[i]
            for c in range(cap + 1):
                for first in (True, False):
                    options = []
                    if hi is None or c < hi:
                        nxt = Ref(state(i + 1, min(c + 1, cap), False))
                        options.append(seq(*(() if first else (self.out.sep,)), node, nxt))
                    if not req:
                        options.append(Ref(state(i + 1, c, first)))
                    self.out.rules[state(i, c, first)] = alt(*options)
        parts = []
        if lo == 0 and not any(req for _, req in members):
            parts.append(seq(lit("{"), self.out.ws, lit("}")))
        parts.append(seq(lit("{"), self.out.ws, Ref(state(0, 0, True)), self.out.ws, lit("}")))
        return alt(*parts)

    def _extra_member(
        self, names: list[str], patterns: list, extra_schema: Any, allowed: Dfa | None
    ) -> Node | None:
        """A member whose name is not declared: `patternProperties` by the patterns its name
        matches, `additionalProperties` when it matches none (None: no such member is valid);
        `allowed`: the names `propertyNames` accepts."""
        if not patterns and allowed is None:
            value = self.node(extra_schema)
            if isinstance(value, Alt) and not value.items:
                return None
            return self.out.share(seq(self.out.key_except(names), self.out.colon, value), "member")
        classes = KeyClasses([dfa for dfa, _ in patterns], Dfa.of_words(names), allowed)
        options = []
        for matched, accept in classes.languages().items():
            schema = extra_schema if not matched else True
            for i in matched:
                schema = self.merger.merge(schema, patterns[i][1], 0)
            value = self.node(schema)
            if isinstance(value, Alt) and not value.items:
                continue
            key = seq(lit('"'), self.out.dfa_string(accept, classes.edges), lit('"'))
            options.append(seq(key, self.out.colon, value))
        return self.out.share(alt(*options), "member") if options else None

    def _name_language(self, schema: Any) -> Dfa:
        """The property names `propertyNames` accepts, as a DFA over characters (a schema of
        strings: type, enum/const, pattern, format, lengths); other schemas are refused."""
        schema = self.dialect.prepare(schema)
        if schema is False:
            return Dfa.of_words([])
        keys = set(schema) - ANNOTATIONS
        if keys - {"type", "enum", "const", "pattern", "format", "minLength", "maxLength"}:
            raise refuse("'propertyNames' is supported with string keywords only")
        if "string" not in schema_kinds(schema):
            return Dfa.of_words([])
        if "enum" in schema or "const" in schema:
            if keys - {"type", "enum", "const"}:
                raise refuse("'propertyNames' with 'enum'/'const' and other keywords")
            values = schema.get("enum", [schema.get("const")])
            if "const" in schema:
                values = [v for v in values if v == schema["const"]]
            return Dfa.of_words(v for v in values if isinstance(v, str))
        languages = [self._pattern(p) for p in string_tuple(schema.get("pattern", ()), "pattern")]
        formats = string_tuple(schema.get("format", ()), "format")
        languages += [self.out.format_language(f) for f in formats]
        lo = count_value(schema, "minLength", MAX_LENGTH) or 0
        hi = count_value(schema, "maxLength", MAX_LENGTH)
        accept, edges = product(languages or [star(chars([(0, MAX_CODE_POINT)]))], lo, hi)
        return Dfa.of_nfa(accept, edges)

    def _extras(self, extra: Node | None, c: int, first: bool, lo: int, hi: int | None) -> Node:
        """Additional members after c declared ones (first: none yet, so at least one here)."""
        need, room = max(0, lo - c), None if hi is None else hi - c
        if extra is None:
            return EMPTY if need == 0 and not first else NOTHING
        if not first:
            return Repeat(seq(self.out.sep, extra), need, room)
        if room is not None and room < 1:
            return NOTHING
        sep = self.out.sep
        rest = Repeat(seq(sep, extra), max(0, need - 1), None if room is None else room - 1)
        return seq(extra, rest)
