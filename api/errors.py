"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}` for every failure.

Bad input is a 4xx naming what was wrong; a 5xx is always a bug (and never shows a traceback).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("jaxserve.api")
_UNPARSABLE = "There was an error parsing the body"  # FastAPI's detail when json.loads fails

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
}


class APIError(Exception):
    """An error answered to the client as OpenAI-shaped JSON."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict:
        kind = _TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request")
        return {
            "error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def unsupported(field: str, what: str = "is not supported yet") -> APIError:
    return APIError(400, f"`{field}` {what}", param=field, code="unsupported_parameter")


def unknown_field(field: str) -> APIError:
    message = f"Unrecognized request argument supplied: {field}"
    return APIError(400, message, param=field, code="unknown_parameter")


_TYPE_TAG = re.compile(r"^(str|int|float|bool|dict|list|none|tuple)(\[.*\])?$|.*[\[(-]")


def _is_tag(part: object) -> bool:
    """pydantic puts the union member tried ("str", "list[int]") in an error's location."""
    return isinstance(part, str) and bool(_TYPE_TAG.match(part))


def _loc(loc: Sequence[object]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path") and not _is_tag(p)]
    out = ""
    for part in parts:
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out


def validation_error(errors: Sequence[Mapping]) -> APIError:
    """The first pydantic error, as a 400 whose `param` is the field's path."""
    if not errors:
        return bad_request("Invalid request body")
    first = errors[0]
    kind = first.get("type", "")
    param = _loc(first.get("loc", ())) or None
    if kind == "invalid_text":  # found by walking the body: the path is in the context
        return bad_request(first.get("msg", "invalid text"), first["ctx"]["param"], kind)
    if kind == "json_invalid":
        return bad_request("The request body is not valid JSON", code="invalid_json")
    if kind == "missing" and param is None:
        return bad_request("The request body is missing", code="invalid_body")
    if kind == "extra_forbidden" and param is not None:
        return unknown_field(param)
    if kind == "missing":
        return bad_request(f"Missing required parameter: {param}", param, "missing_required")
    if any(_is_tag(part) for part in first.get("loc", ())):
        return bad_request(f"{param}: not one of the accepted types", param, "invalid_type")
    message = f"{param}: {first.get('msg', 'invalid value')}" if param else first.get("msg", "")
    return bad_request(message or "Invalid request body", param, "invalid_value")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc.errors()).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, exc.detail)
        if exc.status_code == 404:
            message = f"Unknown route: {request.method} {request.url.path}"
        if exc.status_code == 400 and exc.detail == _UNPARSABLE:  # e.g. nested past recursion
            message = "The request body could not be parsed as JSON (malformed or nested too deep)"
            return bad_request(message, code="invalid_json").response()
        return APIError(exc.status_code, str(message), headers=exc.headers).response()

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return APIError(500, "Internal server error", code="internal_error").response()
