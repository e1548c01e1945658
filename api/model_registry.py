"""The models one server serves, by name: each one's state (loading, ready, failed, unloading),
its engine, the requests holding it, and its recent token rate. Routing a request's `model`
field goes through here, and so do loads and unloads while the other models keep serving."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jaxserve.api.server_state import Served

LOADING, READY, FAILED, UNLOADING = "loading", "ready", "failed", "unloading"


class TokenRate:
    """Tokens generated over the last `window_s` seconds, kept as one count per second (fed by
    the engine thread, read by the front)."""

    def __init__(self, window_s: float = 60.0, *, clock=time.monotonic) -> None:
        self.window_s = window_s
        self._clock = clock
        self._start = clock()
        self._seconds: deque[list[float]] = deque()  # [second, tokens]
        self._lock = threading.Lock()

    def add(self, tokens: int) -> None:
        if tokens <= 0:
            return
        second = float(int(self._clock()))
        with self._lock:
            if self._seconds and self._seconds[-1][0] == second:
                self._seconds[-1][1] += tokens
            else:
                self._seconds.append([second, float(tokens)])
            self._trim(second)

    def per_second(self) -> float:
        """Tokens a second over the window (over the time since start while younger than it)."""
        now = self._clock()
        with self._lock:
            self._trim(now)
            total = sum(n for _, n in self._seconds)
        span = min(self.window_s, max(now - self._start, 1.0))
        return total / span

    def _trim(self, now: float) -> None:
        while self._seconds and self._seconds[0][0] <= now - self.window_s:
            self._seconds.popleft()


@dataclass
class ModelEntry:
    """id: the name responses report; names: every name that routes here (id first).
    source: what was loaded (a known model's name or a path); options: its load options."""

    id: str
    names: tuple[str, ...]
    source: str
    options: dict = field(default_factory=dict)
    status: str = LOADING
    served: Served | None = None
    error: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    loaded_at: float | None = None  # time.monotonic() when it turned ready
    holds: int = 0  # requests between routing and handing their work to the engine
    loading: asyncio.Task | None = field(default=None, repr=False)  # a load at run time

    def card(self, name: str | None = None) -> dict:
        """The model as `/v1/models` lists it (under one of its names)."""
        served = self.served
        return {
            "id": name or self.id,
            "object": "model",
            "created": served.created if served else self.created,
            "owned_by": "jaxserve",
            "max_model_len": served.max_model_len if served else None,
        }


class ModelRegistry:
    """Entries by id in load order; names are unique across entries (a failed entry keeps its
    names until it is deleted, so a retry needs the DELETE first)."""

    def __init__(self) -> None:
        self._entries: dict[str, ModelEntry] = {}

    def __iter__(self) -> Iterator[ModelEntry]:
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, model_id: str) -> ModelEntry | None:
        return self._entries.get(model_id)

    def add(self, names: tuple[str, ...], source: str, options: dict | None = None) -> ModelEntry:
        taken = [n for n in names if self.find(n, any_status=True) is not None]
        if taken:
            raise KeyError(taken[0])
        entry = ModelEntry(id=names[0], names=names, source=source, options=dict(options or {}))
        self._entries[entry.id] = entry
        return entry

    def remove(self, model_id: str) -> ModelEntry | None:
        return self._entries.pop(model_id, None)

    def find(self, name: str, *, any_status: bool = False) -> ModelEntry | None:
        """The entry a name routes to; unloading entries route nowhere unless `any_status`."""
        for entry in self._entries.values():
            if name in entry.names and (any_status or entry.status != UNLOADING):
                return entry
        return None

    def default(self) -> ModelEntry | None:
        """The first model in load order that is not being unloaded (requests without a
        `model` field go there)."""
        return next((e for e in self._entries.values() if e.status != UNLOADING), None)

    def ready(self) -> list[ModelEntry]:
        return [e for e in self._entries.values() if e.status == READY]
