"""AsyncEngine: the engine loop on a background thread, one async stream of outputs per request.

Front ends call `generate(...)` and iterate; leaving the iteration early (client gone) aborts the
request, whose pages are free before the next engine step. Requests are queued on the engine
thread between steps (a caller's event loop never waits for a step to end), so every request that
arrived during a step joins the next one. `embed(...)` runs on the engine thread too, between
steps.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from jaxserve.api.model_registry import TokenRate
from jaxserve.errors import OutOfPagesError
from jaxserve.outputs import FinishReason, TokenLogprob, TokenUncertainty
from jaxserve.sampling_params import SamplingParams

EMBED_BATCH = 16  # inputs embedded per engine-loop turn
log = logging.getLogger("jaxserve.api")

if TYPE_CHECKING:  # host-only module: the engine (and jax) is imported by whoever builds it
    from jaxserve.engine import Engine, StepEvent


@dataclass(frozen=True)
class StreamOutput:
    """New tokens of one sequence since its previous StreamOutput.

    index: which of the request's sequences (0 until the engine samples `n > 1` per request).
    logprobs: one entry per new token when the request asked for logprobs, else None.
    prompt_logprobs: on a request's first output only, when it asked for them (position 0,
        which has no context, holds None).
    """

    request_id: int
    new_token_ids: tuple[int, ...]
    delta: str
    finish_reason: FinishReason | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    index: int = 0
    logprobs: tuple[TokenLogprob, ...] | None = None
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None
    # research hooks: one entry per new token, and the hidden states once the sequence ends
    logit_lens: tuple[dict, ...] | None = None
    uncertainty: tuple[TokenUncertainty, ...] | None = None
    hidden_states: dict | None = None
    hidden_positions: tuple[int, ...] | None = None


class EngineStoppedError(RuntimeError):
    """The engine was shut down (its model unloaded) or its loop failed."""


class RequestFailedError(RuntimeError):
    """The engine failed this request alone (its own host-side work raised, or its logits were
    not finite); the engine and the other requests go on."""


class RequestStream:
    """The outputs of one queued request, in order; it ends once each of its `num_sequences`
    sequences has given an output with a `finish_reason`.

    Closing the stream (`aclose`), cancelling a task blocked on it, or dropping it before the last
    output aborts the request, even when it was never iterated.
    """

    def __init__(
        self, owner: AsyncEngine, request_id: int, queue: asyncio.Queue, num_sequences: int = 1
    ) -> None:
        self.request_id = request_id
        self._owner = owner
        self._queue = queue
        self._unfinished = num_sequences
        self._done = False

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> StreamOutput:
        if self._done:
            raise StopAsyncIteration
        try:
            item = await self._queue.get()
        except BaseException:  # cancelled while waiting: the caller is gone
            self._close()
            raise
        if isinstance(item, RequestFailedError):  # this request alone
            self._done = True
            raise item
        if isinstance(item, BaseException):
            self._done = True
            raise RuntimeError("the engine loop failed") from item
        if item.finish_reason is not None:
            self._unfinished -= 1
            self._done = self._unfinished == 0
        return item

    async def aclose(self) -> None:
        self._close()

    def _close(self) -> None:
        if not self._done:
            self._done = True
            self._owner.abort_soon(self.request_id)

    def __del__(self) -> None:
        self._close()


class AsyncEngine:
    """Runs `engine.step()` on a daemon thread while any request is unfinished."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._wake = threading.Event()
        # request id -> [its caller's loop, its output queue, sequences not finished yet]
        self._streams: dict[int, list] = {}
        self._aborts: deque[int] = deque()  # appended from any thread, drained by the loop
        # requests to queue, as (add_request's arguments, caller's loop, output queue, future)
        self._adds: deque[tuple[tuple, asyncio.AbstractEventLoop, asyncio.Queue, asyncio.Future]]
        self._adds = deque()
        # (token id lists, caller's loop, future) of embedding calls, run by the loop between steps
        self._embeds: deque[tuple[list[list[int]], asyncio.AbstractEventLoop, asyncio.Future]]
        self._embeds = deque()
        self._stopped = False
        self._error: BaseException | None = None
        self.rate = TokenRate()  # tokens generated over the last minute
        self._note_adapters()
        self._thread = threading.Thread(target=self._loop, name="jaxserve-engine", daemon=True)
        self._thread.start()

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive() and self._error is None

    @property
    def busy(self) -> bool:
        """Whether any request or embedding call is queued, running or not yet delivered."""
        return bool(self._streams or self._adds or self._embeds or self.engine.has_unfinished())

    def lora_names(self) -> list[str]:
        """The engine's loaded LoRA adapters, in load order (llama.cpp's adapter ids): a copy
        taken after each load and unload, so readers never iterate what the engine changes."""
        return list(self._lora_names)

    def _note_adapters(self) -> None:
        adapters = getattr(self.engine, "adapters", None)
        self._lora_names = tuple(adapters.named) if adapters is not None else ()

    async def load_lora(self, name: str, path: str) -> None:
        """Read an adapter (on a worker thread) and place it between two steps; ValueError or
        a file error when it cannot be."""
        from jaxserve.loading.lora import load_lora

        adapter = await asyncio.to_thread(load_lora, path, self.engine.runner.config)
        try:
            await asyncio.to_thread(self._locked, self.engine.adapters.load, name, adapter)
        finally:
            self._note_adapters()

    async def unload_lora(self, name: str) -> None:
        """Free an adapter's slot; KeyError when none has that name, ValueError while in use."""
        try:
            await asyncio.to_thread(self._locked, self.engine.adapters.unload, name)
        finally:
            self._note_adapters()

    def _locked(self, fn: Callable, *args):
        with self._lock:
            return fn(*args)

    def compiled_shapes(self) -> int:
        runner = getattr(self.engine, "runner", None)
        return runner.num_compiled() if runner is not None else 0

    def warmup_progress(self) -> tuple[int, int]:
        """(buckets compiled, buckets in all) of a background warm-up; (0, 0) without one."""
        engine = self.engine
        return getattr(engine, "warmup_done", 0), getattr(engine, "warmup_total", 0)

    def warmup_pending(self) -> list[str]:
        """The buckets a background warm-up has yet to compile, as "kind rows x tokens, pages
        pages" (a request in one of them compiles it first)."""
        pending = getattr(self.engine, "warmup_pending", None)
        shapes = pending() if pending is not None else []
        return [f"{k} {rows}x{tokens}, {pages} pages" for k, rows, tokens, pages in shapes]

    async def generate(
        self,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        *,
        prompt: str | None = None,
        priority: int = 0,
    ) -> RequestStream:
        """Queue a request and stream its outputs. Bad input raises here, before any output
        (`ValueError`, `ContextLengthError`, `QueueFullError`)."""
        if self._error is not None or self._stopped:
            raise EngineStoppedError("the engine loop has stopped") from self._error
        if params.constraint is not None:  # compiled here, not on the engine thread
            await asyncio.to_thread(self.engine.precompile, params)
        queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._adds.append(((prompt_token_ids, params, prompt, priority), loop, queue, future))
        self._wake.set()
        request_id = await future  # the engine thread queued it, or raised on bad input
        return RequestStream(self, request_id, queue, params.n)

    async def embed(self, inputs: Sequence[Sequence[int]]) -> np.ndarray:
        """Embeddings of token-id lists (`Engine.embed`), computed on the engine thread between
        steps, `EMBED_BATCH` inputs per turn so generation keeps going meanwhile. Bad input raises
        here (`ValueError`, `ContextLengthError`). While running requests hold the pages an input
        needs, it waits for them to finish."""
        if self._error is not None or self._stopped:
            raise EngineStoppedError("the engine loop has stopped") from self._error
        ids = self.engine.check_embed_inputs(inputs)  # reads only the engine's fixed config
        loop = asyncio.get_running_loop()
        futures = []
        for at in range(0, len(ids), EMBED_BATCH):
            futures.append(loop.create_future())
            self._embeds.append((ids[at : at + EMBED_BATCH], loop, futures[-1]))
        self._wake.set()
        return np.concatenate(await asyncio.gather(*futures))  # cancelled: each part is too

    def abort(self, request_id: int) -> None:
        """Abort now (blocks while a step runs)."""
        with self._lock:
            self._abort(request_id)

    def abort_soon(self, request_id: int) -> None:
        """Abort before the next engine step; never blocks, safe from any thread or finalizer."""
        self._aborts.append(request_id)
        self._wake.set()

    def _abort(self, request_id: int) -> None:
        self.engine.abort(request_id)
        self._streams.pop(request_id, None)

    def shutdown(self) -> None:
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout=10)
        self._fail_adds(EngineStoppedError("the engine has stopped"))  # arrived after its last turn
        close = getattr(getattr(self.engine, "runner", None), "close", None)
        if close is not None and not self._thread.is_alive():
            close()
        # The leader of several processes releases its followers once its engine has stopped.
        mirror = getattr(getattr(self.engine, "runner", None), "mirror", None)
        if mirror is not None and not self._thread.is_alive():
            mirror.close()

    def _loop(self) -> None:
        try:
            while not self._stopped:
                with self._lock:
                    while self._aborts:
                        self._abort(self._aborts.popleft())
                    self._run_adds()
                    self._run_embeds()
                    busy = self.engine.has_unfinished()
                    events = self.engine.step() if busy else []
                    self.rate.add(sum(len(e.new_token_ids) for e in events))
                    deliveries = [
                        (self._streams.get(e.output.request_id), _to_stream(e)) for e in events
                    ]
                    for request_id, error in self.engine.failed.items():
                        failed = RequestFailedError(f"the request failed in the engine: {error}")
                        deliveries.append((self._streams.pop(request_id, None), failed))
                    for event in events:
                        stream = self._streams.get(event.output.request_id)
                        if event.output.finished and stream is not None:
                            stream[2] -= 1
                            if stream[2] == 0:
                                del self._streams[event.output.request_id]
                for stream, output in deliveries:
                    if stream is not None:
                        loop, queue, _ = stream
                        try:
                            loop.call_soon_threadsafe(queue.put_nowait, output)
                        except RuntimeError:  # the caller's event loop is closed
                            if isinstance(output, StreamOutput):
                                self.abort_soon(output.request_id)
                if not busy and not self._embeds and not self._adds:
                    with self._lock:  # idle: compile the next bucket of a background warm-up
                        warmed = self.engine.warm_one()
                    if not warmed:
                        self._wake.wait(timeout=0.5)
                        self._wake.clear()
        except BaseException as error:  # surface the failure to every open stream
            log.critical("the engine loop stopped; /health now answers 503", exc_info=error)
            self._error = error
            with self._lock:
                streams, self._streams = list(self._streams.values()), {}
            for loop, queue, _ in streams:
                loop.call_soon_threadsafe(queue.put_nowait, error)
            failed = RuntimeError("the engine loop failed")
            failed.__cause__ = error
            self._fail_adds(failed)
            while self._embeds:
                _, loop, future = self._embeds.popleft()
                failed = RuntimeError("the engine loop failed")
                failed.__cause__ = error
                _settle(loop, future, error=failed)

    def _fail_adds(self, error: BaseException) -> None:
        """Fail every request still waiting to be queued."""
        while self._adds:
            _, loop, _, future = self._adds.popleft()
            _settle(loop, future, error=error)

    def _run_adds(self) -> None:
        """Queue every request that arrived (under the lock); bad input fails its caller only."""
        while self._adds:
            (ids, params, prompt, priority), loop, queue, future = self._adds.popleft()
            if future.cancelled():  # the caller is gone
                continue
            try:
                request = self.engine.add_request(ids, params, prompt=prompt, priority=priority)
            except Exception as error:  # ValueError, ContextLengthError, QueueFullError, ...
                _settle(loop, future, error=error)
                continue
            self._streams[request.request_id] = [loop, queue, params.n]
            _settle(loop, future, result=request.request_id, on_cancel=self.abort_soon)

    def _run_embeds(self) -> None:
        """Run the first queued embedding part (under the lock). One that needs pages that
        running requests hold goes to the back of the queue, to run after later steps."""
        while self._embeds:
            job = self._embeds.popleft()
            ids, loop, future = job
            if future.cancelled():  # the caller is gone
                continue
            try:
                _settle(loop, future, result=self.engine.embed(ids))
            except OutOfPagesError as error:
                if self.engine.has_unfinished():
                    self._embeds.append(job)
                else:
                    _settle(loop, future, error=error)
            except Exception as error:  # any other failure is this caller's alone
                _settle(loop, future, error=error)
            return


