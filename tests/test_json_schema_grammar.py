"""JSON Schema -> grammar: accepted and rejected instances per keyword, refusals, and a differential
test against `jsonschema` (instances serialized compactly, object keys in declared order)."""

from __future__ import annotations

import functools
import json
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxserve.grammar.automaton import Automaton
from jaxserve.grammar.ir import UnsupportedConstraintError
from jaxserve.grammar.json_schema import json_value_grammar, schema_grammar


@functools.cache
def _automaton(schema_text: str, whitespace: str = "compact") -> Automaton:
    return Automaton(schema_grammar(json.loads(schema_text), whitespace=whitespace))


def accepts(schema: Any, text: str, whitespace: str = "compact") -> bool:
    return _automaton(json.dumps(schema), whitespace).accepts(text)


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def check(schema: Any, good: list[str], bad: list[str], whitespace: str = "compact") -> None:
    for text in good:
        assert accepts(schema, text, whitespace), f"should accept {text!r}"
    for text in bad:
        assert not accepts(schema, text, whitespace), f"should reject {text!r}"


def refuses(schema: Any, keyword: str) -> None:
    with pytest.raises(UnsupportedConstraintError, match=keyword):
        schema_grammar(schema)


def test_any_value() -> None:
    a = Automaton(json_value_grammar())
    for text in ["null", "-0.5e+3", '"\\u00e9\\ud83d\\ude00\\/"', '[1,{"a":[]}]', "{}", "[]"]:
        assert a.accepts(text), text
    for text in ["01", " 1", "1 ", "[1,]", '"\\ud800"', '{"a"}', '"\x01"', "1.", "+1", "NaN"]:
        assert not a.accepts(text), text
    assert schema_grammar(True).rules["root"] == json_value_grammar().rules["root"]
    refuses(False, "no JSON value")  # an empty language cannot be generated


def test_whitespace() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "array"}}}
    good = ['{ "a" : [ 1 , 2 ] }', '{\n\t"a":[]\n}', "{ }", "{}", '{"a":[ ]}']
    check(schema, good, ['{"a":[1,  \n  2]}', ' {"a":[]}', '{"a":[]} '], whitespace="bounded")
    check(schema, ['{"a":[1,2]}'], ['{ "a":[]}', '{"a":[1, 2]}'])
    with pytest.raises(ValueError):
        schema_grammar(schema, whitespace="pretty")
    with pytest.raises(ValueError):
        schema_grammar(schema, whitespace="bounded", max_whitespace=-1)


def test_strings() -> None:
    check({"type": "string"}, ['""', '"a\\"b"', '"\\u0041"', '"😀é"'], ['"a', '"\n"', "1"])
    length = {"type": "string", "minLength": 2, "maxLength": 3}
    good = ['"ab"', '"é😀"', '"\\ud83d\\ude00x"', '"\\n\\t\\u0041"']
    check(length, good, ['"a"', '"abcd"', '"\\ud83d\\ude00"', '"\\\\\\\\\\\\\\\\"'])
    check({"type": "string", "maxLength": 0}, ['""'], ['"a"'])
    refuses({"type": "string", "minLength": 3, "maxLength": 2}, "no JSON value")
    check({"type": ["string", "null"], "maxLength": 0.0}, ['""', "null"], ['"a"'])


def test_pattern() -> None:
    check({"pattern": "b+c"}, ['"abbcd"', '"bc"', "12"], ['"ac"', '"cb"'])  # search semantics
    check({"pattern": '^"\\\\$'}, ['"\\"\\\\"'], ['"\\u0022\\\\"'])  # mandatory escapes only
    check({"pattern": "^\\n$"}, ['"\\n"'], ['"\\u000a"', '"n"'])
    both = {"type": "string", "pattern": "^a+$", "minLength": 2, "maxLength": 3}
    check(both, ['"aa"', '"aaa"'], ['"a"', '"aaaa"', '"ab"'])
    search = {"type": "string", "pattern": "x", "maxLength": 3}
    check(search, ['"x"', '"axb"', '"\\"x"'], ['"abcx"', '""', '"ab"'])
    two = {"allOf": [{"pattern": "^[a-c]+$"}, {"pattern": "b"}], "type": "string"}
    check(two, ['"abc"', '"b"'], ['"ac"', '"abd"'])
    refuses({"pattern": "(?=a)"}, "pattern")


