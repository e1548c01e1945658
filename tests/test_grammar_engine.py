"""Constraints inside the engine: every finished output is a complete string of its language."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxserve import SamplingParams
from jaxserve.engine.scheduler import SchedulerConfig
from jaxserve.grammar import UnsupportedConstraintError, is_prefix, matches
from jaxserve.testing.mock_model import MockSetup, byte_id, mock_engine

SPECS = [
    {"regex": r"(ab|cd)+x?[0-9]{2}"},
    {"choice": ["yes", "no", "maybe"]},
    {"grammar": 'root ::= "(" item ("," item)* ")"\nitem ::= [a-c]+ | root'},
    {
        "json_schema": {
            "type": "object",
            "properties": {"a": {"type": "integer"}},
            "required": ["a"],
        }
    },
    {"json_object": True},
]


@pytest.fixture(scope="module")
def engine():
    return mock_engine(SchedulerConfig(max_num_seqs=8, prefill_chunk=32, decode_steps=4))


@pytest.fixture(scope="module")
def host_engine():
    config = SchedulerConfig(max_num_seqs=8, prefill_chunk=32, decode_steps=4)
    return mock_engine(config, MockSetup(grammar_states=0))


def _run(engine, requests):
    reqs = [engine.add_request(p, params) for p, params in requests]
    while engine.has_unfinished():
        engine.step()
    return [r.output for r in reqs]


def _params(spec, **kw) -> SamplingParams:
    kw = {"max_tokens": 64, "temperature": 1.0, **kw}
    return SamplingParams(**{**spec, **kw})


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: next(iter(s)))
def test_sampled_outputs_are_complete_strings_of_the_language(engine, spec):
    outs = _run(engine, [([byte_id(b)], _params(spec, seed=s)) for s, b in enumerate(b"aZ{(x")])
    for out in outs:
        if out.finish_reason == "length":  # e.g. a recursive grammar ran past max_tokens
            assert is_prefix(spec, out.text), out.text
            continue
        assert out.finish_reason == "stop", out.text
        assert matches(spec, out.text), out.text
        if "json_schema" in spec:
            assert isinstance(json.loads(out.text)["a"], int)


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 2**32 - 1), greedy=st.booleans())
def test_constrained_and_free_rows_share_a_batch(engine, seed, greedy):
    t = 0.0 if greedy else 1.0
    free = SamplingParams(max_tokens=12, temperature=t, seed=seed, ignore_eos=True)
    spec = {"regex": "[a-z]{3,8}"}
    outs = _run(
        engine,
        [([byte_id(65)], free), ([byte_id(66)], _params(spec, seed=seed, temperature=t))] * 2,
    )
    assert outs[0].text == outs[2].text  # a free row is unaffected by its constrained neighbour
    assert len(outs[0].token_ids) == 12
    assert matches(spec, outs[1].text) and matches(spec, outs[3].text)


def test_a_constrained_output_ends_as_soon_as_nothing_may_follow(engine):
    out = _run(engine, [([byte_id(ord("a"))], _params({"choice": ["bcd"]}, temperature=0.0))])[0]
    assert out.text == "bcd"
    assert out.token_ids == [byte_id(ord(c)) for c in "bcd"]  # no extra step for the EOS
    assert out.finish_reason == "stop"


def test_n_sequences_each_follow_the_constraint(engine):
    spec = {"regex": "[0-9]+"}
    leader = engine.add_request([byte_id(1)], _params(spec, n=3, seed=1, max_tokens=6))
    while engine.has_unfinished():
        engine.step()
    texts = [seq.output.text for seq in leader.group]
    assert len(texts) == 3 and len(set(texts)) > 1
    for seq in leader.group:
        assert is_prefix(spec, seq.output.text)
        assert seq.output.finish_reason == "length" or matches(spec, seq.output.text)


def test_an_unsupported_constraint_is_refused_when_the_request_is_added(engine):
    with pytest.raises(UnsupportedConstraintError, match="lookaround"):
        engine.add_request([1], _params({"regex": "(?=a)a"}))
    with pytest.raises(UnsupportedConstraintError, match="GBNF syntax error"):
        engine.add_request([1], _params({"grammar": "root ::= ("}))
    assert not engine.has_unfinished()


def test_two_constraints_in_one_request_are_refused():
    with pytest.raises(ValueError, match="regex"):
        SamplingParams(choice=["a"], regex="a")


@pytest.mark.parametrize("spec", [SPECS[0], SPECS[1], SPECS[3]], ids=["regex", "choice", "schema"])
def test_device_and_host_paths_give_identical_tokens(engine, host_engine, spec):
    host = host_engine
    requests = [([byte_id(b)], _params(spec, seed=s)) for s, b in enumerate(b"aZ{(x1")]
    requests.append(([byte_id(7)], SamplingParams(max_tokens=9, temperature=1.0, seed=3)))
    on_device = _run(engine, requests)
    on_host = _run(host, requests)
    assert [o.token_ids for o in on_device] == [o.token_ids for o in on_host]
    assert [o.finish_reason for o in on_device] == [o.finish_reason for o in on_host]
    assert engine.grammar_slots._offsets  # noqa: SLF001 - the constraint ran on device


def test_a_recursive_grammar_stays_on_the_host(engine):
    spec = {"grammar": 'root ::= "(" root? ")"'}
    compiled = engine.grammars.compile(spec)
    assert engine.grammar_slots.tables(compiled) is None
    out = _run(engine, [([byte_id(1)], _params(spec, seed=2, max_tokens=12))])[0]
    assert is_prefix(spec, out.text)


def test_a_lazy_constraint_decodes_free_text_k_tokens_at_a_time(engine):
    """Before its trigger a lazy constraint runs unmasked on device, as 1-token steps would."""
    one_step = mock_engine(SchedulerConfig(max_num_seqs=8, prefill_chunk=32, decode_steps=1))
    spec = {"grammar": 'root ::= "ef" [0-9]{2}', "grammar_triggers": ["ef"]}
    requests = [
        ([byte_id(b)], _params(spec, seed=s, max_tokens=40)) for s, b in enumerate(b"abcXY")
    ]
    steps = engine.stats.num_steps
    outs = _run(engine, requests)
    k_steps = engine.stats.num_steps - steps
    assert [o.token_ids for o in outs] == [o.token_ids for o in _run(one_step, requests)]
    assert k_steps < max(len(o.token_ids) for o in outs)  # several tokens per step
    for out in outs:
        text = out.text
        if "ef" in text:
            assert re.fullmatch(r"[^\n]*?ef[0-9]{0,2}", text, re.S), text
