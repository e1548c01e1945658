"""AsyncEngine: concurrent streams, abort on early exit, errors before any output."""

from __future__ import annotations

import asyncio
import re
import threading
import time

import pytest

from jaxserve import LLM, SamplingParams
from jaxserve.api.async_engine import AsyncEngine
from jaxserve.engine.engine import MAX_FAILED_CALLS
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


def test_queueing_a_request_never_waits_for_the_running_step(llm):
    """A caller's event loop keeps running while a step is in progress: requests that arrive
    meanwhile are queued by the engine thread and join the next step together."""
    engine = AsyncEngine(llm.engine)
    gate, inside = threading.Event(), threading.Event()
    step = llm.engine.step

    def held_step():
        inside.set()
        gate.wait(timeout=30)
        return step()

    async def main():
        llm.engine.step = held_step
        first = asyncio.create_task(_collect(engine, PROMPTS[0]))
        while not inside.is_set():
            await asyncio.sleep(0.01)
        late = [asyncio.create_task(_collect(engine, p)) for p in PROMPTS[1:]]
        started = time.monotonic()
        for _ in range(20):  # would stall until the step ends if queueing blocked the loop
            await asyncio.sleep(0.005)
        responsive = time.monotonic() - started
        assert not any(task.done() for task in late)
        llm.engine.step = step
        gate.set()
        return responsive, await asyncio.gather(first, *late)

    try:
        responsive, results = asyncio.run(main())
    finally:
        llm.engine.step = step
        gate.set()
        engine.shutdown()
    assert responsive < 5.0
    expected = [o.token_ids for o in llm.generate(PROMPTS, PARAMS)]
    assert [ids for ids, _, _ in results] == expected


def test_a_request_cancelled_while_queued_is_never_run(llm):
    engine = AsyncEngine(llm.engine)

    async def main():
        task = asyncio.create_task(engine.generate(PROMPTS[2], PARAMS))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await _collect(engine, PROMPTS[0])

    try:
        ids, _, reason = asyncio.run(main())
    finally:
        engine.shutdown()
    assert reason == "length" and len(ids) == PARAMS.max_tokens
    assert not llm.engine.has_unfinished()
    assert llm.engine.scheduler.pages.num_used == 0


def test_a_request_failing_in_the_engine_ends_only_its_own_stream(llm):
    from tests.test_engine import _RaisingMatcher

    expected = [o.token_ids for o in llm.generate(PROMPTS[:2], PARAMS)]
    engine = AsyncEngine(llm.engine)
    add = llm.engine.add_request

    def add_with_a_buggy_matcher(ids, params, **kwargs):
        request = add(ids, params, **kwargs)
        if params.regex is not None:
            request.matcher = _RaisingMatcher(request.matcher, 2)
        return request

    async def main():
        buggy = SamplingParams(max_tokens=8, temperature=0.0, regex="[a-z ]+")

        async def failing():
            with pytest.raises(RuntimeError):
                async for _ in await engine.generate(PROMPTS[3], buggy):
                    pass
            return "failed"

        return await asyncio.gather(
            _collect(engine, PROMPTS[0]), failing(), _collect(engine, PROMPTS[1])
        )

    llm.engine.add_request = add_with_a_buggy_matcher
    try:
        first, failed, second = asyncio.run(main())
        assert engine.is_alive
    finally:
        llm.engine.add_request = add
        engine.shutdown()
    assert failed == "failed"
    assert [first[0], second[0]] == expected
    assert llm.engine.scheduler.pages.num_used == 0


def test_a_dead_engine_loop_says_why_and_fails_every_stream(tiny_gguf, caplog):
    """A device step that keeps failing (here every decode call) stops the loop once
    `MAX_FAILED_CALLS` calls in a row have raised: every open stream ends with an error, the log
    says why, and `is_alive` turns False (/health 503)."""
    llm = LLM(str(tiny_gguf), weights="f32", max_num_seqs=4, decode_steps=4, max_model_len=64)

    def broken(*args, **kwargs):
        raise RuntimeError("device lost")

    llm.engine.runner.decode = broken
    engine = AsyncEngine(llm.engine)

    async def main():
        for prompt in PROMPTS[:MAX_FAILED_CALLS]:  # the first calls fail their requests only
            with pytest.raises(RuntimeError):
                async for _ in await engine.generate(prompt, PARAMS):
                    pass

    try:
        with caplog.at_level("CRITICAL", logger="jaxserve.api"):
            asyncio.run(main())
            deadline = time.monotonic() + 10
            while engine.is_alive and time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        engine.shutdown()
    assert not engine.is_alive
    assert any("engine loop stopped" in r.getMessage() for r in caplog.records)
    assert any("device lost" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)