def test_formats() -> None:
    check(
        {"format": "date"},
        ['"2024-02-29"', '"2000-02-29"', '"2023-12-31"', '"2023-04-30"'],
        ['"1900-02-29"', '"2023-02-29"', '"2023-04-31"', '"2023-13-01"', '"2023-1-01"'],
    )
    check(
        {"format": "time"},
        ['"23:59:60Z"', '"15:59:60.5-08:00"', '"00:59:60+01:00"', '"12:00:00.123z"'],
        ['"23:58:60Z"', '"15:59:60+08:00"', '"24:00:00Z"', '"12:00:00"', '"12:00:00+24:00"'],
    )
    check({"format": "date-time"}, ['"2023-01-01T00:00:00+05:30"'], ['"2023-01-01 00:00:00Z"'])
    check({"format": "uuid"}, ['"2EB8AA08-AA98-11EA-B4AA-73B441D16380"'], ['"2eb8aa08aa98"'])
    check({"format": "ipv4"}, ['"0.0.0.0"', '"255.255.255.255"'], ['"256.1.1.1"', '"01.1.1.1"'])
    check({"format": "email"}, ['"a.b+c@ex-ample.org"'], ['"a@b@c"', '"a..b@c"', '"@c"'])
    check({"format": "uri"}, ['"https://x.org/a?b#c"', '"urn:isbn:1"'], ['"/relative"', '"a b:"'])
    check({"format": "date", "type": "integer"}, ["1"], ['"2023-01-01"'])  # strings only
    check({"format": "hostname"}, ['"a-b.example.org"', '"x"'], ['"-a.org"', '"a..b"', '"a_b"'])
    refuses({"format": "idn-hostname"}, "idn-hostname")  # defined by JSON Schema, not built


def test_integers() -> None:
    schema = {"type": "integer", "minimum": -15, "exclusiveMaximum": 1234}
    a = _automaton(json.dumps(schema))
    for i in range(-40, 1300):
        assert a.accepts(str(i)) == (-15 <= i < 1234), i
    check(schema, ["-0"], ["05", "1e2", "5.5", "-", "5.0"])  # integers spelled as integers
    big = {"type": "integer", "minimum": 10**20}
    check(big, [str(10**20), str(10**21 + 7)], [str(10**20 - 1), "-" + str(10**21)])
    check({"type": "integer", "exclusiveMinimum": 1.5, "maximum": 3.9}, ["2", "3"], ["1", "4"])
    check({"type": "integer", "minimum": 0, "maximum": 0}, ["0", "-0"], ["1", "-1"])
    check({"type": "integer", "exclusiveMinimum": 0}, ["1"], ["0", "-0"])
    check({"type": "number", "multipleOf": 1}, ["2"], ["2.5", "2.0"])
    check({"type": "integer", "multipleOf": 0.5}, ["3"], ["3.5"])
    refuses({"type": "integer", "multipleOf": 3}, "multipleOf")


def test_numbers() -> None:
    check({"type": "number"}, ["1", "-0.5", "1E+2", "0.0e0"], ["01", ".5", "1.", "- 1"])
    check({"minimum": 0}, ["0", "-0.0", "1e-9", '"s"'], ["-1e-9", "-0.001"])
    check({"exclusiveMinimum": 0}, ["1e-9", "0.01"], ["0", "-0", "0.0e5", "-1"])
    check({"exclusiveMaximum": 0, "type": "number"}, ["-0.5"], ["0", "0.5"])
    check({"minimum": 0, "maximum": 0}, ["0", "-0.0e3"], ["1", "-1"])
    check({"type": "number", "minimum": 1}, ["1", "1.5", "20"], ["0.99", "-1", "1e3"])
    check({"maximum": 2.5}, ["2.5", "2.49", "-7"], ["2.51", "3"])  # plain decimals only


