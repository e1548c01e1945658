"""Beam search on SmolLM2-135M with the defaults users get (int8 weights, prefix caching on):
the same beams and scores, bit for bit, alone, beside other requests and on a prefix-cache
hit; and a JSON Schema holding in every beam."""

from __future__ import annotations

import json

import pytest

from jaxserve import LLM, SamplingParams

pytestmark = pytest.mark.slow

PROMPT = (  # longer than a page, so a repeat finds it in the prefix cache
    "<|im_start|>system\nYou are a helpful assistant who answers in a few words.<|im_end|>\n"
    "<|im_start|>user\nName a fruit that is yellow.<|im_end|>\n<|im_start|>assistant\n"
)


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    return LLM(str(smollm2_path), max_model_len=512)


def _beams(outputs):
    return [(o.token_ids, o.cumulative_logprob, o.beam_score, o.finish_reason) for o in outputs]


def test_beams_do_not_depend_on_the_batch_or_the_cache(smollm2):
    search = SamplingParams(use_beam_search=True, n=4, max_tokens=24)
    alone = _beams(smollm2.generate([PROMPT], search))  # also fills the prefix cache
    others = [
        ("Once upon a time", SamplingParams(max_tokens=40, temperature=0.8, seed=3)),
        ("The capital of France is", SamplingParams(max_tokens=16, temperature=0.0)),
        ("List three colors:", SamplingParams(max_tokens=30, top_p=0.9, seed=5, n=2)),
    ]
    mixed = smollm2.generate([PROMPT, *(p for p, _ in others)], [search, *(s for _, s in others)])
    assert _beams(mixed[:4]) == alone
    hits = smollm2.engine.scheduler.pages.stats.hit_tokens
    again = _beams(smollm2.generate([PROMPT], search))
    assert smollm2.engine.scheduler.pages.stats.hit_tokens > hits  # the prompt came from cache
    assert again == alone
    assert len({tuple(tokens) for tokens, *_ in alone}) == 4  # four different beams
    assert [b[2] for b in alone] == sorted((b[2] for b in alone), reverse=True)
    assert smollm2.engine.scheduler.pages.num_used == 0


def test_a_json_schema_holds_in_every_beam(smollm2):
    schema = {
        "type": "object",
        "properties": {"fruit": {"type": "string", "maxLength": 12}, "sweet": {"type": "boolean"}},
        "required": ["fruit", "sweet"],
        "additionalProperties": False,
    }
    prompt = PROMPT.replace("Name a fruit that is yellow.", "Answer in JSON: a yellow fruit?")
    beams = smollm2.beam_search(
        prompt, beam_width=3, max_tokens=48, params=SamplingParams(json_schema=schema)
    )[0]
    assert len(beams) == 3
    for beam in beams:
        assert beam.finish_reason == "stop", beam.text
        value = json.loads(beam.text)
        assert set(value) == {"fruit", "sweet"} and isinstance(value["sweet"], bool)
    scores = [b.beam_score for b in beams]
    assert scores == sorted(scores, reverse=True)
