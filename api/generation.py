"""Submitting prompts to the engine and merging their output streams, for both generating routes.

Engine errors become OpenAI errors here; a client that disconnects aborts every request it made.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from starlette.requests import Request

from jaxserve.api.async_engine import RequestStream, StreamOutput
from jaxserve.api.errors import APIError, bad_request
from jaxserve.api.sampling import param_error
from jaxserve.errors import ContextLengthError, QueueFullError
from jaxserve.sampling_params import SamplingParams


class EngineLike(Protocol):
    """What the fronts need from `AsyncEngine` (tests may pass a stand-in)."""

    @property
    def is_alive(self) -> bool: ...

    async def generate(
        self,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        *,
        prompt: str | None = None,
        priority: int = 0,
    ) -> RequestStream: ...

    async def embed(self, inputs: Sequence[Sequence[int]]) -> np.ndarray: ...

    def warmup_progress(self) -> tuple[int, int]: ...


@dataclass(frozen=True)
class Job:
    prompt_token_ids: list[int]
    params: SamplingParams
    prompt: str | None = None
    priority: int = 0


async def submit(
    engine: EngineLike, jobs: Sequence[Job], *, prompt_param: str, retry_after_s: int
) -> list[RequestStream]:
    """Queue every job or none: a failure aborts the ones already queued and raises an APIError."""
    streams: list[RequestStream] = []
    try:
        for job in jobs:
            streams.append(
                await engine.generate(
                    job.prompt_token_ids, job.params, prompt=job.prompt, priority=job.priority
                )
            )
    except BaseException as error:
        for stream in streams:
            await stream.aclose()
        raise _api_error(error, prompt_param, retry_after_s) from None
    return streams


def _api_error(error: BaseException, prompt_param: str, retry_after_s: int) -> BaseException:
    if isinstance(error, ContextLengthError):
        return bad_request(str(error), prompt_param, "context_length_exceeded")
    if isinstance(error, QueueFullError):
        message = f"The server is busy ({error}); retry later"
        headers = {"Retry-After": str(retry_after_s)}
        return APIError(429, message, code="queue_full", headers=headers)
    if isinstance(error, ValueError):
        api_error = param_error(error)
        if api_error.param is None and "prompt" in str(error):
            api_error.param = prompt_param
        return api_error
    if isinstance(error, RuntimeError):  # the engine loop has stopped
        return APIError(503, "The engine is not running", code="engine_dead")
    return error


_DONE = object()


async def merged(
    streams: Sequence[RequestStream], request: Request, *, num_sequences: int
) -> AsyncIterator[tuple[int, StreamOutput]]:
    """(choice index, output) pairs of all streams as they arrive; choice index is
    prompt index * n + the output's sequence index. Stops early when the client disconnects
    (every unfinished request is aborted then, even if this iterator is never resumed)."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, stream: RequestStream) -> None:
        try:
            async for out in stream:
                queue.put_nowait((i * num_sequences + out.index, out))
        except Exception as error:
            queue.put_nowait(error)
        finally:
            queue.put_nowait(_DONE)

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        for stream in streams:
            await stream.aclose()
        queue.put_nowait(None)

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    tasks.append(asyncio.create_task(watch()))
    try:
        remaining = len(streams)
        while remaining:
            item = await queue.get()
            if item is None:
                return
            if item is _DONE:
                remaining -= 1
            elif isinstance(item, Exception):
                raise APIError(
                    500, f"The engine failed while generating: {item}", code="engine_error"
                )
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        for stream in streams:
            await stream.aclose()
