"""The jitted step over the paged cache against an independent numpy forward (tiny GGUF)."""

from __future__ import annotations

import numpy as np
import pytest

from jaxserve.loader import GGUFModelFile
from jaxserve.runner import ModelRunner, RowWork
from tests.numpy_llama import NumpyLlama

PROMPT = [5, 77, 120, 3, 250, 18, 42, 42, 9, 101, 64, 200, 7, 33, 150, 11, 90, 260, 2, 58]


def _runner(path, fmt: str, page_size: int = 4) -> ModelRunner:
    model_file = GGUFModelFile.open(path)
    return ModelRunner(
        model_file.build_model(fmt), model_file.config, num_pages=32, page_size=page_size
    )


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.mark.parametrize("fixture", ["tiny_gguf", "tiny_gguf_untied"])
def test_prefill_prompt_logprobs_match_numpy(fixture, request):
    path = request.getfixturevalue(fixture)
    expected = _log_softmax(NumpyLlama(path).logits(PROMPT))
    runner = _runner(path, "f32")
    pages = [3, 7, 1, 12, 5, 9]  # deliberately out of order
    targets = PROMPT[1:] + [-1]
    out = runner.run([RowWork(PROMPT, 0, pages, target_ids=targets)], with_prompt_logprobs=True)
    got = out.prompt_logprobs[0, : len(PROMPT) - 1]
    want = expected[np.arange(len(PROMPT) - 1), PROMPT[1:]]
    np.testing.assert_allclose(got, want, atol=2e-4)
    n = len(PROMPT) - 1
    np.testing.assert_array_equal(out.prompt_top_ids[0, :n, 0], expected[:n].argmax(-1))
    assert out.token_ids[0] == expected[-1].argmax()


def test_chunked_prefill_then_decode_matches_numpy(tiny_gguf):
    oracle = NumpyLlama(tiny_gguf)
    runner = _runner(tiny_gguf, "f32")
    pages = [2, 4, 6, 8, 10, 12, 14, 16]
    seq = list(PROMPT)
    # Two prefill chunks that straddle a page boundary, then greedy decode.
    runner.run([RowWork(seq[:7], 0, pages)])
    out = runner.run([RowWork(seq[7:], 7, pages)])
    for _ in range(6):
        want = int(oracle.logits(seq)[-1].argmax())
        assert int(out.token_ids[0]) == want
        seq.append(want)
        out = runner.run([RowWork([seq[-1]], len(seq) - 1, pages)])


def test_rows_do_not_see_each_other(tiny_gguf):
    """Two rows decoding in one batch give the same tokens as each alone."""
    runner = _runner(tiny_gguf, "f32")
    a, b = PROMPT[:9], PROMPT[5:17]
    alone = []
    for prompt, pages in ((a, [1, 2, 3, 4]), (b, [5, 6, 7, 8])):
        out = runner.run([RowWork(prompt, 0, pages)])
        alone.append(int(out.token_ids[0]))
    both = runner.run([RowWork(a, 0, [9, 10, 11, 12]), RowWork(b, 0, [13, 14, 15, 16])])
    assert [int(t) for t in both.token_ids] == alone


def test_int8_weights_stay_close_to_f32(tiny_gguf):
    targets = PROMPT[1:] + [-1]
    results = []
    for fmt in ("f32", "int8"):
        out = _runner(tiny_gguf, fmt).run(
            [RowWork(PROMPT, 0, [1, 2, 3, 4, 5], target_ids=targets)], with_prompt_logprobs=True
        )
        results.append(out.prompt_logprobs[0, : len(PROMPT) - 1])
    diff = np.abs(results[1] - results[0])
    assert diff.max() < 0.25 and diff.mean() < 0.05
    assert not np.array_equal(results[1], results[0])
