"""/v1/threads/{thread_id}/runs: create (queued, or streamed), list, retrieve, modify, cancel,
submit_tool_outputs, and the run steps. A run is handed to the dispatcher, which advances it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from tether.interfaces.server import schemas
from tether.interfaces.server.assistants import AssistantsApi
from tether.interfaces.server.errors import envelope
from tether.interfaces.server.routes.common import (
    Include,
    Limit,
    Order,
    check_include,
    cursor,
    face,
    services,
    tenant,
)
from tether.interfaces.server.streaming import DONE, KEEPALIVE, AssistantStream, sse
from tether.interfaces.server.wire import RunLog
from tether.services.events import Quiet, Subscription

log = logging.getLogger("tether.server")

router = APIRouter()


async def advance(request: Request, log_: RunLog, stream: bool | None,
                  prelude: Callable[[dict[str, Any]], list[str]]) -> Any:
    """Hand the run to the dispatcher; answer with the run, or with its event stream (`prelude(run)` first)."""
    api, services_ = face(request), services(request)
    if not stream:
        services_.dispatcher.submit(log_.id)
        return await api.run_object(log_)
    # Subscribed before it starts: no event is missed
    subscription = services_.events.subscribe(log_.id, after=log_.records[-1].seq)
    events = prelude(await api.run_object(log_))
    services_.dispatcher.submit(log_.id)
    return run_stream(api, log_, subscription, events)


async def started(log_: RunLog, stream: bool | None, request: Request, first: list[str]) -> Any:
    """A run just made: queued, or its stream (`first` events, then the run's own)."""
    return await advance(request, log_, stream, lambda run: [*first, sse("thread.run.created", run),
                                                             sse("thread.run.queued", run)])


def run_stream(api: AssistantsApi, log_: RunLog, subscription: Subscription, prelude: list[str]) -> StreamingResponse:
    config = api.config
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


@router.post("/v1/threads/{thread_id}/runs", tags=["runs"])
async def create_run(request: Request, thread_id: str, body: schemas.RunCreate,
                     include: Include = None) -> Any:
    check_include(include)
    log_ = await face(request).prepare_run(tenant(request), thread_id, body,
                                           additional=body.additional_messages or [],
                                           additional_instructions=body.additional_instructions)
    return await started(log_, body.stream, request, [])


@router.get("/v1/threads/{thread_id}/runs", tags=["runs"])
async def list_runs(request: Request, thread_id: str, after: str | None = None, before: str | None = None,
                    limit: Limit = 20, order: Order = "desc") -> dict[str, Any]:
    return await face(request).list_runs(tenant(request), thread_id, **cursor(after, before, limit, order))


@router.get("/v1/threads/{thread_id}/runs/{run_id}", tags=["runs"])
async def get_run(request: Request, thread_id: str, run_id: str) -> dict[str, Any]:
    api = face(request)
    return await api.run_object(await api.run_log(tenant(request), thread_id, run_id))


@router.post("/v1/threads/{thread_id}/runs/{run_id}", tags=["runs"])
async def update_run(request: Request, thread_id: str, run_id: str, body: schemas.MetadataUpdate
                     ) -> dict[str, Any]:
    api = face(request)
    log_ = await api.run_log(tenant(request), thread_id, run_id)
    await api.update_run(log_, body)
    return await api.run_object(log_)


@router.post("/v1/threads/{thread_id}/runs/{run_id}/cancel", tags=["runs"])
async def cancel_run(request: Request, thread_id: str, run_id: str) -> dict[str, Any]:
    api = face(request)
    await api.cancel_run(await api.run_log(tenant(request), thread_id, run_id))
    return await api.run_object(await api.run_log(tenant(request), thread_id, run_id))


@router.post("/v1/threads/{thread_id}/runs/{run_id}/submit_tool_outputs", tags=["runs"])
async def submit_tool_outputs(request: Request, thread_id: str, run_id: str,
                              body: schemas.SubmitToolOutputs) -> Any:
    api, t = face(request), tenant(request)
    before = await api.run_log(t, thread_id, run_id)
    tool_step = next((s["id"] for s in before.run_steps() if s["status"] == "in_progress"), None)
    await api.submit_tool_outputs(before, body)
    log_ = await api.run_log(t, thread_id, run_id)
    # A new stream: the tool step its client answered completes in it, whole (not as a delta).
    completed = [sse("thread.run.step.completed", s) for s in log_.run_steps() if s["id"] == tool_step]
    return await advance(request, log_, body.stream, lambda run: [sse("thread.run.queued", run), *completed])


@router.get("/v1/threads/{thread_id}/runs/{run_id}/steps", tags=["runs"])
async def list_steps(request: Request, thread_id: str, run_id: str, after: str | None = None,
                     before: str | None = None, limit: Limit = 20, order: Order = "desc",
                     include: Include = None) -> dict[str, Any]:
    check_include(include)
    api = face(request)
    log_ = await api.run_log(tenant(request), thread_id, run_id)
    return await api.steps(log_, **cursor(after, before, limit, order))


@router.get("/v1/threads/{thread_id}/runs/{run_id}/steps/{step_id}", tags=["runs"])
async def get_step(request: Request, thread_id: str, run_id: str, step_id: str,
                   include: Include = None) -> dict[str, Any]:
    check_include(include)
    api = face(request)
    return await api.step(await api.run_log(tenant(request), thread_id, run_id), step_id)
