"""The jitted steps over the paged cache against an independent numpy forward (tiny GGUF)."""

from __future__ import annotations

import numpy as np
import pytest

from jaxserve.engine.rows import DecodeRow, PrefillRow
from jaxserve.loading.loader import GGUFModelFile
from jaxserve.runtime.runner import ModelRunner
from jaxserve.sampling.rows import SamplingRow
from tests.numpy_llama import NumpyLlama

PROMPT = [5, 77, 120, 3, 250, 18, 42, 42, 9, 101, 64, 200, 7, 33, 150, 11, 90, 260, 2, 58]


def _runner(path, fmt: str, page_size: int = 4) -> ModelRunner:
    model_file = GGUFModelFile.open(path)
    return ModelRunner(
        model_file.build_model(fmt),
        model_file.config,
        num_pages=40,
        page_size=page_size,
        max_pages_per_row=16,
    )


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _decode_row(token: int, start: int, pages: list[int], remaining: int = 1) -> DecodeRow:
    return DecodeRow(token, start, pages, SamplingRow(), remaining=remaining)


@pytest.mark.parametrize("fixture", ["tiny_gguf", "tiny_gguf_untied"])
def test_prefill_prompt_logprobs_match_numpy(fixture, request):
    path = request.getfixturevalue(fixture)
    expected = _log_softmax(NumpyLlama(path).logits(PROMPT))
    runner = _runner(path, "f32")
    pages = [3, 7, 1, 12, 5, 9]  # deliberately out of order
    out = runner.prefill([PrefillRow(PROMPT, 0, pages, prompt_targets=PROMPT[1:])])
    chosen, top_ids = out.prompt.chosen, out.prompt.top_ids
    n = len(PROMPT) - 1
    np.testing.assert_allclose(chosen[0, :n], expected[np.arange(n), PROMPT[1:]], atol=2e-4)
    np.testing.assert_array_equal(top_ids[0, :n, 0], expected[:n].argmax(-1))
    assert out.token_ids[0] == expected[-1].argmax()


def test_chunked_prefill_then_decode_matches_numpy(tiny_gguf):
    oracle = NumpyLlama(tiny_gguf)
    runner = _runner(tiny_gguf, "f32")
    pages = [2, 4, 6, 8, 10, 12, 14, 16]
    seq = list(PROMPT)
    # Two prefill chunks that straddle a page boundary, then greedy decode one step at a time.
    runner.prefill([PrefillRow(seq[:7], 0, pages)])
    token = int(runner.prefill([PrefillRow(seq[7:], 7, pages)]).token_ids[0])
    for _ in range(5):
        assert token == int(oracle.logits(seq)[-1].argmax())
        seq.append(token)
        out = runner.decode([_decode_row(token, len(seq) - 1, pages)], num_steps=1)
        token = int(out.token_ids[0, 0])


def test_multi_step_decode_equals_single_steps_and_stops_on_device(tiny_gguf):
    runner = _runner(tiny_gguf, "f32")
    a, b = [1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6, 7, 8]
    first = int(runner.prefill([PrefillRow(PROMPT, 0, a)]).token_ids[0])
    runner.prefill([PrefillRow(PROMPT, 0, [9 + p for p in b])])
    singles, token, pos = [], first, len(PROMPT)
    for _ in range(6):
        token = int(runner.decode([_decode_row(token, pos, a)], num_steps=1).token_ids[0, 0])
        singles.append(token)
        pos += 1
    pages_b = [9 + p for p in b]
    out = runner.decode([_decode_row(first, len(PROMPT), pages_b, remaining=6)], num_steps=8)
    assert int(out.num_generated[0]) == 6
    assert list(out.token_ids[0, :6]) == singles
    # A stop id ends the row on device right after that token.
    runner.prefill([PrefillRow(PROMPT, 0, pages_b)])
    stop = DecodeRow(first, len(PROMPT), pages_b, SamplingRow(stop_ids=(singles[2],)), remaining=6)
    out = runner.decode([stop], num_steps=8)
    assert (
        list(out.token_ids[0, : int(out.num_generated[0])])
        == singles[: singles.index(singles[2]) + 1]
    )


def test_rows_do_not_see_each_other(tiny_gguf):
    """Rows prefilled together give the same tokens as each alone."""
    runner = _runner(tiny_gguf, "f32")
    a, b = PROMPT[:9], PROMPT[5:17]
    alone = []
    for prompt, pages in ((a, [1, 2, 3, 4]), (b, [5, 6, 7, 8])):
        alone.append(int(runner.prefill([PrefillRow(prompt, 0, pages)]).token_ids[0]))
    both = runner.prefill([PrefillRow(a, 0, [9, 10, 11, 12]), PrefillRow(b, 0, [13, 14, 15, 16])])
    assert [int(t) for t in both.token_ids] == alone


def test_int8_weights_stay_close_to_f32(tiny_gguf):
    results = []
    for fmt in ("f32", "int8"):
        runner = _runner(tiny_gguf, fmt)
        out = runner.prefill([PrefillRow(PROMPT, 0, [1, 2, 3, 4, 5], prompt_targets=PROMPT[1:])])
        results.append(out.prompt.chosen[0, : len(PROMPT) - 1])
    diff = np.abs(results[1] - results[0])
    assert diff.max() < 0.25 and diff.mean() < 0.05
    assert not np.array_equal(results[1], results[0])
