"""The sampler chain against numpy references, and its invariants under hypothesis."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from jaxserve.sampling.filters import MIN_TEMPERATURE
from jaxserve.sampling.rows import SamplingRow
from jaxserve.sampling_params import SAMPLER_STAGES, SamplingParams
from jaxserve.testing.chain import processed_logits, run_chain
from jaxserve.testing.strategies import sampling_params

V = 48
FAST = settings(max_examples=25, deadline=None)

logit_rows = arrays(
    np.float32,
    (V,),
    elements=st.floats(-12, 12, allow_nan=False, allow_subnormal=False, width=32),
)


def _kept(logits: np.ndarray, **kw) -> np.ndarray:
    """The set of token ids a single row keeps with these params."""
    row = SamplingRow(SamplingParams(temperature=1.0, **kw))
    return np.isfinite(processed_logits(logits[None], [row])[0])


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x.astype(np.float64) - x.max())
    return e / e.sum()


def _nucleus(score: np.ndarray, mass: np.ndarray, q: float) -> np.ndarray:
    """Reference: the smallest highest-score set with mass >= q (ties at the edge kept)."""
    order = np.argsort(-score, kind="stable")
    cum = np.cumsum(mass[order])
    n = int(np.searchsorted(cum, q - 1e-6)) + 1
    edge = score[order[min(n, len(order)) - 1]]
    return score >= edge


@FAST
@given(logit_rows, st.integers(1, V + 3))
def test_top_k_keeps_exactly_the_k_best(x, k):
    kept = _kept(x, top_k=k)
    kth = np.sort(x)[::-1][min(k, V) - 1]
    np.testing.assert_array_equal(kept, x >= kth)


@FAST
@given(logit_rows, st.floats(0.01, 1.0))
def test_top_p_keeps_the_smallest_prefix_reaching_p(x, p):
    kept = _kept(x, top_p=p)
    probs = _softmax(x)
    assert probs[kept].sum() >= p - 1e-4
    # Dropping the least likely kept token (with its ties) falls below p.
    edge = x[kept].min()
    assert probs[kept & (x > edge)].sum() < p + 1e-4 or kept.all()
    # Everything above the edge is kept.
    np.testing.assert_array_equal(kept, x >= edge)


@FAST
@given(logit_rows, st.floats(0.0, 1.0))
def test_min_p_threshold(x, m):
    kept = _kept(x, min_p=m)
    probs = _softmax(x)
    expected = probs >= m * probs.max()
    near = np.abs(probs - m * probs.max()) <= 1e-5 * probs.max()
    assert np.array_equal(kept[~near], expected[~near])


@FAST
@given(logit_rows, st.floats(0.05, 1.0))
def test_typical_p_keeps_the_most_typical_set_reaching_p(x, q):
    kept = _kept(x, typical_p=q)
    probs = _softmax(x)
    logp = np.log(probs)
    closeness = -np.abs(-logp + (probs * logp).sum())  # -|surprise - entropy|
    # The kept set is the most typical tokens ...
    edge = closeness[kept].min()
    near = np.abs(closeness - edge) <= 1e-5
    np.testing.assert_array_equal(kept[~near], (closeness >= edge)[~near])
    # ... and the smallest such set that reaches q.
    assert probs[kept].sum() >= q - 1e-4
    assert probs[closeness > edge + 1e-5].sum() < q + 1e-4


@FAST
@given(logit_rows, st.floats(0.1, 4.0))
def test_top_n_sigma_matches_the_reference(x, n):
    kept = _kept(x, top_n_sigma=n)
    expected = x >= x.max() - n * x.astype(np.float64).std()
    near = np.abs(x - (x.max() - n * x.std())) < 1e-4
    assert np.array_equal(kept[~near], expected[~near])


@FAST
@given(logit_rows, st.floats(0.01, 0.5))
def test_xtc_removes_all_top_choices_but_the_least_likely(x, threshold):
    kept = _kept(x, xtc_probability=1.0, xtc_threshold=threshold)
    probs = _softmax(x)
    above = probs >= threshold
    if above.sum() < 2:
        assert kept.all()
    else:
        least = x[above].min()
        np.testing.assert_array_equal(kept, ~above | (x == least))


def test_xtc_probability_zero_and_half():
    x = np.array([[5.0, 4.9, 4.8, 0.0] + [-5.0] * (V - 4)], np.float32)
    never = SamplingRow(SamplingParams(xtc_probability=0.0, xtc_threshold=0.1))
    assert np.isfinite(processed_logits(x, [never])[0]).all()
    rows = [
        SamplingRow(SamplingParams(xtc_probability=0.5, xtc_threshold=0.1), seed=s)
        for s in range(200)
    ]
    fired = ~np.isfinite(processed_logits(np.repeat(x, 200, 0), rows)[:, 0])
    assert 60 < fired.sum() < 140


@FAST
@given(logit_rows, st.floats(0.1, 2.0), st.floats(0.05, 1.0), st.floats(0.2, 3.0))
def test_dynamic_temperature_matches_llama_cpp_formula(x, temp, spread, exponent):
    row = SamplingRow(
        SamplingParams(temperature=temp, dynatemp_range=spread, dynatemp_exponent=exponent)
    )
    out = processed_logits(x[None], [row])[0]
    probs = _softmax(x)
    entropy = -(probs * np.log(np.maximum(probs, 1e-300))).sum()
    lo, hi = max(temp - spread, 0.0), temp + spread
    t = lo + (hi - lo) * (entropy / np.log(V)) ** exponent
    if t > 1.01 * MIN_TEMPERATURE:
        np.testing.assert_allclose(out, x / t, rtol=2e-3, atol=1e-3)
    elif t < 0.99 * MIN_TEMPERATURE:  # too cold to divide by: greedy
        np.testing.assert_array_equal(np.isfinite(out), x == x.max())


@FAST
@given(logit_rows)
def test_temperature_zero_is_argmax(x):
    ids = run_chain(np.stack([x, x]), [SamplingRow(SamplingParams(temperature=0.0))] * 2)
    assert (np.asarray(ids.token_ids) == int(np.argmax(x))).all()


@FAST
@given(logit_rows, st.integers(0, V - 1), st.integers(0, V - 1))
def test_logit_bias_bans_and_forces(x, banned, forced):
    rows = [SamplingRow(SamplingParams(logit_bias={banned: -100.0}), seed=s) for s in range(16)] + [
        SamplingRow(SamplingParams(logit_bias={forced: 100.0}), seed=s) for s in range(16)
    ]
    ids = np.asarray(run_chain(np.repeat(x[None], 32, 0), rows).token_ids)
    assert (ids[:16] != banned).all()
    assert (ids[16:] == forced).all()


@FAST
@given(logit_rows, st.sets(st.integers(0, V - 1), min_size=1, max_size=6))
def test_allowed_token_ids_restrict(x, allowed):
    from jaxserve.sampling.rows import token_bitmask

    mask = token_bitmask(sorted(allowed), V)
    rows = [
        SamplingRow(SamplingParams(allowed_token_ids=tuple(allowed)), seed=s, allowed_mask=mask)
        for s in range(16)
    ]
    ids = np.asarray(run_chain(np.repeat(x[None], 16, 0), rows).token_ids)
    assert set(ids.tolist()) <= allowed


@FAST
@given(
    logit_rows,
    st.lists(st.integers(0, V - 1), min_size=1, max_size=20),
    st.integers(1, 10),
    st.floats(1.1, 3.0),
    st.floats(0.1, 2.0),
    st.floats(0.1, 2.0),
)
def test_penalties_push_seen_tokens_down_and_leave_unseen_alone(x, seq, prompt_len, r, pres, freq):
    prompt_len = min(prompt_len, len(seq))
    params = SamplingParams(repetition_penalty=r, presence_penalty=pres, frequency_penalty=freq)
    row = SamplingRow(params, history=seq, prompt_len=prompt_len)
    out = processed_logits(x[None], [row])[0]
    seen = np.zeros(V, bool)
    seen[seq] = True
    counts = np.bincount(seq[prompt_len:], minlength=V)
    np.testing.assert_array_equal(out[~seen], x[~seen])
    expected = np.where(x > 0, x / r, x * r) - pres * (counts > 0) - freq * counts
    np.testing.assert_allclose(out[seen], expected[seen], rtol=1e-5, atol=1e-5)
    assert (out[seen] <= x[seen] + 1e-6).all()


def test_repeat_last_n_limits_the_window():
    x = np.zeros((1, V), np.float32) + 1.0
    seq = [3, 4, 5, 6]
    params = SamplingParams(repetition_penalty=2.0, repeat_last_n=2)
    out = processed_logits(x, [SamplingRow(params, history=seq, prompt_len=4)])[0]
    assert out[5] == out[6] == 0.5
    assert out[3] == out[4] == 1.0


def test_min_tokens_blocks_stop_ids_until_reached():
    x = np.zeros((2, V), np.float32)
    x[:, 7] = 30.0  # the end-of-generation id would win
    params = SamplingParams(temperature=0.0, min_tokens=3, max_tokens=8)
    before = SamplingRow(params, stop_ids=(7,), num_generated=2)
    after = SamplingRow(params, stop_ids=(7,), num_generated=3)
    ids = np.asarray(run_chain(x, [before, after]).token_ids)
    assert ids[0] != 7 and ids[1] == 7


def test_dry_penalizes_the_token_that_extends_a_repeat():
    # history: a b c d ... a b c -> "d" would extend a 3-token repeat.
    a, b, c, d = 1, 2, 3, 4
    hist = [a, b, c, d, 9, 10, a, b, c]
    x = np.zeros((1, V), np.float32)
    params = SamplingParams(dry_multiplier=0.8, dry_base=1.75, dry_allowed_length=2)
    out = processed_logits(x, [SamplingRow(params, history=hist, breaker_mask=None)])[0]
    np.testing.assert_allclose(out[d], -0.8 * 1.75 ** (3 - 2), rtol=1e-5)
    others = np.ones(V, bool)
    others[d] = False
    assert (out[others] == 0).all()


def test_bad_words_ban_the_completing_token_only_after_its_prefix():
    x = np.zeros((2, V), np.float32)
    x[:, 5] = 10.0
    params = SamplingParams(temperature=0.0, bad_words=("x",))
    words = [(4, 5), (6,)]
    mid = SamplingRow(params, history=[1, 2, 4], bad_word_ids=words)
    fresh = SamplingRow(params, history=[1, 2, 3], bad_word_ids=words)
    out = processed_logits(x, [mid, fresh])
    assert out[0, 5] == -np.inf and np.isfinite(out[1, 5])
    assert out[0, 6] == -np.inf and out[1, 6] == -np.inf


@FAST
@given(logit_rows, sampling_params(vocab=V), st.integers(0, 2**16))
def test_any_params_keep_a_valid_distribution(x, params, seed):
    history = list(range(10))
    row = SamplingRow(
        params, seed=seed, history=history, prompt_len=4, mirostat_mu=2 * params.mirostat_tau
    )
    from jaxserve.sampling.rows import token_bitmask

    if params.allowed_token_ids is not None:
        row = SamplingRow(
            **{**row.__dict__, "allowed_mask": token_bitmask(params.allowed_token_ids, V)}
        )
    out = processed_logits(x[None], [row])[0]
    assert not np.isnan(out).any() and np.isfinite(out).any()
    sample = run_chain(x[None], [row])
    token = int(sample.token_ids[0])
    assert 0 <= token < V and np.isfinite(out[token])
    assert np.isfinite(float(sample.mirostat_mu[0]))


def test_mirostat_v2_truncates_by_surprise_and_updates_mu():
    x = np.log(np.array([0.5, 0.25, 0.125, 0.0625] + [0.0625 / (V - 4)] * (V - 4))).astype(
        np.float32
    )
    mu = 2.5  # keeps surprise <= 2.5 bits: p >= 2**-2.5 ~ 0.177 -> tokens 0 and 1
    params = SamplingParams(mirostat=2, mirostat_tau=2.0, mirostat_eta=0.5)
    row = SamplingRow(params, mirostat_mu=mu)
    kept = np.isfinite(processed_logits(x[None], [row])[0])
    assert kept[:2].all() and not kept[2:].any()
    out = run_chain(x[None], [row])
    token = int(out.token_ids[0])
    p = [2 / 3, 1 / 3][token]
    np.testing.assert_allclose(float(out.mirostat_mu[0]), mu - 0.5 * (-np.log2(p) - 2.0), rtol=1e-4)


def test_mirostat_v1_keeps_a_top_k_set():
    x = np.linspace(4, -4, V).astype(np.float32)
    row = SamplingRow(SamplingParams(mirostat=1, mirostat_tau=3.0), mirostat_mu=6.0)
    kept = np.isfinite(processed_logits(x[None], [row])[0])
    n = kept.sum()
    assert 1 <= n < V and kept[:n].all()


def test_order_matters_only_where_the_math_says():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, V)).astype(np.float32) * 3

    def run(order, **kw):
        row = SamplingRow(SamplingParams(temperature=0.4, samplers=order, **kw))
        return processed_logits(x, [row])[0]

    # top-k and temperature commute (both keep the order of the logits) ...
    np.testing.assert_allclose(
        run(("top_k", "temperature"), top_k=5), run(("temperature", "top_k"), top_k=5)
    )
    # ... top-p does not: cooling first concentrates the mass, so fewer tokens reach p.
    warm_first = np.isfinite(run(("top_p", "temperature"), top_p=0.9)).sum()
    cool_first = np.isfinite(run(("temperature", "top_p"), top_p=0.9)).sum()
    assert cool_first < warm_first
    # A stage left out of `samplers` does not run.
    assert np.isfinite(run(("temperature",), top_k=5)).all()


def test_every_stage_name_is_orderable():
    for stage in SAMPLER_STAGES:
        assert SamplingParams(samplers=(stage,)).samplers == (stage,)


def test_draws_follow_the_softmax():
    from scipy import stats

    logits = np.array([2.0, 1.0, 0.5, 0.0, -1.0, -3.0, -30.0, 1.5] + [-50.0] * (V - 8), np.float32)
    n = 8000
    for temperature in (1.0, 0.6):
        rows = [SamplingRow(SamplingParams(temperature=temperature), seed=s) for s in range(n)]
        ids = np.asarray(run_chain(np.repeat(logits[None], n, 0), rows).token_ids)
        counts = np.bincount(ids, minlength=V)
        p = _softmax(logits / temperature)
        keep = p * n >= 5
        observed = counts[keep].astype(np.float64)
        expected = p[keep] / p[keep].sum() * observed.sum()
        assert counts[~keep].sum() <= 5
        assert stats.chisquare(observed, expected).pvalue > 1e-4


@settings(max_examples=15, deadline=None)
@given(st.lists(sampling_params(vocab=V), min_size=1, max_size=5), st.integers(0, 4))
def test_a_seeded_row_draws_the_same_token_in_any_batch(others, place):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(V,)).astype(np.float32) * 2
    mine = SamplingRow(SamplingParams(temperature=0.9, top_p=0.95, seed=7), seed=7)
    alone = run_chain(np.stack([x, x]), [mine, SamplingRow()])
    rows = [SamplingRow(p, seed=i) for i, p in enumerate(others)]
    place = min(place, len(rows))
    rows.insert(place, mine)
    batch = run_chain(np.repeat(x[None], len(rows), 0), rows)
    assert int(batch.token_ids[place]) == int(alone.token_ids[0])


def test_logprobs_raw_and_processed():
    x = np.linspace(3, -3, V).astype(np.float32)[None]
    raw = SamplingRow(SamplingParams(temperature=0.0, top_k=2, logprobs=5))
    processed = SamplingRow(
        SamplingParams(temperature=0.0, top_k=2, logprobs=5, logprobs_mode="processed")
    )
    out = run_chain(np.repeat(x, 2, 0), [raw, processed])
    lp = np.log(_softmax(x[0]))
    np.testing.assert_allclose(np.asarray(out.top_logprobs[0, :5]), lp[:5], rtol=1e-5)
    two = np.log(_softmax(x[0, :2]))
    np.testing.assert_allclose(np.asarray(out.top_logprobs[1, :2]), two, rtol=1e-5)
    assert np.asarray(out.top_logprobs[1, 2]) == -np.inf


def test_a_hook_is_compiled_into_the_chain():
    x = np.zeros((2, V), np.float32)

    def prefer_position(logits, state):
        import jax.numpy as jnp

        return logits.at[jnp.arange(logits.shape[0]), state.length % V].add(50.0)

    rows = [SamplingRow(SamplingParams(temperature=0.0))] * 2
    out = run_chain(x, rows, lengths=[3, 11], hook=prefer_position)
    assert np.asarray(out.token_ids).tolist() == [3, 11]