def _settle(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future,
    *,
    result: object = None,
    error: BaseException | None = None,
    on_cancel: Callable[[object], None] | None = None,
) -> None:
    """Resolve a caller's future from the engine thread. One cancelled meanwhile stays so, and
    `on_cancel(result)` undoes what the result stood for (a queued request is aborted)."""

    def settle() -> None:
        if future.done():
            if on_cancel is not None and error is None:
                on_cancel(result)
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the caller's event loop is closed
        if on_cancel is not None and error is None:
            on_cancel(result)


def _to_stream(event: StepEvent) -> StreamOutput:
    """Called under the engine lock, so the output does not change while it is read."""
    out = event.output
    new = event.new_token_ids
    logprobs = None
    if out.logprobs is not None:
        logprobs = tuple(out.logprobs[len(out.logprobs) - len(new) :]) if new else ()
    prompt_logprobs = None
    if out.prompt_logprobs is not None and len(out.token_ids) == len(new):  # first output
        prompt_logprobs = tuple(out.prompt_logprobs[: len(out.prompt_token_ids)])
    return StreamOutput(
        request_id=out.request_id,
        new_token_ids=new,
        delta=event.delta,
        finish_reason=out.finish_reason,
        prompt_tokens=len(out.prompt_token_ids),
        completion_tokens=len(out.token_ids),
        cached_tokens=out.num_cached_tokens,
        index=getattr(out, "index", 0),  # the sequence, once outputs carry one (n > 1)
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
        logit_lens=_last(getattr(out, "logit_lens", None), len(new)),
        uncertainty=_last(getattr(out, "uncertainty", None), len(new)),
        hidden_states=getattr(out, "hidden_states", None),
        hidden_positions=tuple(getattr(out, "hidden_positions", None) or ()),
    )


def _last(entries: list | None, n: int) -> tuple | None:
    """The entries of the last `n` tokens (None when the request did not ask for them)."""
    if entries is None:
        return None
    return tuple(entries[len(entries) - n :]) if n else ()
