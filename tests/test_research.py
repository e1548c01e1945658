"""Research hooks per request: hidden states, logit lens, steering, per-token uncertainty.

The invariant: one row's hooks never change another row's tokens, a zero steering vector changes
nothing, and what a row captures is what an independent numpy forward pass computes.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from jaxserve import LLM, SamplingParams
from jaxserve.errors import QueueFullError
from jaxserve.loading.control_vector import write_control_vector
from jaxserve.sampling.uncertainty import measures
from tests.kv_pages import kv_bytes
from tests.numpy_llama import NumpyLlama

GREEDY = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
PROMPTS = ["The ocean is deep.", "hello", "one two three four five six seven eight nine ten"]


def _llm(path, **kw) -> LLM:
    config = dict(max_model_len=64, prefill_chunk=16, max_num_seqs=8, decode_steps=4)
    config |= dict(capture_layers=3, steering_slots=3, compilation_cache_dir="")
    return LLM(str(path), **(config | kw))


@pytest.fixture(scope="module")
def llm(tiny_gguf) -> LLM:
    return _llm(tiny_gguf, weights="f32")


@pytest.fixture(scope="module")
def llm8(tiny_gguf) -> LLM:
    return _llm(tiny_gguf, weights="int8")


@pytest.fixture(scope="module")
def oracle(tiny_gguf) -> NumpyLlama:
    return NumpyLlama(tiny_gguf)


def _with(params: SamplingParams, **kw) -> SamplingParams:
    return dataclasses.replace(params, **kw)


def test_hidden_states_at_every_position_match_the_numpy_forward(llm, oracle):
    params = _with(GREEDY, return_hidden_states=(0, -1), hidden_positions="all")
    out = llm.generate(PROMPTS[2], params)[0]
    ids = out.prompt_token_ids + out.token_ids[:-1]  # the last token was never fed back
    assert len(ids) > 16  # the prompt spans two prefill chunks
    assert out.hidden_positions == list(range(len(ids)))
    residuals, final = oracle.forward(ids)
    assert set(out.hidden_states) == {0, 1, "final"}  # -1 resolves to layer 1 of 2
    np.testing.assert_allclose(out.hidden_states[0], residuals[0], atol=1e-4)
    np.testing.assert_allclose(out.hidden_states[1], residuals[1], atol=1e-4)
    np.testing.assert_allclose(out.hidden_states["final"], final, atol=1e-4)


@pytest.mark.parametrize("mode", ["last", "generated"])
def test_hidden_positions(llm, mode):
    params = _with(GREEDY, return_hidden_states=(1,), hidden_positions=mode)
    full = llm.generate(PROMPTS[0], _with(params, hidden_positions="all"))[0]
    out = llm.generate(PROMPTS[0], params)[0]
    assert out.token_ids == full.token_ids
    p = len(out.prompt_token_ids)
    want = [p - 1] if mode == "last" else list(range(p - 1, p - 1 + len(out.token_ids)))
    assert out.hidden_positions == want
    rows = [full.hidden_positions.index(x) for x in want]
    for key in (1, "final"):
        np.testing.assert_array_equal(out.hidden_states[key], full.hidden_states[key][rows])


def test_final_hidden_states_are_what_embed_pools(llm8):
    params = _with(GREEDY, max_tokens=1, return_hidden_states=(), hidden_positions="all")
    out = llm8.generate(PROMPTS[2], params)[0]
    mean = out.hidden_states["final"].astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(llm8.embed(PROMPTS[2])[0], mean / np.linalg.norm(mean), atol=1e-6)


def test_logit_lens_of_the_last_layer_is_the_models_distribution(llm8):
    params = _with(GREEDY, max_tokens=8, logit_lens=(0, 1), logprobs=5, logit_lens_top_k=5)
    out = llm8.generate(PROMPTS[1], params)[0]
    assert len(out.logit_lens) == len(out.token_ids) == 8
    for entry, lp, token in zip(out.logit_lens, out.logprobs, out.token_ids, strict=True):
        assert set(entry) == {0, 1}
        assert [t for t, _ in entry[1]] == [t for t, _ in lp.top]
        np.testing.assert_allclose([x for _, x in entry[1]], [x for _, x in lp.top], atol=1e-5)
        assert entry[1][0][0] == token  # greedy: the lens of the last layer's argmax
        assert len(entry[0]) == 5 and all(x <= 0 for _, x in entry[0])


def test_lens_of_earlier_layers_matches_numpy(llm, oracle):
    params = _with(GREEDY, max_tokens=3, logit_lens=(0,), logit_lens_top_k=3)
    out = llm.generate(PROMPTS[0], params)[0]
    ids = out.prompt_token_ids + out.token_ids
    residuals, _ = oracle.forward(ids)
    head = oracle.t.get("output.weight", oracle.t["token_embd.weight"])
    for j, entry in enumerate(out.logit_lens):
        x = residuals[0][len(out.prompt_token_ids) - 1 + j]
        logits = oracle._norm(x, oracle.t["output_norm.weight"]) @ head.T
        logp = logits - np.log(np.sum(np.exp(logits - logits.max()))) - logits.max()
        top = np.argsort(-logp)[:3]
        assert [t for t, _ in entry[0]] == list(top)
        np.testing.assert_allclose([x for _, x in entry[0]], logp[top], atol=1e-4)


def test_steering_adds_to_the_residual_stream_as_numpy_does(llm, oracle):
    vector = np.random.default_rng(0).normal(size=llm.config.hidden_size).astype(np.float32)
    params = _with(
        GREEDY, steering={0: tuple(vector)}, steering_scale=0.5, return_hidden_states=(0, 1)
    )
    out = llm.generate(PROMPTS[0], _with(params, hidden_positions="all"))[0]
    ids = out.prompt_token_ids + out.token_ids[:-1]
    residuals, final = oracle.forward(ids, steering={0: 0.5 * vector.astype(np.float64)})
    np.testing.assert_allclose(out.hidden_states[0], residuals[0], atol=1e-4)
    np.testing.assert_allclose(out.hidden_states["final"], final, atol=1e-4)
    expected = int(np.argmax(final[-1] @ oracle.t["token_embd.weight"].T))
    assert out.token_ids[-1] == expected


def _batch(llm: LLM, requests) -> list:
    return llm.generate([p for p, _ in requests], [s for _, s in requests])


def test_hooks_never_change_the_other_rows(llm8):
    rng = np.random.default_rng(1)
    e = llm8.config.hidden_size
    sampled = SamplingParams(max_tokens=10, temperature=0.9, top_p=0.9, seed=5, ignore_eos=True)
    plain = [(PROMPTS[0], GREEDY), (PROMPTS[1], sampled)]
    alone = [llm8.generate(p, s)[0].token_ids for p, s in plain]
    hooked = [
        (PROMPTS[2], _with(GREEDY, steering={1: tuple(rng.normal(size=e) * 4)})),
        (PROMPTS[1], _with(sampled, return_hidden_states=(0, 1), logit_lens=(0,))),
        (PROMPTS[0], _with(GREEDY, steering={0: tuple(rng.normal(size=e) * 4)}, logit_lens=(1,))),
        (
            PROMPTS[2],
            _with(
                GREEDY, return_uncertainty=True, hidden_positions="all", return_hidden_states=(1,)
            ),
        ),
    ]
    outs = _batch(llm8, [hooked[0], plain[0], hooked[1], plain[1], hooked[2], hooked[3]])
    assert [outs[1].token_ids, outs[3].token_ids] == alone
    # a row's own capture, lens and uncertainty leave its tokens as they were
    assert outs[2].token_ids == alone[1]
    assert outs[5].token_ids == llm8.generate(PROMPTS[2], GREEDY)[0].token_ids


def test_zero_steering_changes_nothing_and_real_steering_does(llm8):
    e = llm8.config.hidden_size
    base = llm8.generate(PROMPTS, GREEDY)
    zero = llm8.generate(PROMPTS, _with(GREEDY, steering={0: (0.0,) * e, 1: (0.0,) * e}))
    assert [o.token_ids for o in zero] == [o.token_ids for o in base]
    push = np.zeros(e)
    push[:8] = 50.0
    steered = llm8.generate(PROMPTS, _with(GREEDY, steering={1: tuple(push)}))
    assert [o.token_ids for o in steered] != [o.token_ids for o in base]


def test_prefix_cache_is_keyed_by_steering(llm8):
    e = llm8.config.hidden_size
    long = "steer the cache: alpha beta gamma delta epsilon"  # a prompt no other test sends
    steer = _with(GREEDY, steering={1: tuple(np.full(e, 3.0))})
    first = llm8.generate(long, steer)[0]
    again = llm8.generate(long, steer)[0]
    assert again.num_cached_tokens > 0  # the steered prompt's own pages are reused
    assert again.token_ids == first.token_ids
    plain = llm8.generate(long, GREEDY)[0]
    assert plain.num_cached_tokens == 0  # never the steered pages
    assert plain.token_ids != first.token_ids
    assert llm8.generate(long, GREEDY)[0].token_ids == plain.token_ids
    half = llm8.generate(long, _with(steer, steering_scale=0.5))[0]
    assert half.num_cached_tokens == 0  # the scale is part of the key


def test_control_vector_files_steer_by_name(tiny_gguf, tmp_path):
    e = 64
    rng = np.random.default_rng(2)
    directions = {1: rng.normal(size=e).astype(np.float32) * 3}
    path = write_control_vector(tmp_path / "happy.gguf", directions)
    llm = _llm(tiny_gguf, weights="int8", control_vectors={"happy": path}, steering_slots=2)
    by_name = llm.generate(PROMPTS, _with(GREEDY, steering="happy", steering_scale=2.0))
    by_layer = llm.generate(PROMPTS, _with(GREEDY, steering={1: "happy"}, steering_scale=2.0))
    inline = _with(GREEDY, steering={1: tuple(directions[1])}, steering_scale=2.0)
    by_value = llm.generate(PROMPTS, inline)
    assert [o.token_ids for o in by_name] == [o.token_ids for o in by_value]
    assert [o.token_ids for o in by_layer] == [o.token_ids for o in by_value]
    with pytest.raises(ValueError, match="no control vector named 'sad'"):
        llm.generate("x", _with(GREEDY, steering="sad"))
    with pytest.raises(ValueError, match="steering\\[0\\]: a vector of 3 values"):
        llm.generate("x", _with(GREEDY, steering={0: (1.0, 2.0, 3.0)}))
    # one slot is the file's; a second distinct inline vector while one runs has no room
    engine = llm.engine
    a = engine.add_request([1, 2], _with(GREEDY, steering={0: (1.0,) * e}))
    with pytest.raises(QueueFullError, match="steering slots"):
        engine.add_request([1, 2], _with(GREEDY, steering={0: (2.0,) * e}))
    same = engine.add_request([1, 2], _with(GREEDY, steering={0: (1.0,) * e}))  # shares a's
    while engine.has_unfinished():
        engine.step()
    assert a.finished and same.finished and a.output.token_ids == same.output.token_ids
    engine.add_request([1, 2], _with(GREEDY, steering={0: (2.0,) * e}))  # the slot is free again
    while engine.has_unfinished():
        engine.step()


def test_a_refused_steered_request_keeps_no_slot(llm):
    e = llm.config.hidden_size
    steer = _with(GREEDY, steering={0: (0.25,) * e}, bad_words=("x" * 40,))
    with pytest.raises(ValueError, match="bad_words"):
        llm.generate("x", steer)
    assert not llm.engine.research._refs  # nothing holds a slot
    assert not llm.engine.has_unfinished()


def test_requests_the_engine_cannot_serve_are_refused(tiny_gguf, llm):
    with pytest.raises(ValueError, match="return_hidden_states: layer 2 is out of range"):
        llm.generate("x", _with(GREEDY, return_hidden_states=(2,)))
    with pytest.raises(ValueError, match="captures at most 3"):
        llm.generate("x", _with(GREEDY, return_hidden_states=(0, 1), logit_lens=(-1, -2, 5)))
    plain = LLM(str(tiny_gguf), weights="int8", max_model_len=64, compilation_cache_dir="")
    with pytest.raises(ValueError, match="capture_layers=N"):
        plain.generate("x", _with(GREEDY, logit_lens=(0,)))
    with pytest.raises(ValueError, match="steering_slots=N"):
        plain.generate("x", _with(GREEDY, steering={0: (0.0,) * 64}))
    assert not plain.engine.has_unfinished()


def test_uncertainty_per_token(llm8):
    params = _with(GREEDY, max_tokens=5, return_uncertainty=True, logprobs=2)
    out = llm8.generate(PROMPTS[1], params)[0]
    assert len(out.uncertainty) == 5
    vocab = llm8.config.vocab_size
    for u, lp in zip(out.uncertainty, out.logprobs, strict=True):
        assert 0.0 <= u.entropy <= np.log(vocab) + 1e-4
        assert u.processed_entropy == pytest.approx(u.entropy, abs=1e-5)  # greedy: no stage
        assert u.margin == pytest.approx(lp.top[0][1] - lp.top[1][1], abs=1e-5)
    top1 = llm8.generate(PROMPTS[1], _with(params, temperature=1.0, top_k=1, seed=1))[0]
    assert all(u.processed_entropy == pytest.approx(0.0, abs=1e-6) for u in top1.uncertainty)


def test_uncertainty_measures_against_numpy():
    rng = np.random.default_rng(3)
    raw = rng.normal(size=(4, 50)).astype(np.float32) * 3
    processed = np.where(raw > 0, raw * 2, -np.inf).astype(np.float32)
    got = np.asarray(measures(raw, processed, np.array([True, False, False, False])))

    def entropy(x):
        p = np.exp(x - x.max())
        p /= p.sum()
        return -np.sum(p[p > 0] * np.log(p[p > 0]))

    for i in range(4):
        srt = np.sort(raw[i])[::-1]
        want = [entropy(raw[i]), entropy(processed[i]), srt[0] - srt[1]]
        np.testing.assert_allclose(got[i], want, rtol=1e-4, atol=1e-5)
    assert not np.asarray(measures(raw, processed, np.zeros(4, bool))).any()


def test_n_sequences_share_the_prompts_hidden_states(llm):
    params = _with(
        GREEDY, temperature=1.0, n=2, seed=3, return_hidden_states=(1,), hidden_positions="all"
    )
    a, b = llm.generate(PROMPTS[2], params)
    p = len(a.prompt_token_ids)
    np.testing.assert_array_equal(a.hidden_states[1][:p], b.hidden_states[1][:p])
    assert b.hidden_positions == list(range(p + len(b.token_ids) - 1))


def test_preemption_keeps_every_position_once(tiny_gguf):
    # room for about two sequences: the later ones are preempted and recomputed
    llm = _llm(
        tiny_gguf, weights="int8", kv_cache_bytes=kv_bytes(tiny_gguf, 8)
    )  # 7 pages of 16 tokens
    params = _with(
        GREEDY,
        max_tokens=20,
        return_hidden_states=(0,),
        hidden_positions="all",
        logit_lens=(1,),
        return_uncertainty=True,
    )
    outs = llm.generate(PROMPTS * 2, params)
    assert llm.engine.scheduler.num_preemptions > 0
    for out in outs:
        alone = llm.generate(out.prompt_token_ids, params)[0]
        assert out.token_ids == alone.token_ids
        assert out.hidden_positions == alone.hidden_positions
        np.testing.assert_array_equal(out.hidden_states[0], alone.hidden_states[0])
        assert out.logit_lens == alone.logit_lens and out.uncertainty == alone.uncertainty


def test_choosing_layers_and_vectors_never_recompiles(tiny_gguf):
    llm = _llm(tiny_gguf, weights="int8", max_num_seqs=2, warmup=True)
    compiled = llm.engine.runner.num_compiled()
    e = llm.config.hidden_size
    kinds = [
        _with(GREEDY, return_hidden_states=(0,), hidden_positions="all"),
        _with(GREEDY, return_hidden_states=(1, 0, -1), logit_lens=(0,)),
        _with(GREEDY, steering={0: (1.0,) * e}, logit_lens=(1,), return_uncertainty=True),
        _with(GREEDY, steering={1: (0.5,) * e}, steering_scale=-2.0),
    ]
    for params in kinds:
        llm.generate(PROMPTS, params)
    llm.generate([*PROMPTS, PROMPTS[0]], kinds)
    assert llm.engine.runner.num_compiled() == compiled


def test_lens_of_a_few_rows_equals_the_lens_of_all(llm8):
    lens = _with(GREEDY, logit_lens=(0, 1), logit_lens_top_k=4)
    prompts = [*PROMPTS, *PROMPTS, PROMPTS[0], PROMPTS[1]]  # 8 rows: a quarter is 2
    few = llm8.generate(prompts, [lens] + [GREEDY] * 7)[0]
    every = llm8.generate(prompts, [lens] * 8)
    assert few.token_ids == every[0].token_ids
    for a, b in zip(few.logit_lens, every[0].logit_lens, strict=True):
        assert [t for t, _ in a[0]] == [t for t, _ in b[0]]
        np.testing.assert_allclose([x for _, x in a[1]], [x for _, x in b[1]], atol=1e-5)
