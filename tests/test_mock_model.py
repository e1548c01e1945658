"""The hand-computable mock model drives the real engine: outputs follow from its definition."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxserve import SamplingParams
from jaxserve.engine.scheduler import SchedulerConfig
from jaxserve.testing.mock_model import EOS_ID, VOCAB, byte_id, mock_engine, mock_probs


@pytest.fixture(scope="module")
def engine():
    return mock_engine(SchedulerConfig(max_num_seqs=8, prefill_chunk=32, decode_steps=4))


def _run(engine, prompts, params):
    reqs = [engine.add_request(p, params) for p in prompts]
    while engine.has_unfinished():
        engine.step()
    return [r.output for r in reqs]


def test_greedy_spells_the_next_bytes(engine):
    out = _run(engine, [[byte_id(ord("a"))]], SamplingParams(max_tokens=5, temperature=0.0))[0]
    assert out.text == "bcdef"
    assert out.finish_reason == "length"


def test_end_of_generation_follows_the_last_byte(engine):
    out = _run(engine, [[byte_id(0xFD)]], SamplingParams(max_tokens=5, temperature=0.0))[0]
    assert out.token_ids == [byte_id(0xFE), byte_id(0xFF), EOS_ID]
    assert out.finish_reason == "stop"


def test_logprobs_are_the_hand_computed_ones(engine):
    params = SamplingParams(max_tokens=3, temperature=0.0, logprobs=2)
    out = _run(engine, [[byte_id(ord("x"))]], params)[0]
    expected = np.log(mock_probs(byte_id(ord("x"))))
    first = out.logprobs[0]
    assert first.token_id == byte_id(ord("y"))
    np.testing.assert_allclose(first.logprob, expected[byte_id(ord("y"))], rtol=1e-5)
    assert [t for t, _ in first.top] == [byte_id(ord("y")), byte_id(ord("z"))]


def test_logit_bias_hands_the_choice_to_the_runner_up(engine):
    params = SamplingParams(max_tokens=2, temperature=0.0, logit_bias={byte_id(ord("b")): -100})
    out = _run(engine, [[byte_id(ord("a"))]], params)[0]
    assert out.text[0] == "c"  # "b" is banned: the runner-up after "a"


def test_repetition_penalty_sees_the_prompt(engine):
    # After "a" the favourite "b" (logit 4) is in the prompt; a penalty of 3 leaves it 4/3,
    # below the runner-up "c" (2).
    prompt = [byte_id(ord("b")), byte_id(ord("a"))]
    params = SamplingParams(max_tokens=1, temperature=0.0, repetition_penalty=3.0)
    assert _run(engine, [prompt], params)[0].text == "c"


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.integers(0, 255), st.integers(0, 2**32 - 1))
def test_sampled_tokens_are_the_favourite_or_runner_up_under_top_k_2(engine, byte, seed):
    params = SamplingParams(max_tokens=4, top_k=2, seed=seed, ignore_eos=True)
    out = _run(engine, [[byte_id(byte)]], params)[0]
    last = byte_id(byte)
    for token in out.token_ids:
        assert token in ((last + 1) % VOCAB, (last + 2) % VOCAB)
        last = token


def test_processed_logprobs_list_only_tokens_the_chain_kept(engine):
    params = SamplingParams(
        max_tokens=2, temperature=0.0, top_k=1, logprobs=5, logprobs_mode="processed"
    )
    out = _run(engine, [[byte_id(ord("a"))]], params)[0]
    for entry in out.logprobs:
        assert entry.logprob == 0.0  # the only token left
        assert entry.top == ((entry.token_id, 0.0),)


def test_state_carried_inside_the_decode_loop_matches_one_token_per_step():
    """Counts, history, Mirostat state and min_tokens advance on device within a k-token
    decode call exactly as they do when the host rebuilds them every token."""
    params = [
        SamplingParams(
            max_tokens=24,
            min_tokens=20,
            temperature=1.3,
            repetition_penalty=8.0,
            frequency_penalty=0.7,
            presence_penalty=0.2,
            repeat_last_n=6,
            dry_multiplier=0.5,
            logit_bias=dict.fromkeys(range(VOCAB), 1.0),  # no zero logits: penalties bite
            seed=9,
        ),
        SamplingParams(max_tokens=24, mirostat=2, mirostat_tau=3.0, seed=4, ignore_eos=True),
        SamplingParams(max_tokens=24, mirostat=1, mirostat_tau=3.0, seed=5, ignore_eos=True),
    ]
    prompts = [[byte_id(ord(c)) for c in "abcabc"], [byte_id(250)], [byte_id(7), byte_id(8)]]
    results = []
    for k in (1, 8):
        engine = mock_engine(SchedulerConfig(max_num_seqs=4, prefill_chunk=16, decode_steps=k))
        reqs = [engine.add_request(p, sp) for p, sp in zip(prompts, params, strict=True)]
        while engine.has_unfinished():
            engine.step()
        results.append([r.output.token_ids for r in reqs])
    assert results[0] == results[1]
    assert len(results[0][0]) >= 20


def test_abort_by_id_ends_every_sequence_even_after_the_first_finished(engine):
    stops = tuple(range(100, 114))
    for seed in range(64):  # find a seed whose sequence 0 stops before the others
        params = SamplingParams(
            max_tokens=40, temperature=2.0, seed=seed, n=3, stop_token_ids=stops
        )
        first = engine.add_request([byte_id(1)], params)
        while not first.finished:
            engine.step()
        if not all(seq.finished for seq in first.group):
            break
    assert not all(seq.finished for seq in first.group)
    engine.abort(first.request_id)
    assert all(seq.finished for seq in first.group)
    assert not engine.has_unfinished()
    assert engine.scheduler.pages.num_used == 0


def test_a_request_that_ends_in_its_prefill_still_fills_the_prefix_cache(engine):
    prompt = [byte_id(b) for b in range(20)]  # one prefill chunk
    _run(engine, [prompt], SamplingParams(max_tokens=1, temperature=0.0))
    again = _run(engine, [prompt], SamplingParams(max_tokens=1, temperature=0.0))[0]
    assert again.num_cached_tokens == 16  # its full page
