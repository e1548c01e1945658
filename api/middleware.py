"""Pure ASGI middleware (no response buffering, so streams and disconnects pass through):
X-Request-ID, API-key check, per-route metrics and an access log line."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jaxserve.api.errors import APIError
from jaxserve.api.metrics import Metrics

log = logging.getLogger("jaxserve.api")

OPEN_PATHS = frozenset({"/health", "/ready", "/"})  # answered without an API key
OPEN_PREFIXES = ("/playground/",)  # the playground's static files (it asks for the key itself)
ROUTES = frozenset(
    {
        "/",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/tokenize",
        "/detokenize",
        "/health",
        "/ready",
        "/metrics",
        "/admin/models",
        "/admin/stats",
        "/v1/load_lora_adapter",
        "/v1/unload_lora_adapter",
    }
)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


def route_label(path: str) -> str:
    """A bounded label set: known routes, the model route, everything else as "other"."""
    if path in ROUTES:
        return path
    if path.startswith("/v1/models/"):
        return "/v1/models/{model}"
    if path.startswith("/admin/models/"):
        return "/admin/models/{model}"
    if path.startswith(OPEN_PREFIXES):
        return "/playground/{file}"
    return "other"


def authorized(headers: Headers, api_key: str) -> bool:
    return key_matches(headers.get("authorization", ""), api_key)


def key_matches(authorization: str, api_key: str) -> bool:
    """Whether an `Authorization` value is `Bearer <api_key>`."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        token = ""
    # Compare fixed-length digests in constant time: neither the key nor its length leaks.
    given = hashlib.sha256(token.strip().encode()).digest()
    return hmac.compare_digest(given, hashlib.sha256(api_key.encode()).digest())


class FrontMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        api_key: str | None,
        metrics: Metrics,
        admin_key: str | None = None,
    ) -> None:
        self.app = app
        self.api_key = api_key
        self.admin_key = admin_key
        self.metrics = metrics

    def key_for(self, path: str) -> str | None:
        """The key a path needs (None: open): the admin key, if any, for /admin routes."""
        if path == "/admin" or path.startswith("/admin/"):
            return self.admin_key or self.api_key
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            return None
        return self.api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        given = headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        path: str = scope["path"]
        start = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["x-request-id"] = request_id
            await send(message)

        try:
            key = self.key_for(path)
            if key is not None and not authorized(headers, key):
                error = APIError(
                    401,
                    "Missing or incorrect API key (send `Authorization: Bearer <key>`)",
                    code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await error.response()(scope, receive, send_with_id)
                return
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - start
            self.metrics.observe(route_label(path), status, seconds)
            log.info(
                "request %s: %s %s -> %d in %.3fs",
                request_id,
                scope["method"],
                path,
                status,
                seconds,
            )
