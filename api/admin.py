"""Admin routes: models loaded and unloaded while the others keep serving, per-model stats.

- `GET /admin/models`: every model with its state (loading, ready, failed, unloading).
- `POST /admin/models` `{"model": NAME_OR_PATH, "name": ..., "weights": ..., ...}`: 202 at once;
  the model loads on a worker thread and serves once ready (`GET /admin/models/{id}` says when).
  409 when a name is taken, 400 when the server was built without a loader.
- `DELETE /admin/models/{id}`: the model takes no new requests (404 for them), its in-flight
  ones finish, its engine stops and its memory is freed; answers once that is done.
- `GET /admin/stats`: per model: running and waiting requests, tokens/s over the last minute,
  KV pages used, compiled shapes, uptime (the same numbers are in /metrics, labelled by model).

They take the API key, or `ServerConfig.admin_key` when set (`api/middleware.py`).
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import time
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from jaxserve.api.errors import APIError
from jaxserve.api.model_registry import FAILED, READY, UNLOADING, ModelEntry
from jaxserve.api.server_state import ServerState

log = logging.getLogger("jaxserve.api")
PENDING_LISTED = 8  # buckets not compiled yet that /ready names per model


class LoadModelRequest(BaseModel):
    """A model to load. `name`: what requests call it (default: `model`); the rest override the
    server's own load options for this model."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(min_length=1)
    name: str | None = Field(default=None, min_length=1)
    weights: Literal["auto", "int8", "bf16", "f32"] | None = None
    max_model_len: int | None = Field(default=None, gt=0)
    max_num_seqs: int | None = Field(default=None, gt=0)
    kv_cache_mb: int | None = Field(default=None, gt=0)

    def options(self) -> dict[str, Any]:
        fields = ("weights", "max_model_len", "max_num_seqs", "kv_cache_mb")
        return {f: getattr(self, f) for f in fields if getattr(self, f) is not None}


def add_admin_routes(app: FastAPI, state: ServerState) -> None:
    tasks: set[asyncio.Task] = set()  # loads in flight (kept referenced until done)

    @app.get("/admin/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [_describe(e) for e in state.models]}

    @app.get("/admin/models/{model_id:path}")
    async def get_model(model_id: str) -> dict[str, Any]:
        return _describe(_entry(state, model_id))

    @app.post("/admin/models", status_code=202)
    async def load_model(body: LoadModelRequest) -> JSONResponse:
        if state.loader is None:
            message = "This server was started without a model loader: it cannot load models"
            raise APIError(400, message, param="model", code="unsupported_parameter")
        options = body.options()
        try:
            state.loader.check(body.model, options)
        except (ValueError, FileNotFoundError) as error:
            raise APIError(400, str(error), param="model", code="model_not_found") from None
        name = body.name or body.model
        try:
            entry = state.models.add((name,), body.model, options)
        except KeyError:
            message = f"A model named `{name}` is already loaded (DELETE it first)"
            raise APIError(409, message, param="name", code="model_exists") from None
        task = asyncio.create_task(_load(state, entry))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        entry.loading = task
        return JSONResponse(_describe(entry), status_code=202)

    @app.delete("/admin/models/{model_id:path}")
    async def unload_model(model_id: str) -> dict[str, Any]:
        entry = _entry(state, model_id)
        if entry.status == UNLOADING:
            raise APIError(409, f"`{model_id}` is already being unloaded", code="unloading")
        await unload(state, entry)
        return {"id": entry.id, "object": "model", "deleted": True}

    @app.get("/admin/stats")
    async def stats() -> dict[str, Any]:
        stats = state.model_stats()
        data = [{**_describe(e), **stats.get(e.id, {})} for e in state.models]
        return {"uptime_s": round(time.monotonic() - state.started, 3), "models": data}


async def _load(state: ServerState, entry: ModelEntry) -> None:
    assert state.loader is not None
    log.info("loading %s from %s", entry.id, entry.source)
    try:
        served = await asyncio.to_thread(state.loader.load, entry.source, entry.options)
    except Exception as error:  # reported by GET /admin/models; the others keep serving
        log.exception("loading %s failed", entry.id)
        entry.status, entry.error = FAILED, str(error) or type(error).__name__
        return
    if entry.status == UNLOADING:  # deleted while it loaded
        await asyncio.to_thread(_stop, served.engine)
        return
    state.attach(entry, served)
    log.info("model %s loaded; serving it", entry.id)


async def unload(state: ServerState, entry: ModelEntry) -> None:
    """Stop routing to the model, wait for its requests, stop its engine, free its memory."""
    entry.status = UNLOADING
    loading = entry.loading
    if loading is not None and not loading.done():
        await asyncio.shield(loading)
    served = entry.served
    while served is not None and (entry.holds or getattr(served.engine, "busy", False)):
        await asyncio.sleep(0.02)
    state.models.remove(entry.id)
    entry.served = None
    if served is not None:
        await asyncio.to_thread(_stop, served.engine)
    del served
    await asyncio.to_thread(_release_memory)
    log.info("model %s unloaded", entry.id)


def _release_memory() -> None:
    """Free the model's arrays (they go with their last reference, some in reference cycles)
    and hand the freed heap back to the OS: glibc keeps freed chunks for reuse otherwise, and
    the process's RSS would stay where it was with the model loaded."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the allocator keeps its own policy
        pass


def _stop(engine: object) -> None:
    shutdown = getattr(engine, "shutdown", None)
    if shutdown is not None:
        shutdown()


def _entry(state: ServerState, model_id: str) -> ModelEntry:
    entry = state.models.get(model_id) or state.models.find(model_id, any_status=True)
    if entry is None:
        listed = ", ".join(e.id for e in state.models) or "none"
        message = f"No model `{model_id}` is loaded (loaded: {listed})"
        raise APIError(404, message, param="model_id", code="model_not_found")
    return entry


def _describe(entry: ModelEntry) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": entry.id,
        "object": "model",
        "names": list(entry.names),
        "source": entry.source,
        "status": entry.status,
        "created": entry.created,
    }
    if entry.error is not None:
        out["error"] = entry.error
    return out


def model_states(state: ServerState) -> dict[str, dict[str, Any]]:
    """Each model's state and warm-up progress, for /health and /ready."""
    out: dict[str, dict[str, Any]] = {}
    for entry in state.models:
        info: dict[str, Any] = {"status": entry.status}
        if entry.status == READY and entry.served is not None:
            engine = entry.served.engine
            done, total = engine.warmup_progress()
            info.update(compiled=done, total=total, warm=done >= total)
            pending = getattr(engine, "warmup_pending", None)
            if done < total and pending is not None:
                info["pending"] = pending()[:PENDING_LISTED]
        out[entry.id] = info
    return out


__all__ = ["LoadModelRequest", "add_admin_routes", "model_states", "unload"]