def test_objects() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
        "required": ["b"],
    }
    good = ['{"b":1}', '{"a":"x","b":1}', '{"b":1,"c":null}', '{"a":"","b":2,"c":[],"d":{}}']
    bad = ['{"a":"x"}', '{"b":1,"a":"x"}', '{"b":1,"b":2}', '{"b":1,"a":1}', "{}", '{"c":1,"b":1}']
    check(schema, good, bad + ['{"b":1,"c":1,"a":"x"}'])  # extra keys may not reuse declared names
    closed = {**schema, "additionalProperties": False}
    check(closed, ['{"b":1}', '{"a":"x","b":1}'], ['{"b":1,"c":null}'])
    typed = {**schema, "additionalProperties": {"type": "boolean"}}
    check(typed, ['{"b":1,"c":true,"d":false}'], ['{"b":1,"c":1}'])
    check({"properties": {"a": False}}, ["{}", '{"b":1}'], ['{"a":1}'])
    check(
        {"properties": {"x": {"required": ["a"], "properties": {"a": False}}}}, ["{}"], ['{"x":{}}']
    )
    check({"required": ["x"], "additionalProperties": {"type": "null"}}, ['{"x":null}'], ["{}"])
    counted = {"properties": {"a": {}, "b": {}}, "minProperties": 1, "maxProperties": 2}
    good = ['{"a":1}', '{"b":1,"c":1}', '{"x":1,"y":2}', '{"a":1,"b":2}']
    check(counted, good, ["{}", '{"a":1,"b":2,"c":3}', '{"x":1,"y":2,"z":3}'])
    check({"properties": {"a~/b": {"type": "null"}}}, ['{"a~/b":null}'], ['{"a~/b":1}'])
    pattern = {"patternProperties": {"^x": {"type": "integer"}}}
    check(pattern, ['{"x1":1}', '{"y":"a"}'], ['{"x":"a"}'])
    check({"dependentRequired": {"a": ["b"]}}, ['{"a":1,"b":2}', '{"b":1}', "3"], ['{"a":1}'])
    check({"propertyNames": {"maxLength": 1}}, ['{"a":1}', "{}"], ['{"ab":1}'])
    refuses({"propertyNames": {"minimum": 3}}, "propertyNames")
    refuses({"minProperties": 5000}, "minProperties")


def test_arrays() -> None:
    schema = {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 3}
    check(schema, ["[1,2]", "[1,2,3]"], ["[1]", "[1,2,3,4]", '[1,"a"]', "[]"])
    prefix = {"prefixItems": [{"type": "string"}, {"type": "null"}], "items": {"type": "integer"}}
    check(prefix, ["[]", '["a"]', '["a",null,1,2]'], ["[1]", '["a",1]', '["a",null,"b"]'])
    closed = {"prefixItems": [{"type": "string"}], "items": False, "minItems": 1}
    check(closed, ['["a"]'], ["[]", '["a","b"]'])
    check({"uniqueItems": True, "maxItems": 1}, ["[]", "[1]"], ["[1,1]"])
    check({"uniqueItems": False}, ["[1,1]"], [])
    refuses({"uniqueItems": True}, "uniqueItems")
    refuses({"contains": {"type": "integer"}}, "contains")
    refuses({"maxItems": 100_000}, "maxItems")
    check({"items": [{"type": "integer"}]}, ["[1]", '[1,"a"]'], ['["a"]'])  # draft-04 tuple


def test_enum_and_const() -> None:
    schema = {"enum": [1, "a", [1, 2], {"x": None}, None, 2.5, 3.0, 1e-05]}
    good = ["1", '"a"', "[1,2]", '{"x":null}', "null", "2.5", "3", "0.00001", "1e-05"]
    check(schema, good, ["1.0", "2", '"b"', "[2,1]", "true", "1e0", "2.50", "3.0"])
    check({"enum": [1, "ab", "abcd", 7], "minimum": 3, "maxLength": 3}, ["7", '"ab"'], ["1"])
    check({"const": "a\nb"}, ['"a\\nb"'], ['"a\\u000ab"'])  # json.dumps spelling
    check({"const": False, "enum": [False, 0]}, ["false"], ["0"])
    refuses({"enum": [1, 2], "const": 3}, "no JSON value")
    check({"enum": [{"a": 1, "b": 2}]}, ['{"a":1,"b":2}'], ['{"b":2,"a":1}'])


