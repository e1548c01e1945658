"""JSON Schema as real-world schemas write it: dialects, annotations, decimal bounds, number limits.

Oracles: `jsonschema` for validity, and exact arithmetic (`Fraction`) for decimal bounds.
"""

from __future__ import annotations

import itertools
import json
from decimal import Decimal
from fractions import Fraction
from typing import Any

import jsonschema
import pytest

from jaxserve.grammar.automaton import Automaton
from jaxserve.grammar.ir import Grammar, UnsupportedConstraintError
from jaxserve.grammar.json_decimal import decimal_between
from jaxserve.grammar.json_schema import schema_grammar
from jaxserve.grammar.spec import build_grammar


def accepts(schema: Any, text: str, **options: Any) -> bool:
    return Automaton(schema_grammar(schema, **options)).accepts(text)


def agrees_with_jsonschema(schema: dict, values: list[Any]) -> None:
    validator = jsonschema.validators.validator_for(schema)(schema)
    automaton = Automaton(schema_grammar(schema))
    for value in values:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        assert automaton.accepts(text) == validator.is_valid(value), (schema, text)


def test_unknown_keywords_and_formats_are_listed_not_refused() -> None:
    schema = {
        "type": "object",
        "self": {"vendor": "com.example", "name": "event"},
        "properties": {
            "url": {"type": "string", "format": "url", "x-kubernetes-int-or-string": True},
            "when": {"type": "string", "format": "date"},
        },
        "additionalProperties": False,
    }
    grammar = schema_grammar(schema)
    assert grammar.ignored == ("self", "x-kubernetes-int-or-string", "format 'url'")
    a = Automaton(grammar)
    assert a.accepts('{"url":"not a url","when":"2024-02-29"}')
    assert not a.accepts('{"when":"2023-02-29"}')  # known formats are still checked
    assert not a.accepts('{"other":1}')


def test_known_keywords_that_cannot_be_checked_refuse() -> None:
    for schema, word in [
        ({"format": "regex"}, "regex"),
        ({"$dynamicRef": "#x"}, "dynamicRef"),
        ({"$schema": "http://example.com/custom-meta"}, "schema"),
        ({"$schema": "http://json-schema.org/draft-03/schema#"}, "draft-03"),
        ({"uniqueItems": True}, "uniqueItems"),
    ]:
        with pytest.raises(UnsupportedConstraintError, match=word):
            schema_grammar(schema)


def test_draft04_forms() -> None:
    draft4 = "http://json-schema.org/draft-04/schema#"
    values = [{}, {"a": 1}, {"a": 0.5}, {"a": 2, "b": [1]}, {"a": 2, "b": [1, "x", "y"]},
              {"a": 2, "b": ["x"]}, {"b": [1, 2]}, {"c": "long"}, {"c": 1}]  # fmt: skip
    agrees_with_jsonschema(
        {
            "$schema": draft4,
            "id": "http://example.com/root.json",
            "definitions": {"s": {"type": "string"}},
            "properties": {
                "a": {"type": "number", "minimum": 1, "exclusiveMinimum": True},
                "b": {
                    "type": "array",
                    "items": [{"type": "integer"}],
                    "additionalItems": {"$ref": "#/definitions/s"},
                },
                "c": {"$ref": "http://example.com/root.json#/definitions/s", "maxLength": 2},
            },
            "dependencies": {"a": ["b"]},
        },
        values,
    )


def test_ref_siblings_by_dialect() -> None:
    defs = {"definitions": {"s": {"type": "string"}}}
    legacy = {"$schema": "http://json-schema.org/draft-07/schema#", **defs}
    legacy |= {"$ref": "#/definitions/s", "maxLength": 1}
    modern = {**defs, "$ref": "#/definitions/s", "maxLength": 1}
    assert accepts(legacy, '"abc"')  # draft-07: siblings of $ref are ignored
    assert not accepts(modern, '"abc"') and accepts(modern, '"a"')  # 2020-12: both apply


def test_anchors() -> None:
    schema = {"$defs": {"n": {"$anchor": "name", "type": "string", "maxLength": 2}},
              "properties": {"a": {"$ref": "#name"}}}  # fmt: skip
    assert accepts(schema, '{"a":"ab"}') and not accepts(schema, '{"a":"abc"}')
    legacy = {"definitions": {"n": {"id": "#name", "type": "integer"}}, "items": {"$ref": "#name"}}
    assert accepts(legacy, "[1,2]") and not accepts(legacy, '["x"]')