def test_background_warmup_serves_at_once_and_compiles_while_idle(llm, tiny_gguf):
    """warmup="background" (what `serve` uses): nothing is compiled before serving; a request
    meanwhile gets the same tokens; the idle engine then compiles every bucket, after which
    requests compile nothing more, and /health reports the progress."""
    from fastapi.testclient import TestClient

    from jaxserve.api.openai_server import Served, ServerConfig, create_app

    expected = [o.token_ids for o in llm.generate(PROMPTS, PARAMS)]
    fresh = LLM(
        str(tiny_gguf),
        weights="f32",
        max_num_seqs=4,
        decode_steps=4,
        max_model_len=64,
        warmup="background",
        compilation_cache_dir="",
    )
    runner = fresh.engine.runner
    assert fresh.engine.warmup_total > 0 and fresh.engine.warmup_done == 0
    assert len(fresh.engine.warmup_pending()) == fresh.engine.warmup_total
    assert runner.compiled_at_warmup is None
    engine = AsyncEngine(fresh.engine)
    assert all(
        re.fullmatch(r"(decode|prefill) \d+x\d+, \d+ pages", s) for s in engine.warmup_pending()
    )
    try:

        async def main():
            return await asyncio.gather(*(_collect(engine, p) for p in PROMPTS))

        assert [ids for ids, _, _ in asyncio.run(main())] == expected
        app = create_app(ServerConfig(model_names=("tiny",)), Served.from_llm(fresh, engine))
        with TestClient(app) as client:
            deadline = time.monotonic() + 600
            while engine.warmup_progress()[0] < fresh.engine.warmup_total:
                assert time.monotonic() < deadline, engine.warmup_progress()
                time.sleep(0.2)
            body = client.get("/health").json()
            ready = client.get("/ready")
        total = fresh.engine.warmup_total
        assert body["status"] == "ok" and body["warmup"] == {"compiled": total, "total": total}
        state = {"status": "ready", "compiled": total, "total": total, "warm": True}
        assert body["models"] == {"tiny": state}
        assert ready.status_code == 200 and ready.json()["models"] == {"tiny": state}
        assert runner.compiled_at_warmup == runner.num_compiled()
        assert engine.warmup_pending() == []
        assert [ids for ids, _, _ in asyncio.run(main())] == expected
        assert runner.num_compiled() == runner.compiled_at_warmup  # no compile after warm-up
    finally:
        engine.shutdown()
    with pytest.raises(ValueError, match="warmup"):
        LLM(str(tiny_gguf), weights="f32", warmup="later")


def test_constraints_compile_off_the_engine_thread(llm, monkeypatch):
    """A large schema takes seconds to compile: on the engine thread that would stall every
    running stream, so `generate` compiles it on a worker thread before queueing."""
    import jaxserve.grammar.spec as spec

    threads = []
    build = spec.build_grammar

    def recording(s):
        threads.append(threading.current_thread().name)
        return build(s)

    monkeypatch.setattr(spec, "build_grammar", recording)
    engine = AsyncEngine(llm.engine)
    params = SamplingParams(max_tokens=6, temperature=0.0, regex="(ab|cd){1,5}")
    try:

        async def main():
            ids, text, reason = [], "", None
            async for out in await engine.generate(PROMPTS[0], params):
                ids += out.new_token_ids
                text += out.delta
                reason = out.finish_reason
            return ids, text, reason

        _, text, _ = asyncio.run(main())
    finally:
        engine.shutdown()
    assert threads and "jaxserve-engine" not in threads, threads
    assert text == llm.generate(PROMPTS[0], params)[0].text