def test_combinators() -> None:
    check({"anyOf": [{"type": "string"}, {"minimum": 0}]}, ['"a"', "0", "[]"], ["-1"])
    check({"oneOf": [{"type": "string"}, {"type": "integer"}]}, ['"a"', "1"], ["null"])
    tagged = {
        "oneOf": [
            {"properties": {"k": {"const": "a"}, "v": {"type": "integer"}}, "required": ["k"]},
            {"properties": {"k": {"const": "b"}, "v": {"type": "string"}}, "required": ["k"]},
        ],
        "type": "object",
    }
    check(tagged, ['{"k":"a","v":1}', '{"k":"b","v":"s"}'], ['{"k":"a","v":"s"}', "{}"])
    refuses({"oneOf": [{"type": "integer"}, {"minimum": 2}]}, "oneOf")
    merged = {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "integer"}}},
            {"properties": {"a": {"minimum": 2}, "b": {}}, "required": ["a"]},
        ]
    }
    check(merged, ['{"a":2}', '{"a":3,"b":[]}'], ['{"a":1}', "{}", '{"b":1}'])
    refuses({"allOf": [{"type": "string"}, {"type": "integer"}]}, "no JSON value")
    refuses({"allOf": [{"multipleOf": 2}, {"multipleOf": 3}]}, "multipleOf")
    check({"not": {"type": "null"}}, ["1", '"a"'], ["null"])
    refuses({"not": {}}, "no JSON value")
    check({"not": {"minimum": 3}}, ["2.5", "-1"], ["3", "4", '"s"', "null"])
    check({"not": {"minimum": 3, "maximum": 5}}, ["2.5", "6"], ["3", "5", '"s"'])
    refuses({"not": {"pattern": "a"}}, "not")
    refuses({"if": {"type": "string"}, "then": {"minLength": 1}}, "if")


def test_refs() -> None:
    tree = {
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "v": {"type": "integer"},
                    "kids": {"items": {"$ref": "#/$defs/node"}},
                },
                "additionalProperties": False,
            }
        },
        "$ref": "#/$defs/node",
    }
    check(tree, ['{"v":1,"kids":[{"kids":[{"v":2}]},{}]}'], ['{"x":1}', '{"kids":[{"x":1}]}'])
    root = {"type": "array", "items": {"$ref": "#"}}
    check(root, ["[]", "[[],[[]]]"], ["[1]"])
    legacy = {
        "definitions": {"a b": {"type": "null"}},
        "properties": {"x": {"$ref": "#/definitions/a%20b"}},
    }
    check(legacy, ['{"x":null}'], ['{"x":1}'])
    siblings = {"$defs": {"s": {"type": "string"}}, "$ref": "#/$defs/s", "maxLength": 1}
    check(siblings, ['"a"'], ['"ab"', "1"])
    refuses({"$ref": "https://example.com/s.json"}, r"\$ref")
    refuses({"$ref": "#foo"}, r"\$ref")
    refuses({"$ref": "#/$defs/missing"}, r"\$ref")
    refuses({"$ref": "#"}, r"\$ref")
    refuses({"anyOf": [{"$ref": "#"}, {"type": "string"}]}, r"\$ref")


def test_keywords() -> None:
    check({"type": "string", "nullable": True}, ['"a"', "null"], ["1"])
    annotated = {"title": "t", "description": "d", "default": 1, "examples": [1], "$comment": ""}
    check({**annotated, "type": "integer", "deprecated": True, "$id": "urn:x"}, ["1"], ['"a"'])
    check({"type": ["string", "null"]}, ['"a"', "null"], ["1"])
    check({"unevaluatedProperties": False, "properties": {"a": {}}}, ['{"a":1}'], ['{"b":1}'])
    check({"type": "string", "x-custom": 1}, ['"a"'], ["1"])  # unknown keywords: annotations
    refuses({"type": "strin"}, "type")
    refuses({"$schema": "http://example.com/my-meta"}, r"\$schema")


# ---- differential test against jsonschema -------------------------------------------------------

