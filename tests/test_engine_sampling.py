"""The sampler chain inside the engine: n > 1, no recompiles, seeds across batches."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from jaxserve import LLM, SamplingParams
from jaxserve.testing.strategies import every_stage, request_batches

PROMPT = [5, 77, 120, 3, 250, 18, 42, 42, 9, 101, 64, 200, 7, 33, 150, 11, 90, 4, 8]
EVERYTHING = every_stage(
    allowed=range(10, 200),
    samplers=("penalties", "dry", "top_k", "temperature", "top_p", "min_p", "xtc", "typ_p"),
)


@pytest.fixture(scope="module")
def llm(tiny_gguf) -> LLM:
    return LLM(str(tiny_gguf), weights="f32", max_num_seqs=8, prefill_chunk=32, max_prefill_rows=2)


def test_n_sequences_share_one_prefill_and_draw_their_own_seeds(llm):
    params = SamplingParams(max_tokens=6, temperature=1.0, seed=3, n=3, ignore_eos=True)
    before = llm.engine.runner.num_real_tokens
    outs = llm.generate(PROMPT, params)
    computed = llm.engine.runner.num_real_tokens - before
    assert [o.index for o in outs] == [0, 1, 2]
    assert len({tuple(o.token_ids) for o in outs}) > 1  # own seed streams
    # The first sequence is the request alone with the same seed.
    single = llm.generate(PROMPT, SamplingParams(**{**params.__dict__, "n": 1}))[0]
    assert outs[0].token_ids == single.token_ids
    # One prefill of the prompt; each other sequence recomputes only its last partial page.
    page = llm.engine.config.page_size
    tail = len(PROMPT) - (len(PROMPT) - 1) // page * page
    decoded = sum(len(o.token_ids) - 1 for o in outs)
    assert computed == len(PROMPT) + 2 * tail + decoded
    assert llm.engine.scheduler.pages.num_used == 0


def test_n_greedy_sequences_agree(llm):
    outs = llm.generate(PROMPT, SamplingParams(max_tokens=5, temperature=0.0, n=2))
    assert outs[0].token_ids == outs[1].token_ids


def test_every_field_inside_a_greedy_batch_runs_without_recompiling(tiny_gguf):
    llm = LLM(str(tiny_gguf), weights="f32", max_num_seqs=4, prefill_chunk=32, warmup=True)
    runner = llm.engine.runner
    assert runner.num_compiled() == runner.compiled_at_warmup
    greedy = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
    prompts = [PROMPT, PROMPT[:7], PROMPT[3:]]
    alone = [o.token_ids for o in llm.generate(prompts, greedy)]
    reqs = [
        llm.engine.add_request(prompts[0], greedy),
        llm.engine.add_request(prompts[1], EVERYTHING),
        llm.engine.add_request(prompts[2], greedy),
    ]
    while llm.engine.has_unfinished():
        llm.engine.step()
    assert runner.num_compiled() == runner.compiled_at_warmup
    assert reqs[0].output.token_ids == alone[0]
    assert reqs[2].output.token_ids == alone[2]
    special = reqs[1].output
    assert 3 <= len(special.token_ids) <= 10
    assert all(10 <= t < 200 for t in special.token_ids)
    assert len(special.logprobs) == len(special.token_ids)


@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request_batches(vocab=256, max_size=4, max_tokens=6))
def test_seeded_requests_give_the_same_tokens_alone_or_batched(llm, batch):
    reqs = [llm.engine.add_request(p, params) for p, params in batch]
    while llm.engine.has_unfinished():
        llm.engine.step()
    for (prompt, params), req in zip(batch, reqs, strict=True):
        alone = llm.generate(prompt, params)
        assert [o.token_ids for o in alone] == [s.output.token_ids for s in req.group]
