"""Every SamplingParams field is range-checked, with an error naming the field."""

from __future__ import annotations

import pytest
from hypothesis import given

from jaxserve.sampling_params import SamplingParams
from jaxserve.testing.strategies import sampling_params

BAD = [
    ("max_tokens", -1),
    ("max_tokens", 1.5),
    ("min_tokens", -2),
    ("temperature", -0.1),
    ("temperature", float("nan")),
    ("dynatemp_range", -1.0),
    ("dynatemp_exponent", 0.0),
    ("top_k", -5),
    ("top_p", 0.0),
    ("top_p", 1.5),
    ("min_p", 1.1),
    ("typical_p", 0.0),
    ("top_n_sigma", -2.0),
    ("xtc_probability", 2.0),
    ("xtc_threshold", -0.5),
    ("repetition_penalty", 0.0),
    ("presence_penalty", 2.5),
    ("frequency_penalty", -3.0),
    ("repeat_last_n", -2),
    ("dry_multiplier", -1.0),
    ("dry_base", 0.5),
    ("dry_allowed_length", 0),
    ("dry_penalty_last_n", -3),
    ("dry_sequence_breakers", ("",)),
    ("mirostat", 3),
    ("mirostat_tau", -1.0),
    ("mirostat_eta", 1.5),
    ("logit_bias", {5: 200.0}),
    ("logit_bias", {"x": 1.0}),
    ("logit_bias", [1, 2]),
    ("logit_bias", dict.fromkeys(range(301), 1.0)),
    ("allowed_token_ids", ()),
    ("allowed_token_ids", (-1,)),
    ("bad_words", ("",)),
    ("samplers", ("top_k", "nucleus")),
    ("samplers", ("top_k", "top_k")),
    ("seed", -1),
    ("seed", 2**32),
    ("n", 0),
    ("n", 100),
    ("stop", ("",)),
    ("stop_token_ids", (-4,)),
    ("ignore_eos", "yes"),
    ("logprobs", 21),
    ("logprobs_mode", "final"),
    ("prompt_logprobs", -1),
]


@pytest.mark.parametrize(("field", "value"), BAD, ids=[f"{f}={v!r}" for f, v in BAD])
def test_out_of_range_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


def test_min_tokens_above_max_tokens_is_refused():
    with pytest.raises(ValueError, match="min_tokens"):
        SamplingParams(max_tokens=2, min_tokens=3)


def test_spellings_are_normalized():
    p = SamplingParams(
        top_k=-1, stop="END", logit_bias={"12": 3.0}, samplers="top_k;typical_p;temperature"
    )
    assert p.top_k == 0 and p.stop == ("END",) and p.logit_bias == {12: 3.0}
    assert p.samplers == ("top_k", "typ_p", "temperature")


@given(sampling_params())
def test_the_strategy_only_builds_valid_params(params):
    assert SamplingParams(**params.__dict__) == params


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("allowed_token_ids", 5),
        ("bad_words", {"a": 1}),
        ("stop_token_ids", 3),
        ("samplers", {"top_k": 1}),
    ],
)
def test_wrong_container_types_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


def test_a_single_breaker_string_is_one_breaker():
    assert SamplingParams(dry_sequence_breakers="\n\n").dry_sequence_breakers == ("\n\n",)


def test_unbounded_numbers_lifts_the_number_caps_of_json_constraints():
    from jaxserve.grammar import matches

    capped = SamplingParams(json_schema={"type": "integer"})
    lifted = SamplingParams(json_schema={"type": "integer"}, unbounded_numbers=True)
    assert lifted.constraint == {"json_schema": {"type": "integer"}, "unbounded_numbers": True}
    assert matches(lifted.constraint, "9" * 40) and not matches(capped.constraint, "9" * 40)
    for bad in ({}, {"regex": "a"}):
        with pytest.raises(ValueError, match="unbounded_numbers"):
            SamplingParams(unbounded_numbers=True, **bad)
