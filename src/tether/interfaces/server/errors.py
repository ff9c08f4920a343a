"""Errors in OpenAI's envelope `{"error": {"message", "type", "param", "code"}}`, with its status codes,
and the handlers that answer every error of the app in it (the services' domain errors included)."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from tether.domain.errors import AlreadyResumed, ConfigError, InvalidRequest, NotFound, RunNotFound, TetherError

log = logging.getLogger("tether.server")

_NOT_FIELDS = {"body", "query", "path", "header", "str", "int", "float", "bool", "none", "list", "dict"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return envelope(self.message, self.type, self.param, self.code)


def envelope(message: str, type: str = "invalid_request_error", param: str | None = None,
             code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """One sentence for pydantic's first error, OpenAI-style, and the parameter it concerns."""
    if not errors:
        return "The request is invalid.", None
    e = errors[0]
    raw = tuple(e.get("loc", ()))
    if raw and raw[-1] in ("str", "constrained-str") and isinstance(e.get("input"), list):
        # `str | list[...]` was sent a list: the list's own error says what is wrong
        e = next((o for o in errors[1:] if tuple(o.get("loc", ()))[:len(raw) - 1] == raw[:-1]), e)
    # pydantic adds union branches ("str", "list[ContentPart]", "function-after[...]") to the location
    loc = [x for x in e.get("loc", ()) if isinstance(x, int) or (
        re.fullmatch(r"[a-z_][a-z0-9_\[\]]*", x) and x not in _NOT_FIELDS)]
    # `tools[0].function.name`, as the server's own checks name a field
    param = "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in loc).lstrip(".") or None
    kind = e.get("type", "")
    msg = str(e.get("msg", "invalid value"))
    if kind == "json_invalid":
        return ("We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
                "HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid "
                "JSON.)"), None
    if kind == "missing" and param is None:
        return "The request body is missing: send a JSON object.", None
    if kind == "missing":
        return f"Missing required parameter: '{param}'.", param
    if kind == "extra_forbidden":  # the key as sent, even one the filter above drops ("x-foo")
        name = str(e["loc"][-1]) if e.get("loc") else param
        return f"Unrecognized request argument supplied: {name}", param
    if kind in ("model_type", "model_attributes_type", "dict_type") and param is None:
        return "The request body must be a JSON object.", None
    msg = msg.removeprefix("Value error, ")
    return (f"Invalid value for '{param}': {msg}." if param else f"Invalid request: {msg}."), param


def error_response(e: ApiError, request: Request) -> JSONResponse:
    headers = {}
    if request.method == "POST" or e.status in (409, 429) or e.status >= 500:
        headers["x-should-retry"] = "false"  # a retried POST could create a second run
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


def add_error_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's envelope: the app's own, FastAPI's, and the domain's."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> Response:
        return error_response(e, request)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> Response:
        message, param = validation_message(list(e.errors()))
        return error_response(ApiError(400, message, param=param), request)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> Response:
        messages = {404: f"Invalid URL ({request.method} {request.url.path})",
                    405: f"Method {request.method} is not allowed for {request.url.path}"}
        message = messages.get(e.status_code, str(e.detail))
        return error_response(ApiError(e.status_code, message), request)

    @app.exception_handler(InvalidRequest)
    async def invalid_request(request: Request, e: InvalidRequest) -> Response:
        return error_response(ApiError(400, str(e), param=e.param), request)

    @app.exception_handler(ConfigError)
    async def config_error(request: Request, e: ConfigError) -> Response:
        return error_response(ApiError(400, str(e)), request)

    @app.exception_handler(NotFound)
    async def not_found(request: Request, e: NotFound) -> Response:
        return error_response(ApiError(404, str(e)), request)

    @app.exception_handler(RunNotFound)
    async def run_not_found(request: Request, e: RunNotFound) -> Response:
        return error_response(ApiError(404, str(e)), request)

    @app.exception_handler(AlreadyResumed)
    async def already_resumed(request: Request, e: AlreadyResumed) -> Response:
        return error_response(ApiError(409, str(e), code="already_resumed"), request)

    @app.exception_handler(TetherError)
    async def tether_error(request: Request, e: TetherError) -> Response:
        return error_response(ApiError(400, str(e)), request)

    @app.exception_handler(Exception)
    async def crash(request: Request, e: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(ApiError(500, "The server had an error while processing your request. "
                                            "The request id in x-request-id identifies it in the server's log.",
                                       type="server_error"), request)
