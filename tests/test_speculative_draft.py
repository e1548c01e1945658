"""Speculative decoding with a draft model (`engine/drafter.py`): the target's tokens, greedy
and seeded, whatever the draft; a draft cache kept in step with the target's (the target as its
own draft has every greedy draft accepted, across steps that did not draft, preemption and
prefix-cache hits); its buckets in the warm-up; the refusals."""

from __future__ import annotations

import pytest

from jaxserve import LLM, SamplingParams
from tests.tiny_gguf import write_tiny_gguf
from tests.tiny_vocab import gpt2_tokenizer_metadata

PROMPTS = [[1, 5, 9, 12, 40, 5, 9, 12], [1, 77, 120, 3], [1, 30, 31, 32, 33], [1, 200, 7]]
GREEDY = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True, logprobs=2)
SEEDED = SamplingParams(max_tokens=40, temperature=0.9, top_p=0.95, seed=7, ignore_eos=True)


def _llm(path, **kw) -> LLM:
    return LLM(str(path), **(dict(max_model_len=256, max_num_seqs=8) | kw))


def _draft(target, draft, **kw) -> LLM:
    return _llm(target, speculative="draft", speculative_model=str(draft), **kw)


@pytest.fixture(scope="module")
def expected(tiny_gguf):
    plain = _llm(tiny_gguf)
    return {
        name: plain.generate(PROMPTS, p) for name, p in (("greedy", GREEDY), ("seeded", SEEDED))
    }


def _check(llm: LLM, expected) -> None:
    for name, params in (("greedy", GREEDY), ("seeded", SEEDED)):
        outs = llm.generate(PROMPTS, params)
        for ours, theirs in zip(outs, expected[name], strict=True):
            assert ours.token_ids == theirs.token_ids
            assert ours.logprobs == theirs.logprobs


def test_another_model_drafts_the_targets_tokens(tiny_gguf, tiny_gguf_untied, expected):
    llm = _draft(tiny_gguf, tiny_gguf_untied)
    _check(llm, expected)
    assert llm.engine.speculator.num_proposed > 0


def test_the_target_as_its_own_draft_has_every_greedy_draft_accepted(tiny_gguf, expected):
    """Greedy drafts of the target itself are the target's draws when the draft cache holds
    the right K/V: with 8 requests the first steps do not draft (more rows than `max_rows`),
    so the 4 that go on catch their tokens up later; every draft is accepted."""
    llm = _draft(tiny_gguf, tiny_gguf)
    short = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    outs = llm.generate(PROMPTS * 2, [short] * 4 + [GREEDY] * 4)
    greedy = [o.token_ids for o in expected["greedy"]]
    assert [o.token_ids for o in outs] == [t[:8] for t in greedy] + greedy
    speculator = llm.engine.speculator
    assert speculator.num_proposed > 50
    assert speculator.num_accepted == speculator.num_proposed
    again = llm.generate(PROMPTS[:1], GREEDY)[0]
    assert again.token_ids == expected["greedy"][0].token_ids
    assert speculator.num_accepted == speculator.num_proposed


def test_preemption_resets_the_draft_cache(tiny_gguf, expected):
    llm = _llm(tiny_gguf)
    page = llm.engine.runner.bytes_per_page(llm.engine.runner.config, llm.engine.config.page_size)
    small = _draft(tiny_gguf, tiny_gguf, kv_cache_bytes=10 * page)
    outs = small.generate(PROMPTS, GREEDY)
    assert small.engine.scheduler.num_preemptions > 0
    assert [o.token_ids for o in outs] == [o.token_ids for o in expected["greedy"]]
    speculator = small.engine.speculator
    assert speculator.num_accepted == speculator.num_proposed > 0


def test_the_background_warm_up_compiles_the_draft_models_buckets(tiny_gguf, tiny_gguf_untied):
    small = dict(max_model_len=64, max_num_seqs=2, prefill_chunk=16, max_num_batched_tokens=16)
    llm = _draft(tiny_gguf, tiny_gguf_untied, warmup="background", **small)
    engine = llm.engine
    assert any(kind.startswith("draft-") for kind, *_ in engine.warmup_pending())
    while engine.warm_one():
        pass
    target, draft = engine.runner.num_compiled(), engine.drafter.runner.num_compiled()
    llm.generate(PROMPTS, GREEDY)
    assert engine.speculator.num_proposed > 0
    assert (engine.runner.num_compiled(), engine.drafter.runner.num_compiled()) == (target, draft)


def test_refusals(tiny_gguf, tmp_path):
    with pytest.raises(ValueError, match="speculative_model"):
        _llm(tiny_gguf, speculative="draft")
    with pytest.raises(ValueError, match="speculative_model"):
        _llm(tiny_gguf, speculative="ngram", speculative_model=str(tiny_gguf))
    metadata = gpt2_tokenizer_metadata()
    metadata["tokenizer.ggml.tokens"] = [t + "x" for t in metadata["tokenizer.ggml.tokens"]]
    other = write_tiny_gguf(tmp_path / "other.gguf", metadata)
    with pytest.raises(ValueError, match="tokenizer"):
        _draft(tiny_gguf, other)
