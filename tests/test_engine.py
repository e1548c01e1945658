"""The engine end to end through `LLM` on the tiny random GGUF, against the numpy oracle."""

from __future__ import annotations

import numpy as np
import pytest

from jaxserve import LLM, SamplingParams
from jaxserve.errors import ContextLengthError
from tests.numpy_llama import NumpyLlama

PROMPT = [5, 77, 120, 3, 250, 18, 42, 42, 9, 101, 64, 200, 7, 33, 150, 11, 90]
GREEDY = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(tiny_gguf) -> LLM:
    return LLM(str(tiny_gguf), weights="f32", max_num_seqs=4, prefill_chunk=16)


@pytest.fixture(scope="module")
def oracle(tiny_gguf) -> NumpyLlama:
    return NumpyLlama(tiny_gguf)


def _greedy_oracle(oracle: NumpyLlama, prompt: list[int], n: int) -> list[int]:
    seq = list(prompt)
    for _ in range(n):
        seq.append(int(oracle.logits(seq)[-1].argmax()))
    return seq[len(prompt) :]


def test_greedy_generation_matches_numpy_across_prefill_chunks(llm, oracle):
    out = llm.generate(PROMPT, GREEDY)[0]  # 17 tokens: two prefill chunks of 16
    assert out.prompt_token_ids == PROMPT
    assert out.token_ids == _greedy_oracle(oracle, PROMPT, 8)
    assert out.finish_reason == "length"
    assert out.text == llm.detokenize(out.token_ids)


def test_batch_outputs_equal_single_outputs_and_keep_order(llm):
    prompts = [PROMPT[:5], PROMPT, PROMPT[3:12], PROMPT[:2], PROMPT[6:], PROMPT[1:9]]
    alone = [llm.generate(p, GREEDY)[0].token_ids for p in prompts]
    together = llm.generate(prompts, GREEDY)  # more prompts than max_num_seqs
    assert [o.token_ids for o in together] == alone
    assert [o.prompt_token_ids for o in together] == prompts


def test_seeded_sampling_is_batch_invariant(llm):
    params = SamplingParams(max_tokens=10, temperature=1.0, seed=1234, ignore_eos=True)
    alone = llm.generate(PROMPT, params)[0].token_ids
    others = SamplingParams(max_tokens=10, temperature=1.0, seed=99, ignore_eos=True)
    mixed = llm.generate([PROMPT[:4], PROMPT, PROMPT[2:]], params)
    assert mixed[1].token_ids == alone
    assert llm.generate(PROMPT, others)[0].token_ids != alone


def test_one_sampling_params_per_prompt(llm):
    """vLLM's form: a list of SamplingParams, one per prompt, each applied to its own prompt."""
    short = SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True)
    seeded = SamplingParams(max_tokens=6, temperature=1.0, seed=7, ignore_eos=True)
    outs = llm.generate([PROMPT[:5], PROMPT, PROMPT[2:]], [short, seeded, GREEDY])
    assert [len(o.token_ids) for o in outs] == [3, 6, 8]
    assert outs[0].token_ids == llm.generate(PROMPT[:5], short)[0].token_ids
    assert outs[1].token_ids == llm.generate(PROMPT, seeded)[0].token_ids
    assert outs[2].token_ids == llm.generate(PROMPT[2:], GREEDY)[0].token_ids
    with pytest.raises(ValueError, match="2 SamplingParams for 3 prompts"):
        llm.generate([PROMPT[:5], PROMPT, PROMPT[2:]], [short, seeded])
    with pytest.raises(TypeError, match="SamplingParams"):
        llm.generate([PROMPT[:5]], [{"max_tokens": 3}])  # type: ignore[list-item]
    assert not llm.engine.has_unfinished()


def test_prompt_logprobs_without_generation(llm, oracle):
    out = llm.generate(PROMPT, SamplingParams(max_tokens=0, prompt_logprobs=3))[0]
    assert out.token_ids == [] and out.text == "" and out.finish_reason == "length"
    assert len(out.prompt_logprobs) == len(PROMPT) and out.prompt_logprobs[0] is None
    logits = oracle.logits(PROMPT)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    for i, entry in enumerate(out.prompt_logprobs[1:], start=1):
        assert entry.token_id == PROMPT[i]
        assert entry.logprob == pytest.approx(logp[i - 1, PROMPT[i]], abs=2e-4)
        assert len(entry.top) == 3
        assert [t for t, _ in entry.top] == list(np.argsort(-logp[i - 1])[:3])


def test_generated_token_logprobs(llm):
    out = llm.generate(PROMPT, SamplingParams(max_tokens=5, temperature=0.0, logprobs=2))[0]
    assert [lp.token_id for lp in out.logprobs] == out.token_ids
    for lp in out.logprobs:
        assert len(lp.top) == 2 and lp.logprob <= 0.0
        assert lp.top[0][0] == lp.token_id  # greedy picks the most likely token
        assert lp.top[0][1] == pytest.approx(lp.logprob)


