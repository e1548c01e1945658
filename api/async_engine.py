"""AsyncEngine: the engine loop on a background thread, one async stream of outputs per request.

Front ends call `generate(...)` and iterate; leaving the iteration early (client gone) aborts the
request, whose pages are free before the next engine step.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from jaxserve.engine import Engine, StepEvent
from jaxserve.outputs import FinishReason
from jaxserve.sampling_params import SamplingParams


@dataclass(frozen=True)
class StreamOutput:
    """New tokens of one request since its previous StreamOutput."""

    request_id: int
    new_token_ids: tuple[int, ...]
    delta: str
    finish_reason: FinishReason | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


class AsyncEngine:
    """Runs `engine.step()` on a daemon thread while any request is unfinished."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._streams: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._stopped = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="jaxserve-engine", daemon=True)
        self._thread.start()

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive() and self._error is None

    async def generate(
        self,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        *,
        prompt: str | None = None,
        priority: int = 0,
    ) -> AsyncIterator[StreamOutput]:
        """Queue a request and stream its outputs. Bad input raises here, before any output."""
        request_id = self.add(prompt_token_ids, params, prompt=prompt, priority=priority)
        return self._stream(request_id)

    def add(
        self,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        *,
        prompt: str | None = None,
        priority: int = 0,
    ) -> int:
        if self._error is not None:
            raise RuntimeError("the engine loop has stopped") from self._error
        queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        with self._lock:
            request = self.engine.add_request(
                prompt_token_ids, params, prompt=prompt, priority=priority
            )
            self._streams[request.request_id] = (loop, queue)
        self._wake.set()
        return request.request_id

    async def _stream(self, request_id: int) -> AsyncIterator[StreamOutput]:
        _, queue = self._streams[request_id]
        finished = False
        try:
            while not finished:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise RuntimeError("the engine loop failed") from item
                finished = item.finish_reason is not None
                yield item
        finally:
            if not finished:
                self.abort(request_id)

    def abort(self, request_id: int) -> None:
        with self._lock:
            self.engine.abort(request_id)
            self._streams.pop(request_id, None)

    def shutdown(self) -> None:
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        try:
            while not self._stopped:
                with self._lock:
                    busy = self.engine.has_unfinished()
                    events = self.engine.step() if busy else []
                    deliveries = [(self._streams.get(e.output.request_id), e) for e in events]
                    for event in events:
                        if event.output.finished:
                            self._streams.pop(event.output.request_id, None)
                for stream, event in deliveries:
                    if stream is not None:
                        loop, queue = stream
                        loop.call_soon_threadsafe(queue.put_nowait, _to_stream(event))
                if not busy:
                    self._wake.wait(timeout=0.5)
                    self._wake.clear()
        except BaseException as error:  # surface the failure to every open stream
            self._error = error
            with self._lock:
                streams, self._streams = list(self._streams.values()), {}
            for loop, queue in streams:
                loop.call_soon_threadsafe(queue.put_nowait, error)


def _to_stream(event: StepEvent) -> StreamOutput:
    out = event.output
    return StreamOutput(
        request_id=out.request_id,
        new_token_ids=event.new_token_ids,
        delta=event.delta,
        finish_reason=out.finish_reason,
        prompt_tokens=len(out.prompt_token_ids),
        completion_tokens=len(out.token_ids),
        cached_tokens=out.num_cached_tokens,
    )
