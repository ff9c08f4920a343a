"""The HTTP server: OpenAI's Assistants API (v2) and Tether's debug API, over the runs service.

`create_app(services, config)` builds the FastAPI app over the services of the composition root
(services/compose.py; a bare runs service gets the default ones); `tether serve` runs it. Keys
and tenants, OpenAI's error envelope, `x-request-id` and the poll hint are handled here once for
every route; the routes themselves are thin (the behaviour is in `assistants.py`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import Body, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tether.domain.errors import AlreadyResumed, ConfigError, InvalidRequest, NotFound, RunNotFound, TetherError
from tether.domain.ids import new_id
from tether.interfaces.server import schemas
from tether.interfaces.server.assistants import AssistantsApi, ServerConfig, tenant_of
from tether.interfaces.server.debug import add_debug_routes
from tether.interfaces.server.errors import ApiError, envelope, validation_message
from tether.interfaces.server.guard import HostGuard
from tether.interfaces.server.streaming import DONE, KEEPALIVE, AssistantStream, sse
from tether.interfaces.server.wire import RunLog
from tether.services.compose import Services, services_for
from tether.services.events import Quiet, Subscription
from tether.services.runs import RunsService

log = logging.getLogger("tether.server")

Order = Annotated[Literal["asc", "desc"], Query()]
Limit = Annotated[int, Query(ge=1, le=100)]
Include = Annotated[list[str] | None, Query(alias="include[]")]


def create_app(services: Services | RunsService, config: ServerConfig | None = None) -> FastAPI:
    config = config or ServerConfig()
    if isinstance(services, RunsService):
        services = services_for(services, concurrency=config.concurrency)
    service, dispatcher = services.runs, services.dispatcher
    api = AssistantsApi(service, config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        dispatcher.start()  # also resumes the runs a dead server left (their leases expired)
        yield
        await dispatcher.close()

    app = FastAPI(title="Tether: Assistants API", version="2", lifespan=lifespan,
                  description="OpenAI's Assistants API (v2) over Tether's durable runs, plus Tether's debug API.")
    app.state.api, app.state.services = api, services

    # -- keys, tenants, request ids ---------------------------------------------------------

    keys = [k for k in config.api_keys if k]
    digests = [(hashlib.sha256(k.encode()).digest(), k) for k in keys]

    @app.middleware("http")
    async def authenticate(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        request_id = new_id("req")
        if request.url.path.startswith("/v1/"):
            if keys:
                headers = [v for k, v in request.scope["headers"] if k == b"authorization"]
                token = _bearer(headers[0]) if len(headers) == 1 else None
                match = _key_of(token, digests)
                if match is None:
                    response: Response = _error_response(_auth_error(len(headers), token), request)
                    response.headers["x-request-id"] = request_id
                    return response
                request.state.tenant = tenant_of(match)
            else:
                request.state.tenant = tenant_of(None)
        response = await call_next(request)
        response.headers["x-request-id"] = request_id
        if "/runs" in request.url.path:
            response.headers["openai-poll-after-ms"] = str(config.poll_after_ms)
        return response

    # -- errors: always OpenAI's envelope -----------------------------------------------------

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> Response:
        return _error_response(e, request)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> Response:
        message, param = validation_message(list(e.errors()))
        return _error_response(ApiError(400, message, param=param), request)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> Response:
        messages = {404: f"Invalid URL ({request.method} {request.url.path})",
                    405: f"Method {request.method} is not allowed for {request.url.path}"}
        message = messages.get(e.status_code, str(e.detail))
        return _error_response(ApiError(e.status_code, message), request)

    @app.exception_handler(InvalidRequest)
    async def invalid_request(request: Request, e: InvalidRequest) -> Response:
        return _error_response(ApiError(400, str(e), param=e.param), request)

    @app.exception_handler(ConfigError)
    async def config_error(request: Request, e: ConfigError) -> Response:
        return _error_response(ApiError(400, str(e)), request)

    @app.exception_handler(NotFound)
    async def not_found(request: Request, e: NotFound) -> Response:
        return _error_response(ApiError(404, str(e)), request)

    @app.exception_handler(RunNotFound)
    async def run_not_found(request: Request, e: RunNotFound) -> Response:
        return _error_response(ApiError(404, str(e)), request)

    @app.exception_handler(AlreadyResumed)
    async def already_resumed(request: Request, e: AlreadyResumed) -> Response:
        return _error_response(ApiError(409, str(e), code="already_resumed"), request)

    @app.exception_handler(TetherError)
    async def tether_error(request: Request, e: TetherError) -> Response:
        return _error_response(ApiError(400, str(e)), request)

    @app.exception_handler(Exception)
    async def crash(request: Request, e: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error_response(ApiError(500, "The server had an error while processing your request. "
                                             "The request id in x-request-id identifies it in the server's log.",
                                        type="server_error"), request)

    def tenant(request: Request) -> str:
        return request.state.tenant  # type: ignore[no-any-return]

    def cursor(after: str | None, before: str | None, limit: int, order: str) -> dict[str, Any]:
        return {"after": after, "before": before, "limit": limit, "order": order}

    # -- assistants ---------------------------------------------------------------------------

    @app.post("/v1/assistants", tags=["assistants"])
    async def create_assistant(request: Request, body: schemas.AssistantCreate) -> dict[str, Any]:
        return await api.create_assistant(tenant(request), body)

    @app.get("/v1/assistants", tags=["assistants"])
    async def list_assistants(request: Request, after: str | None = None, before: str | None = None,
                              limit: Limit = 20, order: Order = "desc") -> dict[str, Any]:
        return await api.list_assistants(tenant(request), **cursor(after, before, limit, order))

    @app.get("/v1/assistants/{assistant_id}", tags=["assistants"])
    async def get_assistant(request: Request, assistant_id: str) -> dict[str, Any]:
        return await api.assistant(tenant(request), assistant_id)

    @app.post("/v1/assistants/{assistant_id}", tags=["assistants"])
    async def update_assistant(request: Request, assistant_id: str, body: schemas.AssistantUpdate) -> dict[str, Any]:
        return await api.update_assistant(tenant(request), assistant_id, body)

    @app.delete("/v1/assistants/{assistant_id}", tags=["assistants"])
    async def delete_assistant(request: Request, assistant_id: str) -> dict[str, Any]:
        return await api.delete_assistant(tenant(request), assistant_id)

    # -- threads ------------------------------------------------------------------------------

    @app.post("/v1/threads", tags=["threads"])
    async def create_thread(request: Request, body: Annotated[schemas.ThreadCreate | None, Body()] = None
                            ) -> dict[str, Any]:
        return await api.create_thread(tenant(request), body)

    # before /v1/threads/{thread_id}: that route would take POST /v1/threads/runs for a thread "runs"
    @app.post("/v1/threads/runs", tags=["runs"])
    async def create_thread_and_run(request: Request, body: schemas.ThreadAndRun) -> Any:
        thread, run_id = await api.create_thread_and_run(tenant(request), body)
        return await started(run_id, thread["id"], body.stream, request, [sse("thread.created", thread)])

    @app.get("/v1/threads/{thread_id}", tags=["threads"])
    async def get_thread(request: Request, thread_id: str) -> dict[str, Any]:
        return await api.thread(tenant(request), thread_id)

    @app.post("/v1/threads/{thread_id}", tags=["threads"])
    async def update_thread(request: Request, thread_id: str, body: schemas.ThreadUpdate) -> dict[str, Any]:
        return await api.update_thread(tenant(request), thread_id, body)

    @app.delete("/v1/threads/{thread_id}", tags=["threads"])
    async def delete_thread(request: Request, thread_id: str) -> dict[str, Any]:
        return await api.delete_thread(tenant(request), thread_id)

    # -- messages -----------------------------------------------------------------------------

    @app.post("/v1/threads/{thread_id}/messages", tags=["messages"])
    async def create_message(request: Request, thread_id: str, body: schemas.MessageCreate) -> dict[str, Any]:
        return await api.create_message(tenant(request), thread_id, body)

    @app.get("/v1/threads/{thread_id}/messages", tags=["messages"])
    async def list_messages(request: Request, thread_id: str, after: str | None = None, before: str | None = None,
                            limit: Limit = 20, order: Order = "desc", run_id: str | None = None) -> dict[str, Any]:
        return await api.list_messages(tenant(request), thread_id, run_id, **cursor(after, before, limit, order))

    @app.get("/v1/threads/{thread_id}/messages/{message_id}", tags=["messages"])
    async def get_message(request: Request, thread_id: str, message_id: str) -> dict[str, Any]:
        return await api.message(tenant(request), thread_id, message_id)

    @app.post("/v1/threads/{thread_id}/messages/{message_id}", tags=["messages"])
    async def update_message(request: Request, thread_id: str, message_id: str,
                             body: schemas.MetadataUpdate) -> dict[str, Any]:
        return await api.update_message(tenant(request), thread_id, message_id, body)

    @app.delete("/v1/threads/{thread_id}/messages/{message_id}", tags=["messages"])
    async def delete_message(request: Request, thread_id: str, message_id: str) -> dict[str, Any]:
        return await api.delete_message(tenant(request), thread_id, message_id)

    # -- runs ---------------------------------------------------------------------------------

    async def advance(log_: RunLog, stream: bool | None, prelude: Callable[[dict[str, Any]], list[str]]) -> Any:
        """Hand the run to the dispatcher; answer with the run, or with its event stream (`prelude(run)` first)."""
        if not stream:
            dispatcher.submit(log_.id)
            return await api.run_object(log_)
        # Subscribed before it starts: no event is missed
        subscription = services.events.subscribe(log_.id, after=log_.records[-1].seq)
        events = prelude(await api.run_object(log_))
        dispatcher.submit(log_.id)
        return run_stream(log_, subscription, events)

    async def started(run_id: str, thread_id: str, stream: bool | None, request: Request,
                      first: list[str]) -> Any:
        log_ = await api.run_log(tenant(request), thread_id, run_id)
        return await advance(log_, stream, lambda run: [*first, sse("thread.run.created", run),
                                                        sse("thread.run.queued", run)])

    def run_stream(log_: RunLog, subscription: Subscription, prelude: list[str]) -> StreamingResponse:
        stream = AssistantStream(log_, api.run_object)

        async def events() -> AsyncIterator[str]:
            try:
                for chunk in prelude:
                    yield chunk
                yield sse("thread.run.in_progress", log_.run())
                async for item in subscription.events(keepalive_s=config.keepalive_s, backlog=False):
                    if isinstance(item, Quiet):
                        yield KEEPALIVE
                    elif item.type == "delta" and item.delta:
                        for chunk in stream.on_delta(item.delta):
                            yield chunk
                    elif item.record is not None:
                        for chunk in await stream.on_record(item.record):
                            yield chunk
                    if stream.done:
                        break
                yield DONE
            except Exception as e:  # the stream broke: tell the client in the envelope, then end
                log.exception("the event stream of run %s failed", log_.id)
                yield sse("error", envelope(f"the event stream failed: {type(e).__name__}", "server_error"))
                yield DONE
            finally:
                subscription.close()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache", "x-accel-buffering": "no"})

    @app.post("/v1/threads/{thread_id}/runs", tags=["runs"])
    async def create_run(request: Request, thread_id: str, body: schemas.RunCreate,
                         include: Include = None) -> Any:
        _check_include(include)
        run_id = await api.prepare_run(tenant(request), thread_id, body, additional=body.additional_messages or [],
                                       additional_instructions=body.additional_instructions)
        return await started(run_id, thread_id, body.stream, request, [])

    @app.get("/v1/threads/{thread_id}/runs", tags=["runs"])
    async def list_runs(request: Request, thread_id: str, after: str | None = None, before: str | None = None,
                        limit: Limit = 20, order: Order = "desc") -> dict[str, Any]:
        return await api.list_runs(tenant(request), thread_id, **cursor(after, before, limit, order))

    @app.get("/v1/threads/{thread_id}/runs/{run_id}", tags=["runs"])
    async def get_run(request: Request, thread_id: str, run_id: str) -> dict[str, Any]:
        return await api.run_object(await api.run_log(tenant(request), thread_id, run_id))

    @app.post("/v1/threads/{thread_id}/runs/{run_id}", tags=["runs"])
    async def update_run(request: Request, thread_id: str, run_id: str, body: schemas.MetadataUpdate
                         ) -> dict[str, Any]:
        log_ = await api.run_log(tenant(request), thread_id, run_id)
        await api.update_run(log_, body)
        return await api.run_object(log_)

    @app.post("/v1/threads/{thread_id}/runs/{run_id}/cancel", tags=["runs"])
    async def cancel_run(request: Request, thread_id: str, run_id: str) -> dict[str, Any]:
        await api.cancel_run(await api.run_log(tenant(request), thread_id, run_id))
        return await api.run_object(await api.run_log(tenant(request), thread_id, run_id))

    @app.post("/v1/threads/{thread_id}/runs/{run_id}/submit_tool_outputs", tags=["runs"])
    async def submit_tool_outputs(request: Request, thread_id: str, run_id: str,
                                  body: schemas.SubmitToolOutputs) -> Any:
        t = tenant(request)
        before = await api.run_log(t, thread_id, run_id)
        tool_step = next((s["id"] for s in before.run_steps() if s["status"] == "in_progress"), None)
        await api.submit_tool_outputs(before, body)
        log_ = await api.run_log(t, thread_id, run_id)
        # A new stream: the tool step its client answered completes in it, whole (not as a delta).
        completed = [sse("thread.run.step.completed", s) for s in log_.run_steps() if s["id"] == tool_step]
        return await advance(log_, body.stream, lambda run: [sse("thread.run.queued", run), *completed])

    @app.get("/v1/threads/{thread_id}/runs/{run_id}/steps", tags=["runs"])
    async def list_steps(request: Request, thread_id: str, run_id: str, after: str | None = None,
                         before: str | None = None, limit: Limit = 20, order: Order = "desc",
                         include: Include = None) -> dict[str, Any]:
        _check_include(include)
        log_ = await api.run_log(tenant(request), thread_id, run_id)
        return await api.steps(log_, **cursor(after, before, limit, order))

    @app.get("/v1/threads/{thread_id}/runs/{run_id}/steps/{step_id}", tags=["runs"])
    async def get_step(request: Request, thread_id: str, run_id: str, step_id: str,
                       include: Include = None) -> dict[str, Any]:
        _check_include(include)
        return await api.step(await api.run_log(tenant(request), thread_id, run_id), step_id)

    # -- what Tether does not serve: a 400 that says so (not a 404 that suggests a wrong URL) ----

    for prefix, what in (("/v1/files", "Files"), ("/v1/vector_stores", "Vector stores")):
        for path in (prefix, prefix + "/{rest:path}"):
            app.add_api_route(path, _not_served(what), methods=["GET", "POST", "DELETE", "PUT", "PATCH"],
                              include_in_schema=False)

    add_debug_routes(app, api, services, keyless=not keys)
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


def _check_include(include: list[str] | None) -> None:
    for value in include or []:
        if value != "step_details.tool_calls[*].file_search.results[*].content":
            raise ApiError(400, f"Invalid value for 'include[]': {value!r} is not a known include", param="include[]")


def _not_served(what: str) -> Callable[[], Awaitable[None]]:
    async def not_served() -> None:
        raise ApiError(400, f"{what} are not supported by this server: Tether serves assistants, threads, "
                            "messages, runs and run steps (see docs/server.md).", code="unsupported")

    return not_served


def _bearer(header: bytes) -> bytes | None:
    """The token of an `Authorization: Bearer TOKEN` header, as the bytes sent (any bytes at all)."""
    scheme, _, token = header.strip().partition(b" ")
    return (token.strip() or None) if scheme.lower() == b"bearer" else None


def _key_of(token: bytes | None, digests: list[tuple[bytes, str]]) -> str | None:
    """The key `token` is. Every key is compared, in constant time, by their SHA-256 digests: how long
    it takes tells neither which key came close nor how long the keys are."""
    if token is None:
        return None
    digest = hashlib.sha256(token).digest()
    match = None
    for key_digest, key in digests:
        if hmac.compare_digest(digest, key_digest):
            match = key
    return match


def _auth_error(headers: int, token: bytes | None) -> ApiError:
    if headers > 1:  # proxies disagree on which of several counts: refuse them all
        return ApiError(401, "The request has more than one Authorization header. Send exactly one "
                             "(Authorization: Bearer YOUR_KEY).", code="invalid_api_key")
    if not token:
        return ApiError(401, "You didn't provide an API key. You need to provide your API key in an Authorization "
                             "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
    # A hint of which key was sent, as OpenAI gives, only if it is plain text (never control bytes)
    printable = all(0x21 <= b <= 0x7E for b in token)
    shown = token[:3].decode() + "*" * 4 + token[-2:].decode() if printable and len(token) > 8 else "****"
    return ApiError(401, f"Incorrect API key provided: {shown}. The server's keys are set with TETHER_API_KEYS.",
                    code="invalid_api_key")


def _error_response(e: ApiError, request: Request) -> JSONResponse:
    headers = {}
    if request.method == "POST" or e.status in (409, 429) or e.status >= 500:
        headers["x-should-retry"] = "false"  # a retried POST could create a second run
    return JSONResponse(e.body(), status_code=e.status, headers=headers)
