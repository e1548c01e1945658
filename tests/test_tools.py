"""Tool calling on the host: the IR -> GBNF printer, the tool-call constraint of each format, the
lazy matcher behind tool_choice "auto", and the parser that takes calls back out of the text."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from jaxserve.grammar import (
    Automaton,
    Grammar,
    GrammarCompiler,
    LazyMatcher,
    TokenVocab,
    matches,
    parse_gbnf,
    to_gbnf,
)
from jaxserve.grammar.automaton import DEAD
from jaxserve.grammar.ir import (
    NOTHING,
    Ref,
    Repeat,
    Seq,
    UnsupportedConstraintError,
    chars,
    lit,
    seq,
    star,
)
from jaxserve.grammar.spec import spec_key
from jaxserve.grammar.tool_parser import CallDelta, ToolCallParser, parse_tool_calls
from jaxserve.grammar.tools import (
    FORMATS,
    ToolError,
    parse_tool_choice,
    parse_tools,
    tool_constraint,
    tool_format,
)
from jaxserve.sampling_params import SamplingParams

GBNF_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "conformance" / "gbnf"
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 6},
        "unit": {"enum": ["c", "f"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "ping", "description": "no arguments"}},
]
SCHEMAS = {"get_weather": WEATHER, "ping": {"type": "object", "additionalProperties": False}}


# ---- IR -> GBNF --------------------------------------------------------------------------------

ODD = Grammar(
    {
        "start.rule": seq(lit('q"\\\n\t\x01é€😀'), Repeat(lit("ab"), 2, 5), Ref("x/y")),
        "x/y": seq(chars([(ord("-"), ord("-")), (ord("]"), ord("^")), (0, 8)]), star(NOTHING)),
        "root": Seq(()),
        "unused": Repeat(chars([(0x80, 0x10FFFF)], negate=True), 1, None),
    },
    start="start.rule",
)


def test_printed_gbnf_parses_back_to_the_same_language():
    text = to_gbnf(ODD)
    assert text.startswith("root ::= ")
    back = parse_gbnf(text)
    a, b = Automaton(ODD), Automaton(back)
    samples = ['q"\\\n\t\x01é€😀abab-', 'q"\\\n\t\x01é€😀' + "ab" * 5 + "^", "abab-", "", "q"]
    samples += ['q"\\\n\t\x01é€😀' + "ab" * 6 + "]"]
    for s in samples:
        assert a.accepts(s) == b.accepts(s), s
    assert b.accepts(samples[0]) and not b.accepts(samples[-1])


@pytest.mark.skipif(not GBNF_CORPUS.is_dir(), reason="shared/conformance/gbnf is not beside main")
def test_llama_cpp_grammars_round_trip_to_identical_rules():
    for path in sorted(GBNF_CORPUS.glob("*.gbnf")):
        grammar = parse_gbnf(path.read_text())
        again = parse_gbnf(to_gbnf(grammar))
        assert again.rules["root"] == grammar.rules[grammar.start], path.name
        assert len(again.rules) == len(grammar.rules)


# ---- tools and tool_choice -----------------------------------------------------------------------


def test_tools_and_tool_choice_are_validated_naming_the_field():
    tools = parse_tools(TOOLS)
    assert [t.name for t in tools] == ["get_weather", "ping"]
    assert tools[1].openai()["function"]["parameters"]["properties"] == {}
    bad = [
        ([{"type": "function", "function": {"name": "a b"}}], "tools[0].function.name"),
        ([{"type": "fn", "function": {"name": "f"}}], "tools[0].type"),
        ([TOOLS[0], TOOLS[0]], "tools[1].function.name"),
        (
            [{"type": "function", "function": {"name": "f", "parameters": []}}],
            "tools[0].function.parameters",
        ),
        ([{"type": "function", "function": {"name": "f", "extra": 1}}], "tools[0].function.extra"),
        ([{"type": "function"}], "tools[0].function"),
    ]
    for value, param in bad:
        with pytest.raises(ToolError) as error:
            parse_tools(value)
        assert error.value.param == param
    assert parse_tool_choice(None, tools) == "auto" and parse_tool_choice(None, []) == "none"
    named = {"type": "function", "function": {"name": "ping"}}
    assert parse_tool_choice(named, tools) == "named:ping"
    for choice, given in [("sometimes", tools), ("required", []), ({"function": "ping"}, tools)]:
        with pytest.raises(ToolError) as error:
            parse_tool_choice(choice, given)
        assert error.value.param == "tool_choice"
    with pytest.raises(ToolError, match="not among the tools"):
        parse_tool_choice({"type": "function", "function": {"name": "nope"}}, tools)


def test_the_format_follows_the_chat_template():
    assert tool_format(None) == "hermes"
    assert tool_format("{{ '<|im_start|>' }}") == "hermes"
    assert tool_format("<|start_header_id|>") == "llama3"
    assert tool_format("<start_of_turn>") == "gemma"
    assert tool_format("[func_name1(params_name1=params_value1, ...)]") == "pythonic"
    assert tool_format("plain {{ messages }}") == "generic"


def _sample(automaton: Automaton, rng: random.Random, limit: int = 400) -> str | None:
    """A random string of the language (ASCII where there is a choice), or None if too long."""
    state, out = automaton.start, bytearray()
    while len(out) < limit:
        if automaton.accepting[state] and rng.random() < 0.3:
            return out.decode()
        automaton.fill_rows([state])
        live = [b for b in np.flatnonzero(automaton.table[state] != DEAD).tolist() if b < 0x80]
        if not live:
            return out.decode() if automaton.accepting[state] else None
        closing = [b for b in live if chr(b) in '"}],']
        b = rng.choice(closing) if closing and rng.random() < 0.5 else rng.choice(live)
        out.append(b)
        state = automaton.step(state, b)
    return None


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("parallel", [True, False])
def test_strings_of_the_constraint_parse_into_calls_that_validate(fmt, parallel):
    tools = parse_tools(TOOLS)
    spec = tool_constraint(tools, "required", format=fmt, parallel_tool_calls=parallel)
    assert set(spec) == {"grammar"}
    automaton = Automaton(parse_gbnf(spec["grammar"]))
    rng = random.Random(0)
    counts = set()
    for _ in range(40):
        text = _sample(automaton, rng)
        if text is None:
            continue
        content, calls = parse_tool_calls(text, fmt)
        assert content is None, text
        assert calls and (parallel or len(calls) == 1), text
        counts.add(len(calls))
        for call in calls:
            assert call["type"] == "function" and call["id"].startswith("call_")
            arguments = json.loads(call["function"]["arguments"])
            jsonschema.validate(arguments, SCHEMAS[call["function"]["name"]])
    assert len(counts) > 1 if parallel else counts == {1}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_the_constraint_accepts_calls_and_refuses_wrong_ones(fmt):
    tools = parse_tools(TOOLS)
    call_format = FORMATS[fmt]
    good = call_format.calls([("get_weather", '{"city":"Oslo","unit":"c"}')])
    two = call_format.calls([("ping", "{}"), ("get_weather", '{"city":"","unit":"f","days":3}')])
    wrong = [
        call_format.calls([("get_weather", '{"city":"Oslo"}')]),  # a required key missing
        call_format.calls([("get_weather", '{"city":"Oslo","unit":"k"}')]),  # not in the enum
        call_format.calls([("get_wether", "{}")]),  # no such tool
        call_format.calls([("ping", '{"x":1}')]),  # no arguments allowed
    ]
    required = tool_constraint(tools, "required", format=fmt)
    single = tool_constraint(tools, "required", format=fmt, parallel_tool_calls=False)
    named = tool_constraint(tools, "named:ping", format=fmt)
    assert matches(required, good) and matches(required, two)
    assert matches(single, good) and not matches(single, two)
    assert not any(matches(required, w) for w in wrong)
    assert matches(named, call_format.calls([("ping", "{}")])) and not matches(named, good)
    assert not matches(required, "Sure. " + good) and not matches(required, "")
    auto = tool_constraint(tools, "auto", format=fmt)
    lead = [call_format.lead] if call_format.lead else []
    assert auto["triggers"] == [call_format.trigger, *lead]
    assert good.startswith(call_format.trigger)
    if call_format.lead:  # the optional marker before the calls (Llama's <|python_tag|>)
        assert matches(required, call_format.lead + good)
        assert parse_tool_calls("Sure. " + call_format.lead + two, fmt)[0] == "Sure."
    assert tool_constraint(tools, "none", format=fmt) is None


def test_triggers_ride_on_the_spec_without_changing_the_compiled_grammar():
    grammar = 'root ::= "<a>" [xy]+'
    assert spec_key({"grammar": grammar, "triggers": ["<a>"]}) == spec_key({"grammar": grammar})
    params = SamplingParams(grammar=grammar, grammar_triggers=["<a>"])
    assert params.grammar_triggers == ("<a>",)
    assert params.constraint == {"grammar": grammar, "triggers": ["<a>"]}
    for kwargs in ({"grammar_triggers": ("<a>",)}, {"grammar": grammar, "grammar_triggers": ("",)}):
        with pytest.raises(ValueError, match="grammar_triggers"):
            SamplingParams(**kwargs)


# ---- the lazy matcher ----------------------------------------------------------------------------

TOKENS = [
    b"",
    b"a",
    b"b",
    b"<",
    b"tool",
    b"_call",
    b">",
    b">x",
    b">\n",
    b"<tool_call>",
    b"x",
    b"\n",
]
TOKENS += [b"y", b"</tool_call>", b"hi <tool_call>\nx"]
STOP = 0
LAZY_GBNF = 'root ::= "<tool_call>\\n" [xy]+ "</tool_call>"'


def _lazy(width: int = 40) -> tuple[LazyMatcher, TokenVocab]:
    vocab = TokenVocab(TOKENS, [STOP], width=width)
    compiled = GrammarCompiler(vocab).compile({"grammar": LAZY_GBNF})
    return LazyMatcher(compiled, ["<tool_call>"]), vocab


def _allowed(matcher: LazyMatcher, vocab: TokenVocab) -> set[int]:
    bits = np.unpackbits(matcher.bitmask().view(np.uint8), bitorder="little")
    return set(np.flatnonzero(bits).tolist())


def _ids(*pieces: bytes) -> list[int]:
    return [TOKENS.index(p) for p in pieces]


def test_lazy_matcher_is_free_until_the_trigger_then_follows_the_grammar():
    matcher, vocab = _lazy()
    everything = set(range(len(TOKENS)))
    assert _allowed(matcher, vocab) == everything  # stop id too; padded ids 15..39 never
    for token in _ids(b"a", b"b", b"\n"):
        assert matcher.accept_token(token) and not matcher.is_triggered
    for token in _ids(b"<", b"tool", b"_call"):
        assert matcher.accept_token(token) and not matcher.is_triggered
    # ">x" would complete the trigger with bytes the grammar refuses: masked and refused.
    assert _allowed(matcher, vocab) == everything - set(_ids(b">x"))
    assert not matcher.accept_token(_ids(b">x")[0])
    assert matcher.accept_token(_ids(b">\n")[0]) and matcher.is_triggered
    assert _allowed(matcher, vocab) == set(_ids(b"x", b"y"))
    assert matcher.accept_token(_ids(b"x")[0]) and not matcher.is_complete()
    assert matcher.accept_token(_ids(b"</tool_call>")[0])
    assert matcher.is_complete() and _allowed(matcher, vocab) == {STOP}
    assert matcher.accept_token(STOP) and matcher.is_terminated()
    assert _allowed(matcher, vocab) == set()


def test_lazy_matcher_rolls_back_across_the_trigger_and_stops_freely():
    matcher, vocab = _lazy()
    matcher.accept_token(_ids(b"a")[0])
    matcher.accept_token(_ids(b"hi <tool_call>\nx")[0])  # the trigger inside one token
    assert matcher.is_triggered and _allowed(matcher, vocab) == set(
        _ids(b"x", b"y", b"<", b"</tool_call>")
    )
    matcher.rollback(1)
    assert not matcher.is_triggered and matcher.inner.state == matcher.inner.grammar.automaton.start
    assert matcher.accept_token(_ids(b"<tool_call>")[0]) and matcher.is_triggered
    matcher.rollback(2)
    assert matcher.accept_token(STOP) and matcher.is_terminated()
    assert not matcher.accept_token(_ids(b"a")[0])


# ---- the parser ----------------------------------------------------------------------------------


def _streamed(text: str, fmt: str, step: int) -> tuple[str, list[dict]]:
    parser = ToolCallParser(fmt)
    events = []
    for i in range(0, len(text), step):
        events += parser.feed(text[i : i + step])
    events += parser.finish()
    content = "".join(e for e in events if isinstance(e, str))
    calls: list[dict] = []
    for event in events:
        if isinstance(event, CallDelta) and event.id is not None:
            assert event.index == len(calls) and event.arguments == ""
            calls.append({"name": event.name, "arguments": ""})
        elif isinstance(event, CallDelta):
            calls[event.index]["arguments"] += event.arguments
    markup = ("<tool", "[TOOL_CALLS]", "<|python_tag|>")
    assert not any(isinstance(e, str) and any(m in e for m in markup) for e in events)
    return content, calls


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_streamed_calls_reassemble_into_the_parsed_calls(fmt):
    arguments = '{"q": "a \\"}\\" b", "n": [1, {"x": "]"}], "t": true}'
    text = "Let me check. " + FORMATS[fmt].calls([("search", arguments), ("ping", "{}")])
    content, calls = parse_tool_calls(text, fmt)
    assert content == "Let me check."
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        ("search", arguments),
        ("ping", "{}"),
    ]
    for step in (1, 2, 5, 1000):
        streamed_content, streamed = _streamed(text, fmt, step)
        assert streamed_content == content
        assert [(c["name"], c["arguments"]) for c in streamed] == [
            (c["function"]["name"], c["function"]["arguments"]) for c in calls
        ]


def test_text_that_is_not_a_call_stays_content():
    assert parse_tool_calls("plain answer", "hermes") == ("plain answer", [])
    assert parse_tool_calls("", "hermes") == (None, [])
    assert parse_tool_calls("a <tool_cal", "hermes") == ("a <tool_cal", [])
    assert parse_tool_calls("<tool_call> oops", "hermes") == ("<tool_call> oops", [])
    assert parse_tool_calls('{"name": 5}', "llama3") == ('{"name": 5}', [])
    content, calls = parse_tool_calls('{"name": "f", "parameters": {"a": 1}}', "llama3")
    assert content is None and calls[0]["function"]["arguments"] == '{"a": 1}'
    parser = ToolCallParser("hermes")
    assert parser.feed("Hi <tool") == ["Hi"]  # the maybe-trigger is held back
    assert parser.feed("box") == [" <toolbox"]
    truncated = '<tool_call>\n{"name": "f", "arguments": {"a": '
    content, calls = parse_tool_calls(truncated, "hermes")
    assert content is None and calls[0]["function"]["arguments"] == '{"a": '
    assert re.fullmatch(r"call_[0-9a-f]{24}", calls[0]["id"])


def test_the_format_of_qwen3_llama31_mistral_gemma3_templates():
    qwen3 = "{%- if tools %}<|im_start|>system ... <tool_call>\\n{{ tool_call | tojson }}"
    llama31 = "<|start_header_id|>ipython<|end_header_id|> {{- '<|python_tag|>' }}"
    mistral = "{%- if tools %}[AVAILABLE_TOOLS]{{ tools|tojson }}[/AVAILABLE_TOOLS]"
    gemma3 = "{{ '<start_of_turn>' + role + '\\n' }}"
    assert [tool_format(t) for t in (qwen3, llama31, mistral, gemma3, None)] == [
        "hermes",
        "llama3",
        "mistral",
        "gemma",
        "hermes",
    ]


def test_mistral_calls_parse_streamed():
    text = '[TOOL_CALLS][{"name": "ping", "arguments": {}}, {"name": "f", "arguments": {"a": 1}}]'
    content, calls = parse_tool_calls(text, "mistral")
    assert content is None
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        ("ping", "{}"),
        ("f", '{"a": 1}'),
    ]
    pairs = [{"name": "ping", "arguments": "{}"}, {"name": "f", "arguments": '{"a": 1}'}]
    assert _streamed(text, "mistral", 3)[1] == pairs


def test_mistral_v11_calls_parse_streamed_and_follow_their_template():
    """Mistral's v11 templates write `[TOOL_CALLS]name[ARGS]{...}` for each call."""
    v11 = "{%- for c in m.tool_calls %}[TOOL_CALLS]{{ c.name }}[ARGS]{{ c.arguments }}"
    assert tool_format(v11) == "mistral_v11"
    text = 'On it. [TOOL_CALLS]ping[ARGS]{}[TOOL_CALLS]f[ARGS]{"a": [1, {"b": "]"}]}'
    content, calls = parse_tool_calls(text, "mistral_v11")
    assert content == "On it."
    pairs = [
        {"name": "ping", "arguments": "{}"},
        {"name": "f", "arguments": '{"a": [1, {"b": "]"}]}'},
    ]
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        (p["name"], p["arguments"]) for p in pairs
    ]
    for step in (1, 2, 5):
        assert _streamed(text, "mistral_v11", step)[1] == pairs
    # a trigger that starts no call is content
    assert parse_tool_calls("[TOOL_CALLS] no call", "mistral_v11") == ("[TOOL_CALLS] no call", [])
    assert parse_tool_calls("[TOOL_CALLS]a b[ARGS]{}", "mistral_v11")[1] == []