def test_stop_token_ids_end_generation(llm):
    full = llm.generate(PROMPT, GREEDY)[0].token_ids
    out = llm.generate(
        PROMPT, SamplingParams(max_tokens=8, temperature=0.0, stop_token_ids=[full[3]])
    )[0]
    assert out.finish_reason == "stop"
    assert out.token_ids == full[: full.index(full[3]) + 1]


def test_stop_string_truncates_text(llm):
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    full = llm.generate(PROMPT, params)[0].text
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    assume_text = full[: full.index(stop)]
    out = llm.generate(
        PROMPT, SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, stop=[stop])
    )[0]
    assert out.finish_reason == "stop"
    assert out.text == assume_text


def test_streaming_yields_the_same_text(llm):
    params = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
    assert "".join(llm.stream(PROMPT, params)) == llm.generate(PROMPT, params)[0].text


def test_prompt_longer_than_context_is_rejected(tiny_gguf):
    small = LLM(str(tiny_gguf), weights="f32", max_model_len=32)
    with pytest.raises(ContextLengthError, match="32"):
        small.generate(list(range(1, 33)), GREEDY)
    # Fits exactly when only scored; generation stops at the context end with "length".
    assert small.generate(list(range(1, 33)), SamplingParams(max_tokens=0, prompt_logprobs=0))
    out = small.generate(
        list(range(1, 30)), SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
    )[0]
    assert len(out.token_ids) == 3 and out.finish_reason == "length"


def test_requests_wait_for_pages_instead_of_failing(tiny_gguf):
    # Room for one 64-token request at a time (4 pages of 16 + the null page).
    llm = LLM(
        str(tiny_gguf), weights="f32", max_model_len=64, kv_cache_bytes=5 * 2 * 4 * 2 * 16 * 2 * 16
    )
    outs = llm.generate(
        [PROMPT, PROMPT[:9], PROMPT[4:]],
        SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True),
    )
    assert all(len(o.token_ids) == 40 for o in outs)


def test_bad_prompts_are_rejected(llm):
    with pytest.raises(ValueError, match="empty"):
        llm.generate([[]], GREEDY)
    with pytest.raises(ValueError, match="token ids"):
        llm.generate([10**6], GREEDY)


def test_include_stop_str_in_output_keeps_the_stop_string(llm):
    free = llm.generate(PROMPT, SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True))
    text = free[0].text
    stop = text[len(text) // 3 : len(text) // 3 + 3]
    assert len(stop) == 3
    cut = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True, stop=(stop,))
    kept = SamplingParams(
        max_tokens=16,
        temperature=0.0,
        ignore_eos=True,
        stop=(stop,),
        include_stop_str_in_output=True,
    )
    without, with_stop = llm.generate([PROMPT, PROMPT], [cut, kept])
    assert without.finish_reason == with_stop.finish_reason == "stop"
    assert without.text == text[: text.find(stop)]
    assert with_stop.text == text[: text.find(stop)] + stop


def test_skip_special_tokens_false_writes_special_tokens_into_the_text(llm):
    im_start = 1  # a control token of the tiny vocabulary, forced by the bias
    forced = dict(max_tokens=3, temperature=0.0, logit_bias={im_start: 100.0}, ignore_eos=True)
    skipped, written = llm.generate(
        [PROMPT, PROMPT],
        [SamplingParams(**forced), SamplingParams(**forced, skip_special_tokens=False)],
    )
    assert skipped.token_ids == written.token_ids == [im_start] * 3
    assert skipped.text == "" and written.text == "<|im_start|>" * 3
    with pytest.raises(ValueError, match="skip_special_tokens"):
        SamplingParams(skip_special_tokens="no")  # type: ignore[arg-type]


class _RaisingMatcher:
    """A constraint matcher with a bug: its `after`-th accepted token raises."""

    def __init__(self, inner, after: int) -> None:
        self.inner, self.after = inner, after

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def accept_token(self, token: int) -> bool:
        self.after -= 1
        if self.after < 0:
            raise RuntimeError("matcher bug")
        return self.inner.accept_token(token)


@pytest.mark.parametrize("after", [0, 3])  # in its prefill step, or in a decode step
def test_a_request_whose_host_work_raises_fails_alone(llm, after):
    engine = llm.engine
    alone = llm.generate(PROMPT, GREEDY)[0].token_ids
    good = engine.add_request(PROMPT, GREEDY)
    constrained = SamplingParams(max_tokens=8, temperature=0.0, regex="[a-z ]+")
    bad = engine.add_request(PROMPT[:6], constrained)
    bad.matcher = _RaisingMatcher(bad.matcher, after)
    failed = set()
    while engine.has_unfinished():
        events = engine.step()
        failed |= set(engine.failed)
        if engine.failed:  # the step that failed it reports nothing else of it
            assert all(e.output.request_id != bad.request_id for e in events)
    assert failed == {bad.request_id}
    assert bad.output.finish_reason == "abort" and "matcher bug" in bad.output.error
    assert good.output.token_ids == alone and good.output.error is None
    assert engine.scheduler.pages.num_used == 0
