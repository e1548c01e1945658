"""Scheduling end to end on the tiny model: batch invariance, preemption, prefix caching,
priority, queue limits, and no recompiles after warm-up."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxserve import LLM, SamplingParams
from jaxserve.engine.page_allocator import PageAllocator
from jaxserve.engine.rows import PREFILL_ROW_BUCKETS, TOKEN_BUCKETS, bucket
from jaxserve.engine.scheduler import Scheduler, SchedulerConfig
from jaxserve.errors import QueueFullError

PROMPTS = [
    [5, 77, 120, 3, 250, 18],
    [42, 42, 9, 101, 64, 200, 7, 33, 150, 11, 90, 17, 23, 29, 31, 37, 41, 43, 47],
    [8, 9],
    [100, 101, 102, 103, 104, 105, 106, 107, 108, 109],
    [260, 2, 58, 61, 67, 71, 73, 79, 83, 89, 97, 103, 107, 109, 113, 127, 131, 137, 139, 149, 151],
]


def _greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(tiny_gguf) -> LLM:
    return LLM(
        str(tiny_gguf),
        weights="f32",
        max_num_seqs=4,
        prefill_chunk=16,
        decode_steps=4,
        max_num_batched_tokens=24,
        max_model_len=128,
    )


@pytest.fixture(scope="module")
def reference(llm) -> dict[int, list[int]]:
    """Each prompt alone, 16 greedy tokens."""
    return {i: llm.generate(p, _greedy(16))[0].token_ids for i, p in enumerate(PROMPTS)}


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    plan=st.lists(
        st.tuples(st.integers(0, len(PROMPTS) - 1), st.integers(1, 16), st.integers(0, 3)),
        min_size=1,
        max_size=7,
    )
)
def test_greedy_tokens_do_not_depend_on_the_batch(llm, reference, plan):
    """Requests arrive at random steps with random lengths; each gets its solo tokens."""
    engine = llm.engine
    pending = sorted(enumerate(plan), key=lambda x: x[1][2])
    requests, step = [], 0
    while pending or engine.has_unfinished():
        while pending and pending[0][1][2] <= step:
            _, (prompt, n, _) = pending.pop(0)
            requests.append((prompt, n, engine.add_request(PROMPTS[prompt], _greedy(n))))
        engine.step()
        step += 1
    for prompt, n, request in requests:
        assert request.output.token_ids == reference[prompt][:n]


def test_preemption_recomputes_to_the_same_tokens(tiny_gguf, reference):
    # 9 usable pages of 16 tokens: three long requests cannot all hold their pages at once.
    small = LLM(
        str(tiny_gguf),
        weights="f32",
        max_num_seqs=4,
        prefill_chunk=16,
        decode_steps=4,
        max_model_len=128,
        kv_cache_bytes=10 * 2 * 4 * 2 * 16 * 2 * 16,
        enable_prefix_caching=False,
    )
    outs = small.generate([PROMPTS[1], PROMPTS[4], PROMPTS[3]], _greedy(40))
    assert small.engine.scheduler.num_preemptions > 0
    full = {i: small.generate(PROMPTS[i], _greedy(40))[0].token_ids for i in (1, 4, 3)}
    assert [o.token_ids for o in outs] == [full[1], full[4], full[3]]
    assert small.engine.scheduler.pages.num_used == 0


def test_prefix_cache_reuses_pages_and_keeps_outputs(tiny_gguf):
    shared = list(range(10, 50))  # 40 tokens: two full pages of 16
    a, b = shared + [3, 4, 5], shared + [6, 7]
    cached = LLM(str(tiny_gguf), weights="f32", max_model_len=128, prefill_chunk=16)
    plain = LLM(
        str(tiny_gguf),
        weights="f32",
        max_model_len=128,
        prefill_chunk=16,
        enable_prefix_caching=False,
    )
    first = cached.generate(a, _greedy(6))[0]
    second = cached.generate(b, _greedy(6))[0]
    assert first.num_cached_tokens == 0 and second.num_cached_tokens == 32
    assert second.token_ids == plain.generate(b, _greedy(6))[0].token_ids
    # The whole prompt cached but its last page: the last token is still computed for logits.
    again = cached.generate(a, _greedy(6))[0]
    assert again.num_cached_tokens == 32 and again.token_ids == first.token_ids
    assert cached.engine.scheduler.pages.stats.hit_rate > 0


def test_priority_orders_admission(tiny_gguf):
    serial = LLM(str(tiny_gguf), weights="f32", max_num_seqs=1, max_model_len=64)
    engine = serial.engine
    order = []
    requests = [
        engine.add_request(PROMPTS[i], _greedy(3), priority=p) for i, p in ((0, 5), (2, 1), (3, 3))
    ]
    while engine.has_unfinished():
        for event in engine.step():
            if event.output.finished:
                order.append(event.output.request_id)
    assert order == [requests[1].request_id, requests[2].request_id, requests[0].request_id]


def test_waiting_queue_is_bounded():
    scheduler = Scheduler(SchedulerConfig(max_waiting=2), PageAllocator(8, 16))

    class Stub:
        pass

    scheduler.add(Stub())  # type: ignore[arg-type]
    scheduler.add(Stub())  # type: ignore[arg-type]
    with pytest.raises(QueueFullError):
        scheduler.add(Stub())  # type: ignore[arg-type]


def test_no_compiles_after_warmup_under_a_mixed_workload(tiny_gguf):
    llm = LLM(
        str(tiny_gguf),
        weights="int8",
        max_num_seqs=8,
        prefill_chunk=32,
        decode_steps=4,
        max_num_batched_tokens=64,
        max_model_len=96,
        warmup=True,
    )
    engine, runner = llm.engine, llm.engine.runner
    compiled = runner.num_compiled()
    rng = random.Random(0)
    live, finished, aborted, added = [], 0, 0, 0
    while added < 200 or engine.has_unfinished():
        for _ in range(rng.randint(0, 4) if added < 200 else 0):
            prompt = [rng.randrange(3, 290) for _ in range(rng.randint(1, 60))]
            params = SamplingParams(
                max_tokens=rng.randint(0 if rng.random() < 0.1 else 1, 30),
                temperature=rng.choice([0.0, 0.7, 1.3]),
                seed=rng.randrange(2**32) if rng.random() < 0.5 else None,
                logprobs=rng.choice([None, 0, 5]),
                prompt_logprobs=rng.choice([None, None, 2]),
                stop_token_ids=rng.sample(range(3, 290), rng.randint(0, 3)),
                ignore_eos=rng.random() < 0.5,
            )
            live.append(engine.add_request(prompt, params, priority=rng.randint(0, 2)))
            added += 1
        if live and rng.random() < 0.05:
            engine.abort(live.pop(rng.randrange(len(live))))
            aborted += 1
        for event in engine.step():
            if event.output.finished:
                finished += 1
        live = [r for r in live if not r.finished]
    assert runner.num_compiled() == compiled
    stats = engine.stats.snapshot()
    assert stats["compiles_after_warmup"] == 0 and stats["padding_ratio"] >= 1.0
    assert stats["num_finished"] == finished and stats["generated_tokens"] > 0
    assert finished + aborted == 200 and aborted > 0
    assert engine.scheduler.pages.num_used == 0


def test_a_step_that_admits_a_prompt_decodes_one_token_per_row(llm):
    """Running rows make one token while prompts are prefilled (so a new prompt never waits
    behind k tokens of every row), and k per step once nothing is left to admit."""
    engine = llm.engine
    first = engine.add_request(PROMPTS[0], _greedy(12))
    engine.step()  # prefill: the first token
    assert len(first.output.token_ids) == 1
    engine.step()  # decode only: k = 4 tokens
    assert len(first.output.token_ids) == 5
    second = engine.add_request(PROMPTS[2], _greedy(12))
    engine.step()  # prefills the second prompt, decodes one token of the first
    assert len(first.output.token_ids) == 6 and len(second.output.token_ids) == 1
    engine.step()
    assert len(first.output.token_ids) == 10 and len(second.output.token_ids) == 5
    while engine.has_unfinished():
        engine.step()
    assert first.output.token_ids == llm.generate(PROMPTS[0], _greedy(12))[0].token_ids


def test_short_prompts_share_a_prefill_call_within_the_token_budget(tiny_gguf):
    """Up to `max_prefill_rows` prompts are prefilled in one call, each padded to the longest
    chunk's bucket, never past `max_num_batched_tokens` padded tokens; every request still gets
    its solo tokens (int8: the numerics do not depend on the rows beside it)."""
    llm = LLM(
        str(tiny_gguf),
        weights="int8",
        max_num_seqs=8,
        prefill_chunk=32,
        decode_steps=4,
        max_num_batched_tokens=64,
        max_prefill_rows=4,
        max_model_len=128,
    )
    engine, runner = llm.engine, llm.engine.runner
    calls: list[list[int]] = []
    prefill = runner.prefill

    def recording(rows):
        calls.append([len(r.token_ids) for r in rows])
        return prefill(rows)

    runner.prefill = recording
    rng = random.Random(1)
    prompts = [[rng.randrange(3, 290) for _ in range(n)] for n in (6, 2, 10, 40, 3, 9, 70, 5)]
    solo = [llm.generate(p, _greedy(6))[0].token_ids for p in prompts]
    calls.clear()
    requests = [engine.add_request(p, _greedy(6)) for p in prompts]
    while engine.has_unfinished():
        engine.step()
    assert [r.output.token_ids for r in requests] == solo
    assert max(len(c) for c in calls) > 1  # short prompts were batched
    for chunks in calls:
        rows = bucket(len(chunks), PREFILL_ROW_BUCKETS)
        assert len(chunks) <= 4
        assert len(chunks) == 1 or rows * bucket(max(chunks), TOKEN_BUCKETS) <= 64, chunks
    # 4 rows x 16 padded tokens; the 40-token prompt's first 32 are cached from its solo run
    assert calls[0] == [6, 2, 10, 8]


def test_64_value_blocks_keep_tokens_independent_of_the_batch(tiny_gguf_q4):
    """int8 weights in 64-value blocks (a Q4 model): each request's greedy tokens are the same
    alone, in a batch of others, and on a prefix-cache hit."""
    llm = LLM(str(tiny_gguf_q4), weights="int8", max_num_seqs=8, max_model_len=128)
    solo = [llm.generate(p, _greedy(8))[0].token_ids for p in PROMPTS]
    assert [o.token_ids for o in llm.generate(PROMPTS, _greedy(8))] == solo
    assert [o.token_ids for o in llm.generate(PROMPTS[::-1], _greedy(8))] == solo[::-1]
