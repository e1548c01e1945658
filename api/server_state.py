"""The fronts' configuration and per-app state: the served models (`api/model_registry.py`),
draining, in-flight requests, metrics. One `ServerState` per app; nothing module-global."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from jaxserve.api.errors import APIError
from jaxserve.api.generation import EngineLike
from jaxserve.api.metrics import Metrics
from jaxserve.api.model_registry import FAILED, LOADING, READY, ModelEntry, ModelRegistry
from jaxserve.api.reasoning import REASONING_PARSERS
from jaxserve.grammar.tools import FORMATS, tool_format
from jaxserve.text.tokenizer import Tokenizer

if TYPE_CHECKING:
    from jaxserve.api.async_engine import AsyncEngine, StreamOutput
    from jaxserve.llm import LLM

# (messages, add_generation_prompt) -> prompt text; called with `tools=` (OpenAI's shape) too when
# `Served.template_tools` says the template renders tools itself, and with `template_kwargs=`
# (further template variables, a request's `chat_template_kwargs`).
RenderChat = Callable[..., str]


@dataclass(frozen=True)
class ServerConfig:
    """model_names: the names requests may use (the first is the one responses report).
    api_key: when set, every route but /health needs `Authorization: Bearer <api_key>`.
    admin_key: when set, the /admin routes need it instead of the API key.
    cors_origins: origins allowed by CORS ("*" for any); empty turns CORS off.
    drain_timeout_s: how long in-flight requests may run after SIGTERM.
    retry_after_s: the Retry-After of a 429 (queue full).
    reasoning_parser: how chat replies are split into `reasoning_content` and `content`
    (`api/reasoning.py`: "none", "think", "think-open").
    tool_call_parser: the tool-call format ("auto": the one the chat template suggests, else a
    name in `jaxserve.grammar.tools.FORMATS`)."""

    model_names: tuple[str, ...]
    api_key: str | None = None
    admin_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    drain_timeout_s: float = 30.0
    retry_after_s: int = 1
    system_fingerprint: str = "fp_jaxserve"
    reasoning_parser: str = "none"
    tool_call_parser: str = "auto"

    def __post_init__(self) -> None:
        if not self.model_names or not all(self.model_names):
            raise ValueError("model_names must hold at least one non-empty name")
        if (self.api_key is not None and not self.api_key) or self.admin_key == "":
            raise ValueError("api_key and admin_key must be None or non-empty")
        if self.drain_timeout_s < 0 or self.retry_after_s < 0:
            raise ValueError("drain_timeout_s and retry_after_s must be non-negative")
        if self.reasoning_parser not in REASONING_PARSERS:
            raise ValueError(f"reasoning_parser must be one of {REASONING_PARSERS}")
        if self.tool_call_parser != "auto" and self.tool_call_parser not in FORMATS:
            raise ValueError(f"tool_call_parser must be 'auto' or one of {sorted(FORMATS)}")


@dataclass(frozen=True)
class Served:
    """A loaded model as the front sees it.

    tool_format: how the model writes tool calls (`jaxserve.grammar.tools.FORMATS`).
    template_tools: the chat template renders `tools` and tool messages itself; otherwise the
    front describes the tools in a system message (`api/tool_calls.py`).
    embedding_size: the width of the model's embeddings (its hidden size); 0 when the engine
    does not embed."""

    engine: EngineLike
    tokenizer: Tokenizer
    render_chat: RenderChat
    max_model_len: int
    stats: Callable[[], Mapping[str, float]] = dict
    created: int = field(default_factory=lambda: int(time.time()))
    tool_format: str = "hermes"
    template_tools: bool = False
    embedding_size: int = 0
    lora: str | None = None  # the LoRA adapter a request's `model` routed it to

    def adapters(self) -> list[str]:
        """The engine's LoRA adapters in load order (llama.cpp's adapter ids)."""
        names = getattr(self.engine, "lora_names", None)
        return names() if names is not None else []

    @classmethod
    def from_llm(cls, llm: LLM, engine: AsyncEngine) -> Served:
        def render(
            messages: Sequence[Mapping[str, Any]],
            add_generation_prompt: bool,
            tools: Sequence[Mapping[str, Any]] | None = None,
            template_kwargs: Mapping[str, Any] | None = None,
        ) -> str:
            return llm.render_chat(
                list(messages),
                add_generation_prompt=add_generation_prompt,
                tools=tools,
                template_kwargs=template_kwargs,
            )

        template = llm.template
        return cls(
            engine=engine,
            tokenizer=llm.tokenizer,
            render_chat=render,
            max_model_len=llm.engine.max_model_len,
            stats=llm.engine.stats.snapshot,
            tool_format=tool_format(template.source),  # the architecture's template too
            template_tools=template.reads("tools"),
            embedding_size=llm.config.hidden_size,
        )


class ModelLoader(Protocol):
    """Loads models at run time (`POST /admin/models`). `source`: a known model's name or a path;
    `options`: load options (`weights`, `max_model_len`, `max_num_seqs`, `kv_cache_mb`)."""

    def check(self, source: str, options: Mapping[str, Any]) -> None:
        """Raise ValueError / FileNotFoundError, quickly, for a source that cannot load."""

    def load(self, source: str, options: Mapping[str, Any]) -> Served:
        """Load it (blocking; called on a worker thread)."""
        ...


class ServerState:
    """The models (`api/model_registry.py`), draining, in-flight requests and metrics of one
    front. `served` is the first model's `Served` (the one named by `config.model_names`)."""

    def __init__(self, config: ServerConfig, loader: ModelLoader | None = None) -> None:
        self.config = config
        self.models = ModelRegistry()
        self.loader = loader
        self.load_error: str | None = None  # a model given at start-up failed to load
        self.draining = False
        self.in_flight = 0
        self.started = time.monotonic()
        self.metrics = Metrics(self.model_stats)

    @property
    def served(self) -> Served | None:
        entry = self.models.get(self.config.model_names[0])
        return entry.served if entry else None

    @served.setter
    def served(self, served: Served | None) -> None:
        names = self.config.model_names
        entry = self.models.get(names[0]) or self.models.add(names, names[0])
        if served is None:
            entry.status, entry.served = LOADING, None
        else:
            self.attach(entry, served)

    def attach(self, entry: ModelEntry, served: Served) -> None:
        """A loaded model starts taking requests."""
        parser = self.config.tool_call_parser
        if parser != "auto":
            served = replace(served, tool_format=parser)
        entry.served, entry.status, entry.error = served, READY, None
        entry.loaded_at = time.monotonic()

    def model_stats(self) -> dict[str, Mapping[str, float]]:
        """Each ready model's engine stats, by model id, with its token rate over the last
        minute, compiled shapes, KV pages in all and seconds since it turned ready."""
        out: dict[str, Mapping[str, float]] = {}
        now = time.monotonic()
        for entry in self.models.ready():
            if entry.served is None:
                continue
            stats = dict(entry.served.stats())
            engine = entry.served.engine
            rate = getattr(engine, "rate", None)
            stats["tokens_per_second_1m"] = rate.per_second() if rate is not None else 0.0
            compiled = getattr(engine, "compiled_shapes", None)
            stats["compiled_shapes"] = compiled() if compiled is not None else 0
            if "kv_pages_used" in stats and "kv_pages_free" in stats:
                stats["kv_pages_total"] = stats["kv_pages_used"] + stats["kv_pages_free"]
            stats["uptime_seconds"] = now - (entry.loaded_at or now)
            out[entry.id] = stats
        return out

    def health(self) -> tuple[int, str, str]:
        """(HTTP status, error code, reason) of /health; 200 only when requests can be served."""
        if self.draining:
            return 503, "draining", "draining"
        if self.load_error is not None:
            return 503, "load_failed", f"failed to load: {self.load_error}"
        ready = self.models.ready()
        if not ready:
            if any(e.status == LOADING for e in self.models):
                return 503, "loading", "loading"
            return 503, "no_model", "no model is loaded"
        stopped = [e.id for e in ready if e.served and not e.served.engine.is_alive]
        if stopped:
            return 503, "engine_stopped", f"the engine of {', '.join(stopped)} stopped"
        return 200, "ok", "ok"

    def route(self, name: str | None) -> ModelEntry:
        """The ready model a request's `model` field names (the first model when None): 404
        for a name nothing is loaded under, 503 while it loads, draining or stopped."""
        return self.resolve(name)[0]

    def resolve(self, name: str | None) -> tuple[ModelEntry, str | None]:
        """`route`, with the LoRA adapter the name selects: a model's own name (None), an
        adapter's name, or "MODEL:ADAPTER"."""
        status, code, reason = self.health()
        if status != 200 and code in ("draining", "load_failed"):
            raise self._unavailable(f"The server is not ready: {reason}", code)
        entry = self.models.default() if name is None else self.models.find(name)
        adapter = None
        if entry is None and name is None:
            raise self._unavailable(f"The server is not ready: {reason}", code)
        if entry is None:
            entry, adapter = self._adapter(name)
        if entry is None:
            served = ", ".join(self.served_names()) or "nothing yet"
            message = f"The model `{name}` does not exist; this server serves {served}"
            raise APIError(404, message, param="model", code="model_not_found")
        if entry.status == LOADING:
            raise self._unavailable(f"The model `{entry.id}` is loading", "loading")
        if entry.status == FAILED or entry.served is None:
            message = f"The model `{entry.id}` failed to load: {entry.error}"
            raise self._unavailable(message, "load_failed")
        if not entry.served.engine.is_alive:
            raise self._unavailable(f"The engine of `{entry.id}` stopped", "engine_stopped")
        return entry, adapter

    def _adapter(self, name: str) -> tuple[ModelEntry | None, str | None]:
        """The ready model holding the adapter `name` ("MODEL:ADAPTER" or the adapter alone)."""
        base, sep, adapter = name.rpartition(":")
        if sep:
            entry = self.models.find(base)
            if entry is not None and entry.served and adapter in entry.served.adapters():
                return entry, adapter
        for entry in self.models.ready():
            if entry.served and name in entry.served.adapters():
                return entry, name
        return None, None

    def served_names(self) -> list[str]:
        """Every name a request may use: the ready models' names and their adapters'."""
        out = []
        for entry in self.models.ready():
            out += entry.names
            out += entry.served.adapters() if entry.served else []
        return out

    @asynccontextmanager
    async def hold(self, name: str | None) -> AsyncIterator[tuple[str, Served]]:
        """Route a request and keep its model from being unloaded until the block ends (by then
        its work is in the engine, which an unload waits for too). Yields the name responses
        report and the model, with `lora` set when the name selects an adapter."""
        entry, adapter = self.resolve(name)
        assert entry.served is not None
        entry.holds += 1
        try:
            if adapter is None:
                yield entry.id, entry.served
            else:
                yield name or entry.id, replace(entry.served, lora=adapter)
        finally:
            entry.holds -= 1

    def _unavailable(self, message: str, code: str) -> APIError:
        retry = {"Retry-After": str(max(self.config.retry_after_s, 1))}
        return APIError(503, message, code=code, headers=retry)

    @asynccontextmanager
    async def tracking(self) -> AsyncIterator[None]:
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    async def track(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Count a streaming response as in flight until its last chunk is sent."""
        async with self.tracking():
            try:
                async for chunk in chunks:
                    yield chunk
            finally:
                await chunks.aclose()  # type: ignore[attr-defined]

    async def metered(
        self, outputs: AsyncIterator[tuple[int, StreamOutput]], *, started: float, n: int
    ) -> AsyncIterator[tuple[int, StreamOutput]]:
        """Pass outputs through, observing time to first token and counting tokens served."""
        first = True
        try:
            async for index, out in outputs:
                if first and out.new_token_ids:
                    first = False
                    self.metrics.ttft.observe(time.perf_counter() - started)
                if out.finish_reason is not None:
                    prompt = out.prompt_tokens if index % n == 0 else 0
                    self.metrics.count_tokens(prompt, out.completion_tokens)
                yield index, out
        finally:
            await outputs.aclose()  # type: ignore[attr-defined]

    async def drain(self, timeout_s: float | None = None) -> bool:
        """Refuse new requests (503) and wait for in-flight ones; True if all finished in time."""
        self.draining = True
        deadline = time.monotonic() + (
            self.config.drain_timeout_s if timeout_s is None else timeout_s
        )
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self.in_flight == 0
