"""Hypothesis strategies: valid `SamplingParams` and batches of requests."""

from __future__ import annotations

from hypothesis import strategies as st

from jaxserve.sampling_params import MAX_LOGPROBS, SAMPLER_STAGES, SamplingParams


def _unit(lo: float, hi: float):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False).map(lambda v: round(v, 4))


@st.composite
def sampling_params(draw, *, vocab: int = 64, max_tokens: int = 16) -> SamplingParams:
    """Any valid `SamplingParams`: each stage on or off, any order, any value in range."""
    maybe = st.booleans()
    kw: dict = {"max_tokens": draw(st.integers(0, max_tokens))}
    kw["min_tokens"] = draw(st.integers(0, kw["max_tokens"]))
    kw["temperature"] = draw(st.sampled_from([0.0, 1.0]) | _unit(0.05, 3.0))
    if draw(maybe):
        kw["dynatemp_range"] = draw(_unit(0.0, 1.0))
        kw["dynatemp_exponent"] = draw(_unit(0.1, 3.0))
    if draw(maybe):
        kw["top_k"] = draw(st.integers(0, vocab + 4))
    if draw(maybe):
        kw["top_p"] = draw(_unit(0.01, 1.0))
    if draw(maybe):
        kw["min_p"] = draw(_unit(0.0, 1.0))
    if draw(maybe):
        kw["typical_p"] = draw(_unit(0.01, 1.0))
    if draw(maybe):
        kw["top_n_sigma"] = draw(_unit(0.0, 4.0))
    if draw(maybe):
        kw["xtc_probability"] = draw(_unit(0.0, 1.0))
        kw["xtc_threshold"] = draw(_unit(0.0, 1.0))
    if draw(maybe):
        kw["repetition_penalty"] = draw(_unit(0.5, 2.0))
        kw["presence_penalty"] = draw(_unit(-2.0, 2.0))
        kw["frequency_penalty"] = draw(_unit(-2.0, 2.0))
        kw["repeat_last_n"] = draw(st.integers(-1, 64))
    if draw(maybe):
        kw["dry_multiplier"] = draw(_unit(0.0, 2.0))
        kw["dry_base"] = draw(_unit(1.0, 3.0))
        kw["dry_allowed_length"] = draw(st.integers(1, 4))
    if draw(maybe):
        kw["mirostat"] = draw(st.integers(0, 2))
        kw["mirostat_tau"] = draw(_unit(0.0, 10.0))
        kw["mirostat_eta"] = draw(_unit(0.0, 1.0))
    if draw(maybe):
        ids = st.integers(0, vocab - 1)
        kw["logit_bias"] = draw(st.dictionaries(ids, _unit(-100.0, 100.0), max_size=4))
    if draw(maybe):
        kw["allowed_token_ids"] = tuple(draw(st.sets(st.integers(0, vocab - 1), min_size=1)))
    if draw(maybe):
        kw["samplers"] = tuple(draw(st.permutations(SAMPLER_STAGES)))[
            : draw(st.integers(0, len(SAMPLER_STAGES)))
        ]
    kw["seed"] = draw(st.none() | st.integers(0, 2**32 - 1))
    kw["logprobs"] = draw(st.none() | st.integers(0, MAX_LOGPROBS))
    kw["logprobs_mode"] = draw(st.sampled_from(["raw", "processed"]))
    kw["ignore_eos"] = draw(maybe)
    return SamplingParams(**kw)


@st.composite
def request_batches(
    draw, *, vocab: int = 64, max_prompt: int = 24, max_size: int = 6, max_tokens: int = 8
) -> list[tuple[list[int], SamplingParams]]:
    """Batches of (prompt token ids, params), each request seeded so its output is fixed."""
    size = draw(st.integers(1, max_size))
    batch = []
    for _ in range(size):
        prompt = draw(st.lists(st.integers(0, vocab - 1), min_size=1, max_size=max_prompt))
        params = draw(sampling_params(vocab=vocab, max_tokens=max_tokens))
        if params.seed is None:
            params = SamplingParams(**{**params.__dict__, "seed": draw(st.integers(0, 2**16))})
        batch.append((prompt, params))
    return batch


def every_stage(*, allowed: range, max_tokens: int = 10, **overrides) -> SamplingParams:
    """Params with every stage and restriction on (for no-recompile tests and benchmarks)."""
    fields = dict(
        max_tokens=max_tokens,
        min_tokens=3,
        temperature=0.8,
        dynatemp_range=0.3,
        top_k=40,
        top_p=0.95,
        min_p=0.02,
        typical_p=0.9,
        top_n_sigma=3.0,
        xtc_probability=0.5,
        xtc_threshold=0.2,
        repetition_penalty=1.2,
        presence_penalty=0.3,
        frequency_penalty=0.2,
        repeat_last_n=16,
        dry_multiplier=0.8,
        mirostat=2,
        logit_bias={7: 2.0, 9: -100.0},
        allowed_token_ids=tuple(allowed),
        bad_words=("the",),
        seed=11,
        logprobs=3,
        logprobs_mode="processed",
    )
    return SamplingParams(**{**fields, **overrides})
