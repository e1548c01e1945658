"""The HTTP front's configuration and per-app state: the served model (None while loading),
draining, in-flight requests, metrics. One `ServerState` per app; nothing module-global."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from jaxserve.api.errors import APIError
from jaxserve.api.generation import EngineLike
from jaxserve.api.metrics import Metrics
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
    cors_origins: origins allowed by CORS ("*" for any); empty turns CORS off.
    drain_timeout_s: how long in-flight requests may run after SIGTERM.
    retry_after_s: the Retry-After of a 429 (queue full).
    reasoning_parser: how chat replies are split into `reasoning_content` and `content`
    (`api/reasoning.py`: "none", "think", "think-open").
    tool_call_parser: the tool-call format ("auto": the one the chat template suggests, else a
    name in `jaxserve.grammar.tools.FORMATS`)."""

    model_names: tuple[str, ...]
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    drain_timeout_s: float = 30.0
    retry_after_s: int = 1
    system_fingerprint: str = "fp_jaxserve"
    reasoning_parser: str = "none"
    tool_call_parser: str = "auto"

    def __post_init__(self) -> None:
        if not self.model_names or not all(self.model_names):
            raise ValueError("model_names must hold at least one non-empty name")
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key must be None or non-empty")
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


class ServerState:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._served: Served | None = None
        self.load_error: str | None = None
        self.draining = False
        self.in_flight = 0
        self.metrics = Metrics(lambda: self.served.stats() if self.served else None)

    @property
    def served(self) -> Served | None:
        return self._served

    @served.setter
    def served(self, served: Served | None) -> None:
        parser = self.config.tool_call_parser
        if served is not None and parser != "auto":
            served = replace(served, tool_format=parser)
        self._served = served

    def health(self) -> tuple[int, str, str]:
        """(HTTP status, error code, reason) of /health; 200 only when requests can be served."""
        if self.draining:
            return 503, "draining", "draining"
        if self.load_error is not None:
            return 503, "load_failed", f"failed to load: {self.load_error}"
        if self.served is None:
            return 503, "loading", "loading"
        if not self.served.engine.is_alive:
            return 503, "engine_stopped", "the engine stopped"
        return 200, "ok", "ok"

    def ready(self) -> Served:
        """The served model, or a 503 while loading, draining or after the engine stopped."""
        status, code, reason = self.health()
        if status != 200 or self.served is None:
            retry = {"Retry-After": str(max(self.config.retry_after_s, 1))}
            raise APIError(503, f"The server is not ready: {reason}", code=code, headers=retry)
        return self.served

    def check_model(self, name: str | None) -> str:
        names = self.config.model_names
        if name is not None and name not in names:
            message = f"The model `{name}` does not exist; this server serves {', '.join(names)}"
            raise APIError(404, message, param="model", code="model_not_found")
        return names[0]

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
