"""Speculative decoding by prompt lookup: the same tokens and logprobs as decoding without it
(greedy and seeded, in any batch, with stops, preemption and rows that cannot speculate), fewer
forward passes when the text repeats itself."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from jaxserve import LLM, SamplingParams
from jaxserve.engine.speculation import SpecState, SpeculativeConfig, Speculator, propose
from tests.kv_pages import kv_bytes

PROMPTS = [
    "one two three one two three one two three one two",
    "hello world",
    "abc abc abc abc abc abc abc",
    "The ocean is deep. The ocean is",
]
GREEDY = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True, logprobs=2)
SAMPLED = SamplingParams(max_tokens=40, temperature=0.9, top_p=0.95, seed=7, ignore_eos=True)


def _llm(path, **kw) -> LLM:
    config = dict(weights="int8", max_model_len=128, compilation_cache_dir="", max_num_seqs=8)
    return LLM(str(path), **(config | kw))


@pytest.fixture(scope="module")
def plain(tiny_gguf) -> LLM:
    return _llm(tiny_gguf)


@pytest.fixture(scope="module")
def spec(tiny_gguf) -> LLM:
    return _llm(tiny_gguf, speculative="ngram", num_speculative_tokens=4)


def _same(a, b) -> None:
    assert a.token_ids == b.token_ids
    assert a.text == b.text and a.finish_reason == b.finish_reason
    if a.logprobs is not None:
        assert [x.logprob for x in a.logprobs] == [x.logprob for x in b.logprobs]
        assert [x.top for x in a.logprobs] == [x.top for x in b.logprobs]


def _accepted(llm: LLM) -> tuple[int, int]:
    s = llm.engine.stats.snapshot()
    return s["draft_tokens"], s["accepted_draft_tokens"]


@pytest.mark.parametrize("params", [GREEDY, SAMPLED], ids=["greedy", "seeded"])
def test_the_same_tokens_with_fewer_passes(plain, spec, params):
    before = _accepted(spec)
    for a, b in zip(plain.generate(PROMPTS, params), spec.generate(PROMPTS, params), strict=True):
        _same(a, b)
    proposed, accepted = (x - y for x, y in zip(_accepted(spec), before, strict=True))
    assert proposed > 0 and (accepted > 0 or params is SAMPLED)  # the tiny model is near-flat
    alone = [spec.generate(p, params)[0] for p in PROMPTS]  # one row at a time, too
    for a, b in zip(plain.generate(PROMPTS, params), alone, strict=True):
        _same(a, b)


@pytest.fixture
def wide(spec):
    """`spec` speculating in steps of any number of rows, for one test."""
    speculator = spec.engine.speculator
    config = speculator.config
    speculator.config = dataclasses.replace(config, max_rows=64)
    yield spec
    speculator.config = config


def test_rows_that_cannot_speculate_decode_beside_those_that_do(wide, plain):
    spec = wide
    before = spec.engine.speculator.num_accepted
    others = [
        dataclasses.replace(SAMPLED, repetition_penalty=1.3),
        dataclasses.replace(SAMPLED, mirostat=2),
        dataclasses.replace(GREEDY, grammar="root ::= [a-z ]+", grammar_triggers=["one"]),
        dataclasses.replace(GREEDY, speculative=False),
        dataclasses.replace(GREEDY, stop=["three o"], ignore_eos=False),
        dataclasses.replace(SAMPLED, n=2),
    ]
    params = [GREEDY, *others, SAMPLED]
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(params))]
    for a, b in zip(plain.generate(prompts, params), spec.generate(prompts, params), strict=True):
        _same(a, b)
    speculator = spec.engine.speculator
    assert speculator.num_accepted > before
    request = spec.engine.add_request([1, 2, 3], others[0])
    assert not speculator.eligible(request)
    spec.engine.abort(request)


def test_preemption_and_a_short_context(tiny_gguf, plain):
    # 7 pages of 16 tokens for 8 requests: later ones are preempted and recomputed
    small = _llm(
        tiny_gguf, speculative="ngram", kv_cache_bytes=kv_bytes(tiny_gguf, 8), max_model_len=64
    )
    params = dataclasses.replace(GREEDY, max_tokens=60)
    outs = small.generate(PROMPTS * 2, params)
    assert small.engine.scheduler.num_preemptions > 0
    for out in outs:
        want = plain.generate(out.prompt_token_ids, params)[0]
        assert out.token_ids == want.token_ids[: len(out.token_ids)]
        assert out.finish_reason == "length"


def test_a_busy_step_decodes_without_speculation(spec):
    engine = spec.engine
    requests = [engine.add_request(spec.tokenize(p), GREEDY) for p in [*PROMPTS, PROMPTS[0]]]
    while not all(r.is_prefilled for r in requests):
        engine.step()
    assert engine._drafts(requests, 8) == {}  # 5 decode rows: more than max_rows (4)
    assert engine._drafts(requests[:4], 8)  # 4 rows speculate (their text repeats)
    for r in requests:
        engine.abort(r)


def test_every_check_shape_is_in_the_warm_up(tiny_gguf):
    llm = _llm(tiny_gguf, speculative="ngram", max_num_seqs=2)
    llm.generate(PROMPTS[:2], GREEDY)
    llm.generate(PROMPTS[2], SAMPLED)
    s = llm.engine.scheduler.config
    warm = llm.engine.runner.warmup_shapes(
        max_rows=s.max_num_seqs,
        max_prefill_rows=s.max_prefill_rows,
        max_chunk=s.prefill_chunk,
        max_batched_tokens=s.max_num_batched_tokens,
    )
    used = {key for key in llm.engine.runner._shapes if key[0] == "verify"}
    assert {rows for _, (rows, _), _ in used} == {1, 2}
    for _, (rows, tokens), (_, pages) in used:
        assert ("verify", rows, tokens, pages) in warm
    runner, compiled = llm.engine.runner, llm.engine.runner.num_compiled()
    for shape in [w for w in warm if w[0] == "verify" and w[1] <= 2]:
        runner.warm(shape, num_steps=s.decode_steps)  # the warm-up compiles what checks use
    assert runner.num_compiled() == compiled


def test_propose_takes_what_followed_the_latest_match():
    tokens = [1, 2, 3, 9, 1, 2, 3, 7, 8, 5, 1, 2, 3]
    assert propose(tokens, 3, max_ngram=3, min_ngram=1) == [7, 8, 5]
    assert propose(tokens, 1, max_ngram=3, min_ngram=1) == [7]
    assert propose([4, 5, 6], 3, max_ngram=3, min_ngram=1) == []
    assert propose([5, 6, 5], 4, max_ngram=2, min_ngram=1) == [6, 5]  # a 1-gram match
    assert propose([5], 4, max_ngram=3, min_ngram=1) == []


def test_a_request_whose_drafts_miss_slows_down_then_pauses():
    config = SpeculativeConfig(num_tokens=4, patience=3, cooldown=5)
    speculator = Speculator(config)

    class Fake:
        spec = SpecState(k=4)

    request = Fake()
    speculator.accepted(request, 4, 4)
    assert request.spec.k == 4
    for expected_k in (3, 2, 1):
        speculator.accepted(request, 4, 0)
        assert request.spec.k == expected_k
    assert request.spec.paused == 5  # three misses in a row
    speculator.accepted(request, 2, 2)
    assert request.spec.k == 2 and request.spec.misses == 0
    assert (speculator.num_proposed, speculator.num_accepted) == (18, 6)
    with pytest.raises(ValueError, match="speculative"):
        SpeculativeConfig(method="draft")


def test_sampled_speculation_follows_the_models_distribution():
    """On the mock model (a Markov chain whose probabilities are known), the first three tokens
    of 3,000 seeded requests, every row speculating, follow the chain (chi-square)."""
    from scipy import stats

    from jaxserve.engine.scheduler import SchedulerConfig
    from jaxserve.testing.mock_model import VOCAB, MockSetup, byte_id, mock_engine, mock_probs

    config = SpeculativeConfig(num_tokens=3, max_rows=64, min_ngram=1)
    engine = mock_engine(SchedulerConfig(max_num_seqs=64), MockSetup(speculative=config))
    prompt = [byte_id(b) for b in b"abcdefabcd"]  # lookup drafts "e f a", the chain's likeliest
    n = 3000
    requests = [
        engine.add_request(prompt, SamplingParams(max_tokens=3, seed=s, ignore_eos=True))
        for s in range(n)
    ]
    while engine.has_unfinished():
        engine.step()
    assert engine.speculator.num_accepted > 0
    counts: dict[tuple[int, ...], int] = {}
    for r in requests:
        key = tuple(r.output.token_ids)
        counts[key] = counts.get(key, 0) + 1
    expected: dict[tuple[int, ...], float] = {}
    first = mock_probs(prompt[-1])
    for a in range(VOCAB):
        second = mock_probs(a)
        for b in np.flatnonzero(first[a] * second * n >= 1):
            third = mock_probs(int(b))
            for c in np.flatnonzero(first[a] * second[b] * third * n >= 1):
                expected[(a, int(b), int(c))] = first[a] * second[b] * third[c] * n
    keys = [k for k, e in expected.items() if e >= 5]
    seen = [counts.get(k, 0) for k in keys]
    observed = np.array([*seen, n - sum(seen)])  # the last: every rarer sequence
    want = np.array([expected[k] for k in keys] + [n - sum(expected[k] for k in keys)])
    assert stats.chisquare(observed, want).pvalue > 1e-4


@pytest.mark.parametrize(
    "constraint",
    [{"regex": "(one|two|three| )+"}, {"choice": ["one two three one two three one", "two"]}],
    ids=["regex", "choice"],
)
def test_constrained_rows_speculate_under_their_mask(spec, plain, constraint):
    """A regular constraint is masked on device at every drafted position: a draft it forbids
    is never accepted, the token drawn after the drafts obeys it too, and the text is the one
    decoding without speculation gives (greedy and seeded)."""
    from jaxserve.grammar import matches

    speculator = spec.engine.speculator
    before = speculator.num_proposed, speculator.num_accepted
    for base in (GREEDY, SAMPLED):
        params = dataclasses.replace(base, ignore_eos=False, **constraint)
        request = spec.engine.add_request(spec.tokenize(PROMPTS[0]), params)
        assert speculator.eligible(request)
        spec.engine.abort(request)
        ours = spec.generate(PROMPTS, params)
        for a, b in zip(plain.generate(PROMPTS, params), ours, strict=True):
            _same(a, b)
            assert matches(constraint, b.text) or b.finish_reason == "length", b.text
    assert speculator.num_proposed > before[0] and speculator.num_accepted > before[1]
