"""The OpenAI-compatible HTTP front: `create_app(config, served)` builds a FastAPI app.

Routes: POST /v1/chat/completions, POST /v1/completions, POST /v1/embeddings, GET /v1/models,
GET /v1/models/{id}, POST /tokenize, POST /detokenize, GET /health (503 while loading, draining,
or after the engine stopped), GET /ready (200 once every bucket is compiled), GET /metrics
(Prometheus), and the admin routes of `api/admin.py` (models loaded and unloaded at run time,
per-model stats). A request's `model` field picks one of the loaded models. Every error is
OpenAI-shaped JSON (`api/errors.py`); every request field is applied or refused with a 400
naming it (`api/sampling.py`).

The app can start before the model is loaded (`served=None`): attach it later with
`app.state.server.served = Served(...)`; until then generating routes and /health answer 503.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from jaxserve.api.adapters import adapter_cards, add_adapter_routes
from jaxserve.api.admin import add_admin_routes, model_states
from jaxserve.api.errors import APIError, bad_request, install_error_handlers
from jaxserve.api.middleware import FrontMiddleware
from jaxserve.api.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    TokenizeRequest,
)
from jaxserve.api.server_state import ModelLoader, Served, ServerConfig, ServerState
from jaxserve.api.serving_chat import create_chat_completion, plain_messages
from jaxserve.api.serving_completion import create_completion
from jaxserve.api.serving_embedding import create_embedding
from jaxserve.api.tool_calls import ToolUse, chat_prompt
from jaxserve.errors import JaxserveError
from jaxserve.text.tokenizer import encode_prompt

__all__ = ["Served", "ServerConfig", "ServerState", "create_app"]

PLAYGROUND = Path(__file__).parent / "playground"


def create_app(
    config: ServerConfig, served: Served | None = None, *, loader: ModelLoader | None = None
) -> FastAPI:
    """`served`: the first model (None: attach it later); `loader`: loads further models for
    `POST /admin/models` (None: that route answers 400)."""
    state = ServerState(config, loader)
    state.served = served
    app = FastAPI(title="jaxserve", summary="OpenAI-compatible LLM server", version="0.1.0")
    app.state.server = state
    install_error_handlers(app)
    app.add_middleware(
        FrontMiddleware,
        api_key=config.api_key,
        admin_key=config.admin_key,
        metrics=state.metrics,
    )
    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )

    app.mount("/playground", StaticFiles(directory=PLAYGROUND), name="playground")

    @app.get("/", include_in_schema=False)
    async def playground() -> FileResponse:
        """The browser playground (static files in the package; no build step, no CDN)."""
        return FileResponse(PLAYGROUND / "index.html")

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        async with state.hold(body.model) as (model, served):
            return await create_chat_completion(body, request, state, model, served)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        async with state.hold(body.model) as (model, served):
            return await create_completion(body, request, state, model, served)

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest) -> Response:
        """Each input's final hidden states (after the final norm), mean-pooled over its tokens
        and L2-normalized."""
        async with state.hold(body.model) as (model, served):
            return await create_embedding(body, state, model, served)

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        """The models that serve now (loading and failed ones are listed by /admin/models)."""
        cards = [e.card(n) for e in state.models.ready() for n in e.names] + adapter_cards(state)
        return {"object": "list", "data": cards}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict[str, Any]:
        entry, adapter = state.resolve(model_id)  # a 404, or a 503 while it loads
        if adapter is None:
            return entry.card(model_id)
        return next(c for c in adapter_cards(state) if c["id"] == adapter)

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> dict[str, Any]:
        served = state.route(body.model).served
        assert served is not None
        if (body.prompt is None) == (body.messages is None):
            raise bad_request("give exactly one of `prompt` and `messages`", "prompt")
        if body.messages is not None:
            messages = plain_messages(body.messages)
            try:
                text = chat_prompt(messages, ToolUse(), served, body.add_generation_prompt)
            except JaxserveError as error:
                raise bad_request(f"The chat template failed: {error}", "messages") from None
            ids = encode_prompt(served.tokenizer, text, add_special=False)
        else:
            ids = encode_prompt(
                served.tokenizer, body.prompt or "", add_special=body.add_special_tokens
            )
        out: dict[str, Any] = {
            "count": len(ids),
            "max_model_len": served.max_model_len,
            "tokens": ids,
        }
        if body.return_token_strs:
            out["token_strs"] = [served.tokenizer.id_to_piece(i) for i in ids]
        return out

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> dict[str, Any]:
        served = state.route(body.model).served
        assert served is not None
        vocab = served.tokenizer.vocab_size
        if any(not 0 <= t < vocab for t in body.tokens):
            raise bad_request(f"token ids must be in [0, {vocab})", "tokens")
        return {"prompt": served.tokenizer.decode(body.tokens)}

    @app.get("/health")
    async def health() -> Response:
        """200 while requests can be served (buckets compile in the background meanwhile:
        `warmup` counts them for the first model, `models` for each one)."""
        status, code, reason = state.health()
        if status != 200:
            return APIError(status, reason, code=code).response()
        body: dict[str, Any] = {"status": reason}
        done, total = state.served.engine.warmup_progress() if state.served else (0, 0)
        if total:
            body["warmup"] = {"compiled": done, "total": total}
        body["models"] = model_states(state)
        return JSONResponse(body)

    @app.get("/ready")
    async def ready() -> Response:
        """200 once every loaded model has compiled all its buckets (no request will wait
        for a compile); 503 before that, with each model's progress and the next buckets it
        will compile (`pending`)."""
        status, code, reason = state.health()
        if status != 200:
            return APIError(status, reason, code=code).response()
        models = model_states(state)
        warming = [m for m, info in models.items() if not info.get("warm", False)]
        if not warming:
            return JSONResponse({"status": "ready", "models": models})
        error = APIError(503, f"warming up: {', '.join(warming)}", code="warming_up")
        return JSONResponse({**error.body(), "models": models}, status_code=503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    add_admin_routes(app, state)
    add_adapter_routes(app, state)
    return app
