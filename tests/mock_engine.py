"""A hand-computable engine for front-end tests: sequence i of any prompt spells `answer(i)`,
one byte token per output, with sequences interleaved, so `n > 1` can be tested before the real
engine samples several sequences per request."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from jaxserve.api.async_engine import StreamOutput
from jaxserve.errors import QueueFullError
from jaxserve.outputs import TokenLogprob
from jaxserve.sampling_params import SamplingParams
from jaxserve.text.tokenizer import GGUFTokenizer, Tokenizer
from tests.tiny_vocab import gpt2_tokenizer_metadata


def answer(index: int) -> str:
    return f"<{index}>abcdefghij"


def byte_token(char: str) -> int:
    return 3 + ord(char)  # the tiny vocabulary's byte tokens


def logprob_of(position: int) -> float:
    return -(position + 1) / 10


def tokenizer() -> Tokenizer:
    return GGUFTokenizer.from_metadata(gpt2_tokenizer_metadata())


class MockStream:
    def __init__(self, ids: Sequence[int], params: SamplingParams) -> None:
        self.outputs = list(_outputs(list(ids), params))
        self.closed = False

    def __aiter__(self) -> MockStream:
        return self

    async def __anext__(self) -> StreamOutput:
        if not self.outputs or self.closed:
            raise StopAsyncIteration
        await asyncio.sleep(0)
        return self.outputs.pop(0)

    async def aclose(self) -> None:
        self.closed = True


class MockEngine:
    is_alive = True

    def warmup_progress(self) -> tuple[int, int]:
        return 0, 0

    def __init__(self) -> None:
        self.requests: list[tuple[list[int], SamplingParams]] = []
        self.priorities: list[int] = []

    async def generate(self, ids: Sequence[int], params: SamplingParams, **kwargs) -> MockStream:
        self.requests.append((list(ids), params))
        self.priorities.append(kwargs.get("priority", 0))
        return MockStream(ids, params)


def _outputs(ids: list[int], params: SamplingParams):
    texts = [answer(i)[: params.max_tokens] for i in range(params.n)]
    for j in range(max(len(t) for t in texts)):
        for i, text in enumerate(texts):
            if j >= len(text):
                continue
            token = byte_token(text[j])
            last = j == len(text) - 1
            logprobs = None
            if params.logprobs is not None:
                top = ((token, logprob_of(j)),) + ((byte_token("z"), -5.0),) * params.logprobs
                logprobs = (TokenLogprob(token, logprob_of(j), top[: params.logprobs]),)
            yield StreamOutput(
                request_id=0,
                new_token_ids=(token,),
                delta=text[j],
                finish_reason=("length" if len(text) < len(answer(i)) else "stop")
                if last
                else None,
                prompt_tokens=len(ids),
                completion_tokens=j + 1,
                cached_tokens=0,
                index=i,
                logprobs=logprobs,
            )


class FullEngine:
    """An engine whose queue is always full: every `generate` raises `QueueFullError`."""

    is_alive = True

    def warmup_progress(self) -> tuple[int, int]:
        return 0, 0

    async def generate(self, *args, **kwargs):
        raise QueueFullError("4 requests are already waiting")
