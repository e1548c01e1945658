"""Constrained decoding on the real SmolLM2: every output under a JSON schema validates.

Batched: all schemas of `fixtures/grammar_schemas.json` decode together, so device (regular)
and host (recursive) constraints share batches, with sampling on and fixed seeds.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from jaxserve import LLM, SamplingParams
from jaxserve.grammar import Matcher
from tests.engine_run import run_requests

SCHEMAS = json.loads((Path(__file__).parent / "fixtures" / "grammar_schemas.json").read_text())
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llm(smollm2_path) -> LLM:
    return LLM(str(smollm2_path), weights="int8", max_num_seqs=32, decode_steps=8)


def test_outputs_under_twenty_plus_schemas_all_validate(llm):
    # A recursive schema lets a small model nest forever: it is checked on the tiny model.
    schemas = [s for s in SCHEMAS if "recursive" not in s["name"]]
    assert len(schemas) >= 20
    requests = []
    for i, entry in enumerate(schemas):
        example = json.dumps(entry["valid"][0], separators=(",", ":"))
        message = f"Write one JSON value like this example of a {entry['name']}: {example}"
        prompt = llm.render_chat([{"role": "user", "content": message}])
        params = SamplingParams(
            max_tokens=300, temperature=0.7, seed=i, json_schema=entry["schema"]
        )
        requests.append((prompt, params))
    outs = run_requests(llm, requests)
    failures, cut = [], 0
    for entry, out in zip(schemas, outs, strict=True):
        validator = jsonschema.Draft202012Validator(
            entry["schema"], format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
        )
        if out.finish_reason == "length":
            # A small model can repeat itself inside a free string until the token limit: then
            # the output must still be a prefix the schema allows, token by token.
            cut += 1
            matcher = Matcher(llm.engine.grammars.compile({"json_schema": entry["schema"]}))
            if not all(matcher.accept_token(t) for t in out.token_ids):
                failures.append((entry["name"], "cut output leaves the schema", out.text[-80:]))
        elif out.finish_reason != "stop":
            failures.append((entry["name"], out.finish_reason, out.text[-80:]))
        elif errors := list(validator.iter_errors(json.loads(out.text))):
            failures.append((entry["name"], errors[0].message, out.text[-80:]))
    assert not failures
    assert cut <= len(schemas) // 10, f"{cut} of {len(schemas)} outputs hit the token limit"


def test_regex_choice_and_gbnf_on_the_real_vocabulary(llm):
    specs = [
        ({"regex": r"(19|20)\d{2}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d)"}, "What is a date in 2019?"),
        ({"choice": ["Paris", "London", "Berlin"]}, "What is the capital of France?"),
        ({"grammar": 'root ::= "[" item ("," item){1,3} "]"\nitem ::= [0-9]{1,3}'}, "Numbers:"),
    ]
    requests = [
        (
            llm.render_chat([{"role": "user", "content": q}]),
            SamplingParams(max_tokens=40, temperature=0.0, **spec),
        )
        for spec, q in specs
    ]
    outs = run_requests(llm, requests)
    from jaxserve.grammar import matches

    for (spec, _), out in zip(specs, outs, strict=True):
        assert out.finish_reason == "stop" and matches(spec, out.text), out.text


def test_a_schema_without_bounds_still_ends(llm):
    """With the defaults (int8, prefix caching): an integer without bounds stays in the signed
    64-bit range, so greedy SmolLM2 closes the object instead of writing digits to max_tokens."""
    city = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "country": {"type": "string"},
            "population": {"type": "integer"},
        },
        "required": ["name", "country", "population"],
        "additionalProperties": False,
    }
    params = SamplingParams(max_tokens=120, temperature=0.0, json_schema=city)
    out = llm.chat([{"role": "user", "content": "Tell me about Paris."}], params)[0]
    assert out.finish_reason == "stop", out.text
    assert -(2**63) <= json.loads(out.text)["population"] < 2**63