KEYS = (
    "abcde"  # object schemas below declare a prefix of KEYS, so sorted keys are in declared order
)
SCHEMAS = [
    {
        "type": "object",
        "properties": {
            "a": {"type": "integer", "minimum": -3, "maximum": 20},
            "b": {"maxLength": 2},
        },
        "required": ["a"],
        "additionalProperties": {"type": "boolean"},
    },
    {
        "type": "array",
        "prefixItems": [{"type": "string"}, {"type": "null"}],
        "items": {"type": "integer"},
        "minItems": 1,
        "maxItems": 4,
    },
    {"anyOf": [{"type": "string", "minLength": 2}, {"type": "integer", "exclusiveMinimum": 0}]},
    {"enum": [1, "a", None, [1, 2], {"a": 1}], "type": ["integer", "array", "object", "null"]},
    {
        "$defs": {
            "t": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"items": {"$ref": "#/$defs/t"}}},
                "additionalProperties": False,
            }
        },
        "$ref": "#/$defs/t",
    },
    {
        "properties": {"a": {"type": "number", "minimum": 0}, "b": {"const": True}},
        "minProperties": 1,
        "maxProperties": 2,
    },
    {"type": "string", "pattern": "[a-c]{2}", "maxLength": 4},
    {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "integer"}}},
            {"properties": {"a": {"minimum": 2}, "b": {"type": "array"}}, "required": ["a"]},
        ]
    },
    {"oneOf": [{"type": "string"}, {"type": "integer"}, {"type": "array", "maxItems": 1}]},
    {"type": ["number", "boolean"], "not": {"type": "boolean"}},
    {
        "properties": {"a": {"type": "integer"}},
        "patternProperties": {"^[bc]": {"type": "string"}, "c": {"maxLength": 1}},
        "additionalProperties": {"type": "null"},
    },
    {
        "properties": {"a": {}, "b": {"type": "integer"}},
        "dependentRequired": {"a": ["b"]},
        "dependentSchemas": {"b": {"properties": {"c": {"type": "boolean"}}}},
    },
    {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "definitions": {"s": {"type": "string"}},
        "properties": {
            "a": {"type": "number", "minimum": 1, "exclusiveMinimum": True, "maximum": 1.75},
            "b": {"items": [{"type": "integer"}], "additionalItems": {"$ref": "#/definitions/s"}},
            "c": {"$ref": "#/definitions/s", "maxLength": 1},  # ignored beside $ref here
        },
        "dependencies": {"a": ["b"], "c": {"required": ["d"]}},
        "x-vendor": {"type": "integer"},
    },
]

_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-30, 30)
    | st.floats(-1e15, 1e15, allow_nan=False)
    | st.text(alphabet='abc"\\\n\x01é😀', max_size=5)
)
VALUES = st.recursive(
    _leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS), inner),
    max_leaves=12,
)


def _near(s: Any, root: dict) -> st.SearchStrategy:
    """Values close to valid under `s` (one of the SCHEMAS); each level is sometimes noise."""
    if not isinstance(s, dict):
        return VALUES
    if "$ref" in s:
        target = root
        for token in s["$ref"].removeprefix("#/").split("/"):
            target = target[token]
        return st.deferred(lambda: _near(target, root))
    types = s.get("type", [])
    types = [types] if isinstance(types, str) else types
    options = [_near(b, root) for k in ("anyOf", "oneOf", "allOf") for b in s.get(k, [])]
    options += [st.sampled_from(s["enum"])] if "enum" in s else []
    options += [st.just(s["const"])] if "const" in s else []
    options += [st.integers(-5, 25)] if {"integer", "number"} & set(types) else []
    options += [st.floats(-2, 2), st.integers(-2, 2)] if "minimum" in s else []
    options += [st.text(alphabet="abcd", max_size=5)] if "string" in types else []
    options += [st.booleans()] if "boolean" in types else []
    if "properties" in s:
        props = s["properties"]
        declared = st.fixed_dictionaries({}, optional={k: _near(v, root) for k, v in props.items()})
        extra = _near(s.get("additionalProperties", True), root)
        extras = st.dictionaries(st.sampled_from(KEYS[len(props) :]), extra, max_size=2)
        options.append(st.tuples(declared, extras).map(lambda t: {**t[0], **t[1]}))
    if "prefixItems" in s or "items" in s or "array" in types:
        prefix = st.tuples(*(_near(p, root) for p in s.get("prefixItems", [])))
        rest = st.lists(_near(s.get("items", True), root), max_size=3)
        whole = st.tuples(prefix, rest).map(lambda t: [*t[0], *t[1]])
        options.append(whole.flatmap(lambda v: st.integers(0, len(v)).map(lambda n: v[:n])))
    good = st.one_of(*options) if options else VALUES
    return st.one_of(good, good, good, VALUES)


def _our_spelling(value: Any) -> Any:
    """Keys in declared order and integer values as ints (the documented narrowings)."""
    if isinstance(value, list):
        return [_our_spelling(v) for v in value]
    if isinstance(value, dict):
        return {k: _our_spelling(value[k]) for k in sorted(value, key=KEYS.index)}
    return int(value) if isinstance(value, float) and value.is_integer() else value


@pytest.mark.parametrize("index", range(len(SCHEMAS)))
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_matches_jsonschema(index: int, data: st.DataObject) -> None:
    schema = SCHEMAS[index]
    value = _our_spelling(data.draw(_near(schema, schema)))
    expected = jsonschema.validators.validator_for(schema)(schema).is_valid(value)
    assert accepts(schema, dumps(value)) == expected, dumps(value)
