"""The engine's sampler and constraint features on the real Gemma 3 (262k SentencePiece vocab).

One batch mixes a JSON-schema, a regex, a choice and a free request, all sampled with seeds;
every constrained output must match its constraint, and each seeded request must give the same
tokens when it runs alone.
"""

from __future__ import annotations

import json

import jsonschema
import pytest

from jaxserve import LLM, SamplingParams
from jaxserve.grammar import matches
from tests.engine_run import run_requests

pytestmark = pytest.mark.slow

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 1, "maxLength": 24},
        "population": {"type": "integer", "minimum": 0},
        "coastal": {"type": "boolean"},
    },
    "required": ["city", "population", "coastal"],
    "additionalProperties": False,
}
DATE = r"(19|20)\d{2}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d)"
CHOICES = ["red", "green", "blue"]


def _requests(llm: LLM) -> list[tuple[str, SamplingParams]]:
    def chat(text: str) -> str:
        return llm.render_chat([{"role": "user", "content": text}])

    def params(seed: int, max_tokens: int, **constraint) -> SamplingParams:
        return SamplingParams(
            max_tokens=max_tokens, seed=seed, temperature=0.8, top_p=0.95, **constraint
        )

    return [
        (chat("Describe one city as JSON."), params(11, 80, json_schema=SCHEMA)),
        (chat("Give a date in the 1990s."), params(12, 16, regex=DATE)),
        (chat("Name a colour."), params(13, 8, choice=CHOICES)),
        (chat("Tell me about the sea."), params(14, 24, ignore_eos=True)),
    ]


def test_batched_constrained_seeded_requests(gemma3_int8: LLM):
    llm = gemma3_int8
    requests = _requests(llm)
    together = run_requests(llm, requests)
    obj, date, colour, free = together
    assert obj.finish_reason == "stop", obj.text
    jsonschema.validate(json.loads(obj.text), SCHEMA)
    assert date.finish_reason == "stop" and matches({"regex": DATE}, date.text), date.text
    assert colour.finish_reason == "stop" and colour.text in CHOICES, colour.text
    assert len(free.token_ids) == 24 and free.text.strip()
    # Seeded requests do not depend on their neighbours.
    for request, out in zip(requests, together, strict=True):
        alone = run_requests(llm, [request])[0]
        assert alone.token_ids == out.token_ids, (alone.text, out.text)
