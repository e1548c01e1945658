"""LoRA adapter routes (vLLM's): `POST /v1/load_lora_adapter` `{"lora_name", "lora_path"}` and
`POST /v1/unload_lora_adapter` `{"lora_name"}`, each with an optional `model` (the base; the
first model by default). A loaded adapter serves as `"model": "ADAPTER"` or `"BASE:ADAPTER"`, or
through llama.cpp's per-request `"lora": [{"id": i, "scale": s}]` (ids in load order), and
`/v1/models` lists it with its base as `parent`."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from jaxserve.api.errors import APIError, bad_request
from jaxserve.api.model_registry import ModelEntry
from jaxserve.api.server_state import ServerState
from jaxserve.errors import JaxserveError


class LoadAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    lora_name: str = Field(min_length=1)
    lora_path: str = Field(min_length=1)
    model: str | None = None


class UnloadAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    lora_name: str = Field(min_length=1)
    lora_int_id: int | None = None  # vLLM sends it; names identify adapters here
    model: str | None = None


def adapter_cards(state: ServerState) -> list[dict[str, Any]]:
    """Each ready model's adapters as `/v1/models` entries."""
    out = []
    for entry in state.models.ready():
        for name in entry.served.adapters() if entry.served else []:
            card = entry.card()
            out.append({**card, "id": name, "parent": entry.id, "root": f"{entry.id}:{name}"})
    return out


def add_adapter_routes(app: FastAPI, state: ServerState) -> None:
    @app.post("/v1/load_lora_adapter")
    async def load_adapter(body: LoadAdapterRequest) -> dict[str, Any]:
        entry, engine = _adapter_engine(state, body.model)
        if body.lora_name in state.served_names():
            message = f"The name `{body.lora_name}` is taken (unload it first)"
            raise APIError(409, message, param="lora_name", code="model_exists")
        try:
            await engine.load_lora(body.lora_name, body.lora_path)
        except FileNotFoundError as error:
            raise bad_request(str(error), "lora_path", "adapter_not_found") from None
        except (ValueError, JaxserveError) as error:
            raise bad_request(str(error), "lora_path", "invalid_adapter") from None
        return {"object": "lora_adapter", "lora_name": body.lora_name, "parent": entry.id}

    @app.post("/v1/unload_lora_adapter")
    async def unload_adapter(body: UnloadAdapterRequest) -> dict[str, Any]:
        entry, engine = _adapter_engine(state, body.model)
        try:
            await engine.unload_lora(body.lora_name)
        except KeyError:
            message = f"No LoRA adapter `{body.lora_name}` is loaded on `{entry.id}`"
            raise APIError(404, message, param="lora_name", code="adapter_not_found") from None
        except ValueError as error:
            raise APIError(409, str(error), param="lora_name", code="adapter_in_use") from None
        return {"object": "lora_adapter", "lora_name": body.lora_name, "deleted": True}


def _adapter_engine(state: ServerState, model: str | None) -> tuple[ModelEntry, Any]:
    """The model a request names and its engine, which must take adapters."""
    entry = state.route(model)
    engine = entry.served.engine if entry.served else None
    if getattr(engine, "load_lora", None) is None:
        raise bad_request(f"`{entry.id}` does not take LoRA adapters", "model")
    return entry, engine
