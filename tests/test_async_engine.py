"""AsyncEngine: concurrent streams, abort on early exit, errors before any output."""

from __future__ import annotations

import asyncio

import pytest

from jaxserve import LLM, SamplingParams
from jaxserve.api.async_engine import AsyncEngine
from jaxserve.errors import ContextLengthError

PROMPTS = [[5, 77, 120, 3], [250, 18, 42, 42, 9, 101], [64, 200, 7, 33, 150, 11, 90], [8, 9]]
PARAMS = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(tiny_gguf) -> LLM:
    return LLM(str(tiny_gguf), weights="f32", max_num_seqs=4, decode_steps=4, max_model_len=64)


async def _collect(engine: AsyncEngine, prompt: list[int]) -> tuple[list[int], str, str | None]:
    ids, text, reason = [], "", None
    async for out in await engine.generate(prompt, PARAMS):
        ids += out.new_token_ids
        text += out.delta
        reason = out.finish_reason
    return ids, text, reason


def test_concurrent_streams_match_offline_generation(llm):
    expected = [(o.token_ids, o.text) for o in llm.generate(PROMPTS, PARAMS)]
    engine = AsyncEngine(llm.engine)

    async def main():
        return await asyncio.gather(*(_collect(engine, p) for p in PROMPTS))

    try:
        results = asyncio.run(main())
    finally:
        engine.shutdown()
    assert [(ids, text) for ids, text, _ in results] == expected
    assert all(reason == "length" for *_, reason in results)


def test_leaving_a_stream_aborts_the_request_and_frees_its_pages(llm):
    engine = AsyncEngine(llm.engine)
    long = SamplingParams(max_tokens=50, temperature=0.0, ignore_eos=True)

    async def main():
        stream = await engine.generate(PROMPTS[1], long)
        async for out in stream:
            assert out.new_token_ids
            break
        await stream.aclose()
        return await _collect(engine, PROMPTS[0])  # the engine keeps serving

    try:
        ids, _, reason = asyncio.run(main())
    finally:
        engine.shutdown()
    assert len(ids) == 12 and reason == "length"
    assert not llm.engine.has_unfinished()
    assert llm.engine.scheduler.pages.num_used == 0


def test_bad_requests_raise_before_streaming(llm):
    engine = AsyncEngine(llm.engine)

    async def main():
        with pytest.raises(ContextLengthError):
            await engine.generate(list(range(1, 80)), PARAMS)
        with pytest.raises(ValueError, match="empty"):
            await engine.generate([], PARAMS)

    try:
        asyncio.run(main())
    finally:
        engine.shutdown()
    assert engine.is_alive is False or not llm.engine.has_unfinished()