def test_dependent_required_and_schemas() -> None:
    schema = {
        "properties": {"card": {"type": "string"}, "billing": {"type": "string"}, "n": {}},
        "dependentRequired": {"card": ["billing"]},
        "dependentSchemas": {"n": {"properties": {"card": {"maxLength": 2}}}},
    }
    values = [{}, {"card": "x"}, {"card": "x", "billing": "y"}, {"billing": "y"},
              {"card": "xyz", "billing": "y", "n": 1}, {"card": "xy", "billing": "y", "n": 1},
              [], "text", 3]  # fmt: skip
    agrees_with_jsonschema(schema, values)


def test_pattern_properties() -> None:
    schema = {
        "properties": {"id": {"type": "integer"}, "x-id": {"type": "integer"}},
        "patternProperties": {"^x-": {"type": ["string", "integer"]}, "[0-9]$": {"minimum": 0}},
        "additionalProperties": False,
    }
    values = [{"x-a": "s"}, {"x-a": 1}, {"x-1": -1}, {"x-1": 1}, {"b1": -2}, {"b1": 3},
              {"b": 1}, {"id": 1}, {"id": 1, "x-id": 2}, {"x-id": "s"}]  # fmt: skip
    agrees_with_jsonschema(schema, values)


def test_decimal_bounds_are_exact() -> None:
    bounds = [None, "0", "1", "-1", "1.5", "-0.25", "0.05", "2.999"]
    texts = ["0", "1", "-1", "1.5", "1.50", "1.49", "1.51", "-0.25", "-0.2", "-0.26", "0.05",
             "0.049", "0.0500001", "2.999", "2.9991", "3", "-2", "0.5", "10.0"]  # fmt: skip
    for lo, hi, lo_strict, hi_strict, places in itertools.product(
        bounds, bounds, (False, True), (False, True), (None, 2)
    ):
        low = None if lo is None else (Fraction(Decimal(lo)), lo_strict)
        high = None if hi is None else (Fraction(Decimal(hi)), hi_strict)
        node = decimal_between(low, high, places=places, cap=None)
        automaton = Automaton(Grammar({"root": node}))
        for text in texts:
            x = Fraction(Decimal(text))
            want = low is None or (x > low[0] if lo_strict else x >= low[0])
            want = want and (high is None or (x < high[0] if hi_strict else x <= high[0]))
            want = want and (places is None or (x * 100).denominator == 1)
            want = want and not (text.startswith("-") and x == 0)
            assert automaton.accepts(text) == want, (lo, lo_strict, hi, hi_strict, places, text)


def test_multiple_of_decimal() -> None:
    schema = {"type": "number", "multipleOf": 0.01, "minimum": 0}
    for text, ok in [("1.25", True), ("1.2", True), ("3", True), ("1.250", True), ("1.255", False),
                     ("-1", False), ("1e2", False)]:  # fmt: skip
        assert accepts(schema, text) == ok, text
    with pytest.raises(UnsupportedConstraintError, match="multipleOf"):
        schema_grammar({"type": "number", "multipleOf": 0.25})


def test_numbers_without_bounds_end() -> None:
    """A model cannot write digits forever: the languages are finite per number."""
    big = str(2**63)
    assert accepts({"type": "integer"}, str(2**63 - 1)) and not accepts({"type": "integer"}, big)
    assert accepts({"type": "integer"}, str(-(2**63))) and accepts({"minimum": 10**25}, str(10**26))
    assert accepts({"type": "integer"}, big, unbounded_numbers=True)
    long_fraction = "0." + "3" * 21
    assert accepts({"type": "number"}, "0." + "3" * 20) and not accepts({}, long_fraction)
    assert not accepts({"type": "number", "minimum": 0.5}, long_fraction)
    assert not accepts({"type": "number"}, "1e1000") and accepts({"type": "number"}, "1e308")
    assert Automaton(build_grammar({"json_object": True, "unbounded_numbers": True})).accepts(
        "[" + "9" * 40 + "]"
    )
    with pytest.raises(UnsupportedConstraintError, match="unbounded_numbers"):
        build_grammar({"regex": "a", "unbounded_numbers": True})