def test_gemma3_without_an_embedded_template_gets_its_tool_code_format():
    """The Gemma 3 GGUF carries no chat template: its architecture's template is used, and its
    tools go in Gemma's ```tool_code blocks, not ChatML's <tool_call>."""
    from jaxserve.text.chat_template import ChatTemplate

    assert tool_format(ChatTemplate(None, architecture="gemma3").source) == "gemma"
    assert tool_format(ChatTemplate(None).source) == "hermes"  # ChatML


@pytest.mark.parametrize("fmt", ["pythonic", "gemma"])
def test_python_style_calls(fmt):
    """Keyword arguments in declared order, Python's True / False / None, JSON back out."""
    schema = {
        "type": "object",
        "properties": {
            "q": {"type": "string"},
            "flag": {"type": "boolean"},
            "none": {"type": "null"},
            "n": {"type": "array", "items": {"type": "integer"}},
        },
        "required": ["q"],
    }
    tools = parse_tools([{"type": "function", "function": {"name": "f", "parameters": schema}}])
    spec = tool_constraint(tools, "required", format=fmt)
    call = FORMATS[fmt].calls([("f", '{"q": "a\\"b)", "flag": false, "none": null, "n": [1]}')])
    assert "flag=False, none=None, n=[1]" in call
    assert matches(spec, call)
    assert not matches(spec, call.replace("False", "false"))
    assert not matches(spec, FORMATS[fmt].calls([("f", '{"flag": true}')]))  # q is required
    assert matches(spec, FORMATS[fmt].calls([("f", '{"q": ""}')]))
    _, calls = parse_tool_calls(call, fmt)
    assert json.loads(calls[0]["function"]["arguments"]) == {
        "q": 'a"b)',
        "flag": False,
        "none": None,
        "n": [1],
    }
    # what a model may write unconstrained: single quotes, JSON literals
    loose = call.replace('"a\\"b)"', "'x'").replace("False", "false")
    args = json.loads(parse_tool_calls(loose, fmt)[1][0]["function"]["arguments"])
    assert args["q"] == "x" and args["flag"] is False
    with pytest.raises(UnsupportedConstraintError, match="keyword arguments"):
        odd = {"type": "object", "additionalProperties": {"type": "integer"}}
        tool_constraint(
            parse_tools([{"type": "function", "function": {"name": "g", "parameters": odd}}]),
            "required",
            format=fmt,
        )
