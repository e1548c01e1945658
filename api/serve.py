"""`jaxserve serve`: uvicorn (and the gRPC front, given a port) answer at once; /health is 503
while the first model loads in a background thread (its buckets then compile while the engine
is idle; further models load after it, and at run time through `POST /admin/models`). SIGTERM
drains (new requests 503, in-flight ones finish up to `drain_timeout_s`) before the process
exits."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from jaxserve.api.openai_server import Served, ServerConfig, ServerState, create_app
from jaxserve.api.server_state import ModelLoader

log = logging.getLogger("jaxserve.api")


class DrainingServer(uvicorn.Server):
    """The first SIGTERM drains the app before uvicorn's own graceful shutdown; a second
    signal (or SIGINT) shuts down at once as uvicorn does."""

    def __init__(
        self, config: uvicorn.Config, state: ServerState, *, grpc_address: str | None = None
    ) -> None:
        super().__init__(config)
        self.state = state
        self.grpc_address = grpc_address
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False
        self._drain_task: asyncio.Task | None = None

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        grpc_server = None
        if self.grpc_address is not None:  # on this loop: both fronts share the engine streams
            from jaxserve.api.grpc_server import create_grpc_server

            grpc_server = create_grpc_server(self.state, self.grpc_address)
            await grpc_server.start()
            log.info("gRPC on %s", self.grpc_address)
        try:
            await super().serve(sockets)
        finally:
            if grpc_server is not None:
                await grpc_server.stop(grace=1)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and not self._draining and self._loop is not None:
            self._draining = True
            log.info("SIGTERM: draining (at most %.0f s)", self.state.config.drain_timeout_s)
            self._loop.call_soon_threadsafe(self._start_drain)
            return
        super().handle_exit(sig, frame)

    def _start_drain(self) -> None:
        assert self._loop is not None
        self._drain_task = self._loop.create_task(self._drain())

    async def _drain(self) -> None:
        finished = await self.state.drain()
        log.info("drained: %s", "all requests finished" if finished else "timed out")
        # The drain already waited: uvicorn then cancels whatever is left almost at once.
        self.config.timeout_graceful_shutdown = 1
        self.should_exit = True


def load_in_background(
    state: ServerState,
    load: Callable[[], Served],
    on_failure: Callable[[], None],
    others: Sequence[tuple[tuple[str, ...], str, Callable[[], Served]]] = (),
) -> threading.Thread:
    """Load the first model (named by `state.config.model_names`), then each of `others`
    ((names, source, load)), one after another on a thread; each serves once loaded. A model
    that fails to load is reported on /health and stops the server."""
    if state.models.get(state.config.model_names[0]) is None:
        state.served = None  # registers the first model, as loading
    entries = [state.models.add(names, source) for names, source, _ in others]

    def run() -> None:
        name = state.config.model_names[0]
        try:
            state.served = load()
            log.info("model loaded; serving %s", ", ".join(state.config.model_names))
            for entry, (_, _, load_other) in zip(entries, others, strict=True):
                name = entry.id
                state.attach(entry, load_other())
                log.info("model loaded; serving %s", ", ".join(entry.names))
        except BaseException as error:  # reported on /health; the server then exits
            log.exception("loading %s failed", name)
            state.load_error = str(error) or type(error).__name__
            if len(state.models) > 1:
                state.load_error = f"{name}: {state.load_error}"
            on_failure()

    thread = threading.Thread(target=run, name="jaxserve-load", daemon=True)
    thread.start()
    return thread


class LLMLoader:
    """Loads models with `LLM` (weights converted and cached, buckets compiled in the
    background while the engine is idle and on first use), wrapped in an `AsyncEngine`:
    the start-up models and the ones `POST /admin/models` asks for."""

    OPTIONS = {
        "weights": "weights",
        "max_model_len": "max_model_len",
        "max_num_seqs": "max_num_seqs",
        "kv_cache_mb": "kv_cache_bytes",
    }

    def __init__(self, *, max_queue: int | None = None, **llm_kwargs: Any) -> None:
        self.llm_kwargs = dict(llm_kwargs)
        if max_queue is not None:
            self.llm_kwargs["max_waiting"] = max_queue

    def check(self, source: str, options: Mapping[str, Any]) -> None:
        from jaxserve.loading.pull import KNOWN_MODELS

        if source not in KNOWN_MODELS and not Path(source).expanduser().is_file():
            known = ", ".join(sorted(KNOWN_MODELS))
            raise FileNotFoundError(f"`{source}` is neither a known model ({known}) nor a file")
        unknown = set(options) - set(self.OPTIONS)
        if unknown:
            raise ValueError(f"unknown load options: {', '.join(sorted(unknown))}")

    def load(self, source: str, options: Mapping[str, Any] | None = None) -> Served:
        from jaxserve.api.async_engine import AsyncEngine
        from jaxserve.llm import LLM

        kwargs = dict(self.llm_kwargs)
        for key, value in (options or {}).items():
            kwargs[self.OPTIONS[key]] = value * 2**20 if key == "kv_cache_mb" else value
        llm = LLM(source, warmup="background", quiet=False, **kwargs)
        return Served.from_llm(llm, AsyncEngine(llm.engine))


def llm_loader(model: str, *, max_queue: int | None, **llm_kwargs: Any) -> Callable[[], Served]:
    """A loader of `model` alone (see `LLMLoader`)."""
    loader = LLMLoader(max_queue=max_queue, **llm_kwargs)
    return lambda: loader.load(model)


def serve(
    config: ServerConfig,
    load: Callable[[], Served],
    *,
    others: Sequence[tuple[tuple[str, ...], str, Callable[[], Served]]] = (),
    loader: ModelLoader | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    grpc_port: int | None = None,
    log_level: str = "info",
) -> int:
    """Run until SIGTERM/SIGINT; returns the exit status (1 if a model failed to load).
    `others`: more models to serve from the start, (names, source, load); `loader`: loads
    models at run time (`POST /admin/models`)."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    app = create_app(config, None, loader=loader)
    state: ServerState = app.state.server
    uv_config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,  # the front logs each request with its X-Request-ID
        lifespan="off",
        timeout_graceful_shutdown=max(1, int(config.drain_timeout_s)),
    )
    grpc_address = f"{host}:{grpc_port}" if grpc_port is not None else None
    server = DrainingServer(uv_config, state, grpc_address=grpc_address)

    def stop() -> None:
        server.should_exit = True

    load_in_background(state, load, stop, others)
    server.run()
    for entry in state.models:
        shutdown = getattr(entry.served.engine, "shutdown", None) if entry.served else None
        if shutdown is not None:
            shutdown()
    return 1 if state.load_error is not None else 0
