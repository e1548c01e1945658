"""AsyncEngine with requests of several sequences (n > 1): one stream per request that ends
when every sequence has finished, outputs tagged with their sequence index, and closing the
stream early aborts the request. A scripted engine stands in for the real one."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

from jaxserve.api.async_engine import AsyncEngine
from jaxserve.sampling_params import SamplingParams


class ScriptedEngine:
    """Sequence i of a request emits token 100 + i, `lengths[i]` times, one token per step."""

    def __init__(self, lengths: list[int]) -> None:
        self.lengths = lengths
        self.active: list[SimpleNamespace] = []
        self.aborted: list[tuple[int, int]] = []
        self.next_id = 0
        self.failed: dict[int, Exception] = {}  # requests failed alone by the last step

    def add_request(self, ids, params, *, prompt=None, priority=0):
        assert params.n == len(self.lengths)
        group = [
            SimpleNamespace(
                request_id=self.next_id,
                index=i,
                prompt_token_ids=list(ids),
                token_ids=[],
                finish_reason=None,
                num_cached_tokens=0,
                logprobs=None,
                prompt_logprobs=None,
            )
            for i in range(params.n)
        ]
        self.next_id += 1
        self.active += group
        return group[0]

    def warm_one(self) -> bool:  # no background warm-up here
        return False

    def has_unfinished(self) -> bool:
        return bool(self.active)

    def step(self):
        time.sleep(0.005)
        events = []
        for out in list(self.active):
            out.token_ids.append(100 + out.index)
            if len(out.token_ids) == self.lengths[out.index]:
                out.finish_reason = "length"
                self.active.remove(out)
            out.finished = out.finish_reason is not None
            events.append(SimpleNamespace(output=out, delta="x", new_token_ids=(100 + out.index,)))
        return events

    def abort(self, request_id: int) -> None:
        live = [o for o in self.active if o.request_id == request_id]
        self.aborted.append((request_id, len(live)))  # how many sequences were still running
        self.active = [o for o in self.active if o.request_id != request_id]


def test_a_stream_ends_only_when_every_sequence_has_finished():
    engine = AsyncEngine(ScriptedEngine([2, 5, 3]))

    async def main():
        stream = await engine.generate([1, 2], SamplingParams(n=3))
        return [out async for out in stream]

    try:
        outputs = asyncio.run(main())
    finally:
        engine.shutdown()
    by_index = {i: [o for o in outputs if o.index == i] for i in range(3)}
    assert [len(v) for v in by_index.values()] == [2, 5, 3]
    assert all(o.new_token_ids == (100 + o.index,) for o in outputs)
    assert [v[-1].finish_reason for v in by_index.values()] == ["length"] * 3
    assert outputs[-1].index == 1  # the longest sequence ends the stream


def test_closing_a_group_stream_early_aborts_the_request():
    scripted = ScriptedEngine([50, 50])
    engine = AsyncEngine(scripted)

    async def main():
        stream = await engine.generate([1, 2], SamplingParams(n=2))
        first = await anext(stream)
        await stream.aclose()
        for _ in range(100):
            if not scripted.active:
                break
            await asyncio.sleep(0.01)
        return first

    try:
        first = asyncio.run(main())
    finally:
        engine.shutdown()
    assert first.finish_reason is None
    assert scripted.aborted == [(0, 2)] and not scripted.active