def test_not_and_overlapping_one_of_by_complements() -> None:
    """`not` of `required`, of bounds, of types and of `properties` of those, and `oneOf`
    branches that may overlap when each branch's complement is expressible: exactly one branch
    must hold (the test objects list keys in the order the schemas declare them)."""
    values = [None, True, 0, 1, 1.5, 2, 2.5, 3, 4, 6, "s", [], {}]
    for names in itertools.chain.from_iterable(itertools.combinations("abc", n) for n in range(4)):
        for filling in itertools.product([1, "x"], repeat=len(names)):
            values.append(dict(zip(names, filling, strict=True)))
    values += [{"x": v} for v in values[:13]]
    for schema in [
        {"oneOf": [{"required": ["a"]}, {"required": ["b"]}]},
        {
            "properties": {"a": {}, "b": {}, "c": {}},
            "oneOf": [{"required": ["a"]}, {"required": ["b", "c"]}],
        },
        {"not": {"required": ["a", "b"]}},
        {"properties": {"a": {}}, "not": {"required": ["a"]}},
        {"oneOf": [{"maximum": 2}, {"maximum": 5}]},
        {"properties": {"x": {"oneOf": [{"minimum": 1}, {"exclusiveMaximum": 3}]}}},
        {"oneOf": [{"required": ["a"]}, True]},
        {"oneOf": [{"type": "string"}, {"type": ["string", "null"]}]},
        {"not": {"properties": {"a": {"type": "number", "minimum": 2}}}},
        {
            "oneOf": [
                {
                    "type": "object",
                    "required": ["a", "b"],
                    "properties": {"a": {"type": "string"}, "b": {}, "c": {}},
                },
                {
                    "type": "object",
                    "required": ["a", "c"],
                    "properties": {"a": {}, "b": {}, "c": {"maximum": 1}},
                },
            ]
        },
    ]:
        agrees_with_jsonschema(schema, values)


def test_property_names() -> None:
    values = [{}, {"a": 1}, {"ab": "s"}, {"abc": 1}, {"zz": 1}, {"x": 1, "xy": 2}, {"é": 1},
              {"bc": "s", "a": "t"}, 1, "s", None]  # fmt: skip
    for schema in [
        {"propertyNames": {"maxLength": 2}},
        {"propertyNames": {"pattern": "^[a-c]+$"}, "properties": {"ab": {"type": "integer"}}},
        {"propertyNames": {"enum": ["a", "bc"]}, "additionalProperties": {"type": "string"}},
        {"propertyNames": False},
        {"propertyNames": {"pattern": "^x"}, "patternProperties": {"y$": {"type": "integer"}}},
        {"propertyNames": {"const": "a"}, "required": ["b"]},
    ]:
        agrees_with_jsonschema(schema, values)


def test_long_max_length() -> None:
    """maxLength 32767 (common in real schemas) compiles as a counted repeat (a string that
    long is past the automaton's state budget to walk: edges are checked at small lengths)."""
    a = Automaton(schema_grammar({"type": "string", "maxLength": 32767}))
    assert a.accepts('"' + "é" * 2000 + '"') and not a.accepts('"a')
    short = Automaton(schema_grammar({"type": "string", "maxLength": 300}))
    assert short.accepts('"' + "é" * 300 + '"') and not short.accepts('"' + "a" * 301 + '"')
    with pytest.raises(UnsupportedConstraintError, match="maxLength"):
        schema_grammar({"type": "string", "maxLength": 1_000_000})


def test_unique_items_of_enum_values() -> None:
    values = [[], ["a"], ["a", "b"], ["b", "a"], ["a", "a"], ["a", "b", "c"], ["c", "b", "a", "b"],
              [1, 1.0], [1, True], [None, 2], ["x"], "s", 3]  # fmt: skip
    for schema in [
        {"type": "array", "uniqueItems": True, "items": {"enum": ["a", "b", "c"]}},
        {"uniqueItems": True, "items": {"enum": [1, 1.0, 2, None, True]}, "maxItems": 2},
        {"uniqueItems": True, "items": {"type": "string", "enum": ["a", 1, "b"]}, "minItems": 2},
    ]:
        agrees_with_jsonschema(schema, values)
    with pytest.raises(UnsupportedConstraintError, match="uniqueItems"):
        schema_grammar({"uniqueItems": True, "items": {"type": "string"}})
