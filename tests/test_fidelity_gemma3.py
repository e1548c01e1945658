"""jaxserve against llama.cpp on Gemma 3 270M (Q4_K_M): tokenizer, logits, greedy decoding.

The references in `fixtures/gemma3_llamacpp.npz` were recorded by `fixtures/record_llamacpp.py`:

    /root/llama-venv/bin/python tests/fixtures/record_llamacpp.py \\
        ~/.cache/jaxserve/gemma3-270m/gemma-3-270m-q4_k_m.gguf \\
        --out gemma3_llamacpp.npz --tokenizer-corpus corpus_gemma3.txt

The metrics are the SmolLM2 test's (`test_fidelity_smollm2.py`): llama.cpp multiplies its quantized
weights by 8-bit-quantized activations and keeps K/V in f16, so a prediction agrees when our
top-1 token is within `TIE_NATS` of llama.cpp's best logit, and greedy runs are compared only
until llama.cpp's own top-2 gap drops below `TIE_NATS`.

`fixtures/gemma3_llamacpp_f32.npz` is a strict reference for the same teacher-forced sequence:
llama.cpp on the same GGUF with every tensor dequantized to F32 and an F32 KV cache, so neither
side quantizes activations and our f32 weights must match it at every position:

    .venv/bin/python tests/fixtures/record_llamacpp.py \\
        ~/.cache/jaxserve/gemma3-270m/gemma-3-270m-q4_k_m.gguf \\
        --dequantize-f32 --out gemma3_llamacpp_f32.npz
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jaxserve import LLM, SamplingParams
from jaxserve.sampling_params import MAX_LOGPROBS
from tests.test_fidelity_smollm2 import TIE_NATS, _first_difference, _teacher_forced_agreement

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).parent / "fixtures"
STRICT_NATS = 0.05  # measured max 0.014 (CPU, f32 weights) against the F32-dequantized reference


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "gemma3_llamacpp.npz") as data:
        return dict(data)


@pytest.fixture(scope="module")
def ref_f32() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "gemma3_llamacpp_f32.npz") as data:
        return dict(data)


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    return json.loads((FIXTURES / "prompts.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def llm_f32(gemma3_path) -> LLM:
    return LLM(str(gemma3_path), weights="f32")


@pytest.fixture(scope="module")
def llm_int8(gemma3_int8) -> LLM:
    return gemma3_int8


@pytest.mark.parametrize(
    ("corpus", "key"), [("corpus.txt", "corpus_ids"), ("corpus_gemma3.txt", "tok_corpus_ids")]
)
def test_tokenizer_matches_llamacpp(llm_f32: LLM, ref, corpus: str, key: str) -> None:
    text = (FIXTURES / corpus).read_text(encoding="utf-8")
    theirs = ref[key].tolist()
    ours = llm_f32.tokenize(text, add_special=False)
    if ours != theirs:
        i = _first_difference(ours, theirs)
        i = min(len(ours), len(theirs)) if i < 0 else i
        context = llm_f32.detokenize(theirs[max(i - 5, 0) : i + 5])
        pytest.fail(
            f"first difference at token {i} ({len(ours)} vs {len(theirs)} tokens): "
            f"ours {ours[i : i + 8]} vs llama.cpp {theirs[i : i + 8]} near {context!r}"
        )


def test_prompt_tokens_and_bos_match_llamacpp(llm_f32: LLM, ref, prompts: list[str]) -> None:
    assert bool(ref["add_bos"])
    for j, text in enumerate(prompts):
        assert llm_f32.tokenize(text) == ref[f"prompt_ids_{j}"].tolist(), text


def test_teacher_forced_logits_f32(llm_f32: LLM, ref, record_property) -> None:
    near, _ = _teacher_forced_agreement(llm_f32, ref, "f32", record_property)
    # Measured 517/520 (99.42%): the three misses are llama.cpp near-ties (its top-2 gaps 0.31,
    # 0.46, 0.57 nats; ours 0.18, 0.02, 0.08). They come from llama.cpp's 8-bit activation
    # quantization in its Q4_K_M matmuls (about 0.2 nats of logit noise), not from our forward:
    # our f32 logits match a float64 numpy forward to ~1e-5, and match llama.cpp on the
    # F32-dequantized file at every position (`test_teacher_forced_logits_f32_strict`). Gemma's
    # logits spread wider than SmolLM2's, so that noise crosses the fixed 0.25-nat line more often.
    assert near >= 0.99


def test_teacher_forced_logits_f32_strict(llm_f32: LLM, ref_f32, record_property) -> None:
    """Against llama.cpp without activation quantization: same top-1 everywhere, logits close.

    Only llama.cpp's top-16 logits are stored, so logits are compared relative to llama.cpp's top-1
    token (`logit[t] - logit[top1]`): that equals the logprob difference our prompt logprobs give.
    """
    input_ids = ref_f32["tf_input_ids"].tolist()
    params = SamplingParams(max_tokens=0, prompt_logprobs=MAX_LOGPROBS)
    out = llm_f32.generate(input_ids, params)[0]
    scored = out.prompt_logprobs[1:]  # entry i: the row-i distribution
    assert [lp.token_id for lp in scored] == input_ids[1:]
    top_ids = ref_f32["tf_top_ids"][:-1]  # [T-1, 16]
    top_logits = ref_f32["tf_top_logits"][:-1]  # [T-1, 16]
    assert len(scored) >= 500

    ours_top1 = np.asarray([lp.top[0][0] for lp in scored])
    theirs = top_logits - top_logits[:, :1]  # [T-1, 16]
    ours = np.full(theirs.shape, np.nan)
    for i, lp in enumerate(scored):
        logprob = dict(lp.top)
        # Each of llama.cpp's top-16 must be among our top-MAX_LOGPROBS (measured: within our 17).
        missing = [int(t) for t in top_ids[i] if int(t) not in logprob]
        assert not missing, f"position {i}: llama.cpp top-16 ids {missing} not in our top-20"
        ours[i] = [logprob[int(t)] - logprob[int(top_ids[i, 0])] for t in top_ids[i]]
    diff = np.abs(ours - theirs).max(axis=1)  # [T-1]
    exact = ours_top1 == top_ids[:, 0]

    worst = int(diff.argmax())
    print(
        f"\n[f32 strict] {len(scored)} positions: exact top-1 {int(exact.sum())}, "
        f"max |logit difference| over llama.cpp's top-16 {diff.max():.4f} (position {worst}), "
        f"mean of per-position max {diff.mean():.4f}"
    )
    record_property("f32_strict_exact_top1", int(exact.sum()))
    record_property("f32_strict_max_logit_diff", float(diff.max()))
    for i in np.flatnonzero(~exact):
        print(
            f"  position {i}: ours {ours_top1[i]}, llama.cpp {top_ids[i, 0]} "
            f"(its top-2 gap {top_logits[i, 0] - top_logits[i, 1]:.4f})"
        )
    # A swap is allowed only where llama.cpp's own top two are closer than the bound (measured:
    # none; its closest gap is 0.0015 nats, where summation order could flip either engine).
    tie = (top_logits[:, 0] - top_logits[:, 1]) < STRICT_NATS
    assert (exact | tie).all()
    assert diff.max() < STRICT_NATS


def test_teacher_forced_logits_int8(llm_int8: LLM, ref, record_property) -> None:
    near, _ = _teacher_forced_agreement(llm_int8, ref, "int8", record_property)
    assert near >= 0.99


@pytest.fixture(scope="module")
def greedy_f32(llm_f32: LLM, ref, prompts: list[str]) -> list[list[int]]:
    prompt_ids = [ref[f"prompt_ids_{j}"].tolist() for j in range(len(prompts))]
    num_steps = ref["greedy_ids"].shape[1]
    params = SamplingParams(max_tokens=num_steps, temperature=0.0, ignore_eos=True)
    return [out.token_ids for out in llm_f32.generate(prompt_ids, params)]


@pytest.mark.parametrize("j", range(5))
def test_greedy_matches_llamacpp_until_near_tie(
    j: int, greedy_f32: list[list[int]], ref, llm_f32: LLM, record_property
) -> None:
    theirs = ref["greedy_ids"][j].tolist()
    gaps = ref["greedy_top2_gap"][j]
    ties = np.flatnonzero(gaps < TIE_NATS)
    n = int(ties[0]) if len(ties) else len(theirs)  # step n itself may differ
    ours = greedy_f32[j]
    agree = _first_difference(ours, theirs)
    agree = min(len(ours), len(theirs)) if agree < 0 else agree
    print(f"\n[f32] prompt {j}: {agree} steps identical, compared {n}, {len(ours)} generated")
    record_property(f"greedy_{j}_identical_steps", agree)
    assert len(ours) == len(theirs)
    assert ours[:n] == theirs[:n], (
        f"step {agree}: ours {ours[agree]} vs llama.cpp {theirs[agree]} "
        f"(llama.cpp top-2 gap {gaps[agree]:.3f}); "
        f"ours {llm_f32.detokenize(ours)!r} vs llama.cpp {llm_f32.detokenize(theirs)!r}"
    )
