"""The research hooks on the real models in their default int8: one row's capture, lens or
steering never changes another row's tokens or logprobs, a zero vector changes nothing, the
lens of the last layer is the model's own distribution."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from jaxserve import LLM, SamplingParams

pytestmark = pytest.mark.slow

PROMPTS = [
    "The capital of France is",
    "Write a haiku about autumn leaves:",
    "def fibonacci(n):",
    "List three primary colors:",
]
SAMPLED = SamplingParams(max_tokens=12, temperature=0.8, top_p=0.95, seed=11, logprobs=2)
GREEDY = SamplingParams(max_tokens=12, temperature=0.0, logprobs=3)


def _with(params: SamplingParams, **kw) -> SamplingParams:
    return dataclasses.replace(params, **kw)


def _same(a, b) -> None:
    assert a.token_ids == b.token_ids
    assert [x.logprob for x in a.logprobs] == [x.logprob for x in b.logprobs]


@pytest.fixture(scope="module")
def smollm2(smollm2_path) -> LLM:
    return LLM(str(smollm2_path), capture_layers=4, steering_slots=4, max_model_len=512)


def test_hooks_leave_the_other_rows_bit_identical(smollm2):
    e = smollm2.config.hidden_size
    rng = np.random.default_rng(0)
    plain = [(PROMPTS[0], GREEDY), (PROMPTS[1], SAMPLED), (PROMPTS[2], GREEDY)]
    alone = [smollm2.generate(p, s)[0] for p, s in plain]
    hooked = [
        (PROMPTS[3], _with(GREEDY, steering={10: rng.normal(size=e) * 2.0})),
        (PROMPTS[1], _with(SAMPLED, return_hidden_states=(5, 10, 20, -1), hidden_positions="all")),
        (PROMPTS[0], _with(GREEDY, logit_lens=(8, 16, 24), return_uncertainty=True)),
        (PROMPTS[2], _with(SAMPLED, steering={3: rng.normal(size=e)}, logit_lens=(-1,))),
    ]
    mixed = [hooked[0], plain[0], hooked[1], plain[1], hooked[2], plain[2], hooked[3]]
    outs = smollm2.generate([p for p, _ in mixed], [s for _, s in mixed])
    for got, want in zip([outs[1], outs[3], outs[5]], alone, strict=True):
        _same(got, want)
    _same(outs[2], alone[1])  # capturing changes nothing of the row itself
    _same(outs[4], alone[0])
    assert outs[2].hidden_states[5].shape[1] == e


def test_zero_steering_and_last_layer_lens(smollm2):
    e = smollm2.config.hidden_size
    base = smollm2.generate(PROMPTS, GREEDY)
    zero = smollm2.generate(PROMPTS, _with(GREEDY, steering={i: np.zeros(e) for i in (2, 9, 29)}))
    for a, b in zip(base, zero, strict=True):
        _same(a, b)
    lens = smollm2.generate(PROMPTS[0], _with(GREEDY, logit_lens=(-1,), logit_lens_top_k=3))[0]
    for entry, lp in zip(lens.logit_lens, lens.logprobs, strict=True):
        assert [t for t, _ in entry[29]] == [t for t, _ in lp.top]
        np.testing.assert_allclose([x for _, x in entry[29]], [x for _, x in lp.top], atol=1e-5)


def test_final_hidden_states_are_what_embed_pools(smollm2):
    params = _with(GREEDY, max_tokens=1, return_hidden_states=(), hidden_positions="all")
    out = smollm2.generate(PROMPTS[1], params)[0]
    mean = out.hidden_states["final"].astype(np.float64).mean(axis=0)
    embedded = smollm2.embed(PROMPTS[1])[0]
    np.testing.assert_allclose(embedded, mean / np.linalg.norm(mean), atol=1e-6)


def test_gemma3_lens_and_zero_steering(gemma3_path):
    llm = LLM(str(gemma3_path), capture_layers=2, steering_slots=2, max_model_len=256)
    e = llm.config.hidden_size
    params = _with(GREEDY, max_tokens=6)
    base = llm.generate(PROMPTS[:2], params)
    hooked = llm.generate(
        PROMPTS[:2],
        [
            _with(params, steering={5: np.zeros(e)}, logit_lens=(-1, 6)),
            _with(params, return_hidden_states=(0,), return_uncertainty=True),
        ],
    )
    for a, b in zip(base, hooked, strict=True):
        _same(a, b)
    last = llm.config.num_layers - 1
    for entry, lp in zip(hooked[0].logit_lens, hooked[0].logprobs, strict=True):
        assert [t for t, _ in entry[last]][:3] == [t for t, _ in lp.top]
