"""The HTTP server: OpenAI's Assistants API (v2), Tether's debug API and its batches, over the services.

`create_app(services, config)` builds the FastAPI app over the services of the composition root
(services/compose.py); `tether serve` runs it. Keys
and tenants (`keys.py`), OpenAI's error envelope (`errors.py`), `x-request-id` and the poll hint
are handled once for every route; the routes are one module per resource (`routes/`, `debug.py`),
thin over the Assistants face (`assistants.py`) and the services.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from tether.interfaces.server.assistants import AssistantsApi, ServerConfig
from tether.interfaces.server.debug import add_debug_routes
from tether.interfaces.server.errors import ApiError, add_error_handlers
from tether.interfaces.server.guard import HostGuard
from tether.interfaces.server.keys import add_key_middleware
from tether.interfaces.server.routes import assistants, batches, messages, runs, threads
from tether.services.compose import Services


def create_app(services: Services, config: ServerConfig | None = None) -> FastAPI:
    config = config or ServerConfig()
    dispatcher = services.dispatcher
    api = AssistantsApi(services, config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        dispatcher.start()  # also resumes the runs a dead server left (their leases expired)
        await services.batches.resume_open()  # and the batches it was running in the background
        try:
            yield
        finally:
            await services.batches.close()  # no new case starts; cases in flight stay resumable
            await dispatcher.close()

    app = FastAPI(title="Tether: Assistants API", version="2", lifespan=lifespan,
                  description="OpenAI's Assistants API (v2) over Tether's durable runs, plus Tether's debug API.")
    app.state.api, app.state.services = api, services

    keys = [k for k in config.api_keys if k]
    add_key_middleware(app, keys, poll_after_ms=config.poll_after_ms)
    add_error_handlers(app)
    for resource in (assistants, threads, messages, runs):  # in this order: the document lists them so
        app.include_router(resource.router)

    # -- what Tether does not serve: a 400 that says so (not a 404 that suggests a wrong URL) ----

    for prefix, what in (("/v1/files", "Files"), ("/v1/vector_stores", "Vector stores")):
        for path in (prefix, prefix + "/{rest:path}"):
            app.add_api_route(path, _not_served(what), methods=["GET", "POST", "DELETE", "PUT", "PATCH"],
                              include_in_schema=False)

    add_debug_routes(app, api, services, keyless=not keys)
    app.include_router(batches.router)
    if not keys or config.allowed_hosts:  # outermost: every path, before a route or a key is looked at
        app.add_middleware(HostGuard, allowed_hosts=config.allowed_hosts, check_origin=not keys)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, saying what the server really answers to a bad request: a 400 in OpenAI's
    envelope (not FastAPI's 422)."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schemas_ = doc.setdefault("components", {}).setdefault("schemas", {})
        schemas_.pop("HTTPValidationError", None)
        schemas_.pop("ValidationError", None)
        schemas_["Error"] = {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["message", "type", "param", "code"],
            "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                           "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}
        error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        for path in doc.get("paths", {}).values():
            for operation in path.values():
                responses = operation.get("responses", {})
                responses.pop("422", None)
                responses["400"] = {"description": "Invalid request", **error}
                responses["401"] = {"description": "Missing or wrong API key", **error}
                responses["404"] = {"description": "Unknown id", **error}
        app.openapi_schema = doc
    return app.openapi_schema


def _not_served(what: str) -> Callable[[], Awaitable[None]]:
    async def not_served() -> None:
        raise ApiError(400, f"{what} are not supported by this server: Tether serves assistants, threads, "
                            "messages, runs and run steps (see docs/server.md).", code="unsupported")

    return not_served
