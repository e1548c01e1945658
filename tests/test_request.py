"""Host-side request state: stop strings across tokens, finish reasons, params validation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxserve.engine.request import Request
from jaxserve.sampling_params import SamplingParams


class ChunkDetokenizer:
    """Stands in for the incremental detokenizer: token i decodes to chunks[i]."""

    def __init__(self, chunks: list[str]) -> None:
        self.chunks = chunks

    def add(self, token_id: int) -> str:
        return self.chunks[token_id]

    def flush(self) -> str:
        return ""


def _run(chunks: list[str], params: SamplingParams) -> tuple[Request, str]:
    request = Request(0, [1], params, seed=0, max_len=10_000, detokenizer=ChunkDetokenizer(chunks))
    streamed = ""
    for i in range(len(chunks)):
        streamed += request.append_token(i, None, eos_ids=frozenset())
        if request.finished:
            break
    if not request.finished:
        streamed += request.finish("length")
    return request, streamed


@given(
    chunks=st.lists(st.text(alphabet="abc\n", min_size=0, max_size=4), min_size=1, max_size=30),
    stops=st.lists(st.text(alphabet="abc\n", min_size=1, max_size=4), min_size=1, max_size=3),
)
def test_stop_strings_cut_at_the_first_occurrence(chunks, stops):
    params = SamplingParams(max_tokens=len(chunks), stop=stops)
    request, streamed = _run(chunks, params)
    # A stop string ends generation once the token that completes it arrives; the text is then
    # cut at the earliest stop string present in what has arrived so far.
    expected, reason = "".join(chunks), "length"
    for n in range(1, len(chunks) + 1):
        seen = "".join(chunks[:n])
        hits = [seen.find(s) for s in stops if s in seen]
        if hits:
            expected, reason = seen[: min(hits)], "stop"
            break
    assert streamed == request.output.text == expected
    assert request.output.finish_reason == reason


def test_eos_and_max_tokens():
    request = Request(
        0,
        [1],
        SamplingParams(max_tokens=3),
        seed=0,
        max_len=100,
        detokenizer=ChunkDetokenizer(["a", "b", "c", "d"]),
    )
    assert request.append_token(0, None, eos_ids=frozenset({2})) == "a"
    request.append_token(2, None, eos_ids=frozenset({2}))
    assert request.output.finish_reason == "stop" and request.output.token_ids == [0, 2]
    request = Request(
        0,
        [1],
        SamplingParams(max_tokens=2, ignore_eos=True),
        seed=0,
        max_len=100,
        detokenizer=ChunkDetokenizer(["a", "b", "c"]),
    )
    request.append_token(2, None, eos_ids=frozenset({2}))
    request.append_token(1, None, eos_ids=frozenset({2}))
    assert request.output.finish_reason == "length" and request.output.text == "cb"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_tokens=-1), "max_tokens"),
        (dict(temperature=-0.5), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(seed=-3), "seed"),
        (dict(stop=[""]), "stop"),
        (dict(logprobs=21), "logprobs"),
        (dict(prompt_logprobs=-1), "prompt_logprobs"),
    ],
)
def test_sampling_params_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_sampling_params_unknown_field_is_an_error():
    with pytest.raises(TypeError, match="top_q"):
        SamplingParams(top_q=0.5)  # type: ignore[call-arg]


def test_single_stop_string_is_normalised():
    assert SamplingParams(stop="END").stop == ("END",)
