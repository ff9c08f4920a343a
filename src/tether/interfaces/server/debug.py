"""Tether's debug API over HTTP: a run's pause and steps, breakpoints, answers, forks, and an SSE
stream of its records that any process can join and resume with `Last-Event-ID`.

The same runs service as the debugger in the terminal; every answer names the pause it answers,
so of two racing clients one wins and the other gets 409 `already_resumed`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from tether.domain.breakpoints import BreakpointError
from tether.domain.codec import dump_payload
from tether.domain.errors import NotFound
from tether.domain.records import TERMINAL, Record, RunStatus
from tether.domain.steps import steps_of
from tether.interfaces.server import schemas
from tether.interfaces.server.assistants import AssistantsApi
from tether.interfaces.server.errors import ApiError
from tether.interfaces.server.streaming import KEEPALIVE, sse
from tether.services.compose import Services
from tether.services.events import Quiet


def add_debug_routes(app: FastAPI, api: AssistantsApi, services: Services, *, keyless: bool) -> None:
    service, config, dispatcher = api.service, api.config, services.dispatcher

    def tenant(request: Request) -> str:
        return request.state.tenant  # type: ignore[no-any-return]

    async def debug_run(request: Request, run_id: str) -> str:
        """The run, if this tenant may debug it (its own API runs; on a keyless loopback server, any)."""
        if await api.assistants.is_tenant_run(tenant(request), run_id):
            return run_id
        if keyless and await service.info(run_id) is not None:
            return run_id
        raise NotFound("run", run_id)

    async def debug_view(run_id: str) -> dict[str, Any]:
        view = await service.get(run_id)
        bps = await service.breakpoints(run_id)
        return {
            "id": view.id, "object": "tether.run", "status": view.status, "thread_id": view.thread_id,
            "pause_id": view.pause_id, "pending": [_plain(i) for i in view.pending],
            "steps": [_plain(s) for s in steps_of(view.records)],
            "breakpoints": [{"id": b.id, "spec": b.spec(), "once": b.once, "hits": b.hits} for b in bps],
            "usage": {"input_tokens": view.usage.input_tokens, "output_tokens": view.usage.output_tokens},
            "cost_usd": view.cost_usd, "output": view.output, "error": view.error,
            "fork_warnings": view.fork_warnings,
        }  # fmt: skip

    @app.get("/v1/tether/assistants/{assistant_id}/breakpoints", tags=["debug"])
    async def assistant_breakpoints(request: Request, assistant_id: str) -> dict[str, Any]:
        a = await api.assistant(tenant(request), assistant_id)
        return {"object": "list", "data": [{"id": f"bp_{i}", "spec": spec}
                                           for i, spec in enumerate(a["tether_breakpoints"], 1)]}

    @app.post("/v1/tether/assistants/{assistant_id}/breakpoints", tags=["debug"])
    async def assistant_add_breakpoint(request: Request, assistant_id: str,
                                       body: schemas.BreakpointCreate) -> dict[str, Any]:
        """A breakpoint for the assistant's next runs (a run's own are set on the run)."""
        a = await api.assistant(tenant(request), assistant_id)
        specs = [*a["tether_breakpoints"], body.spec]
        await api.update_assistant(tenant(request), assistant_id,
                                   schemas.AssistantUpdate(tether_breakpoints=specs))
        return {"id": f"bp_{len(specs)}", "spec": body.spec}

    @app.delete("/v1/tether/assistants/{assistant_id}/breakpoints", tags=["debug"])
    async def assistant_clear_breakpoints(request: Request, assistant_id: str) -> dict[str, Any]:
        await api.update_assistant(tenant(request), assistant_id, schemas.AssistantUpdate(tether_breakpoints=[]))
        return {"object": "list", "data": []}

    @app.get("/v1/tether/runs/{run_id}", tags=["debug"])
    async def debug_get(request: Request, run_id: str) -> dict[str, Any]:
        return await debug_view(await debug_run(request, run_id))

    @app.get("/v1/tether/runs/{run_id}/breakpoints", tags=["debug"])
    async def debug_breakpoints(request: Request, run_id: str) -> dict[str, Any]:
        return {"object": "list", "data": (await debug_view(await debug_run(request, run_id)))["breakpoints"]}

    @app.post("/v1/tether/runs/{run_id}/breakpoints", tags=["debug"])
    async def debug_add_breakpoint(request: Request, run_id: str, body: schemas.BreakpointCreate) -> dict[str, Any]:
        await debug_run(request, run_id)
        try:
            bp, warnings = await service.add_breakpoint(run_id, body.spec, once=body.once)
        except BreakpointError as e:
            raise ApiError(400, f"Invalid value for 'spec': {e}", param="spec") from None
        return {"id": bp.id, "spec": bp.spec(), "once": bp.once, "hits": 0, "warnings": warnings}

    @app.delete("/v1/tether/runs/{run_id}/breakpoints/{breakpoint_id}", tags=["debug"])
    async def debug_clear_breakpoint(request: Request, run_id: str, breakpoint_id: str) -> dict[str, Any]:
        await debug_run(request, run_id)
        await service.remove_breakpoint(run_id, breakpoint_id)
        return {"id": breakpoint_id, "object": "tether.breakpoint.deleted", "deleted": True}

    @app.post("/v1/tether/runs/{run_id}/answer", tags=["debug"])
    async def debug_answer(request: Request, run_id: str, body: schemas.Answer) -> dict[str, Any]:
        await debug_run(request, run_id)
        given = {item_id: (a.action, a.payload) for item_id, a in (body.answers or {}).items()}
        # The service checks the pause id, the items and each answer (InvalidRequest names the field).
        await service.answer(run_id, given, default=body.action, value=body.payload, pause_id=body.pause_id,
                             by="http", drive=False)
        dispatcher.submit(run_id)
        return await debug_view(run_id)

    @app.post("/v1/tether/runs/{run_id}/fork", tags=["debug"])
    async def debug_fork(request: Request, run_id: str, body: schemas.Fork) -> dict[str, Any]:
        await debug_run(request, run_id)
        # The fork of an API run gets a new thread of its own (the Assistants service listens to forks)
        view = await service.fork(run_id, body.step, body.edits, drive=False)
        if view.status not in TERMINAL and view.status != RunStatus.PAUSED:
            dispatcher.submit(view.id)
        return await debug_view(view.id)

    @app.get("/v1/tether/runs/{run_id}/events", tags=["debug"])
    async def debug_events(request: Request, run_id: str, after: int | None = None) -> StreamingResponse:
        """The run's records as SSE (`id:` = seq), then live ones; `Last-Event-ID` (or `after`) resumes."""
        await debug_run(request, run_id)
        last = request.headers.get("last-event-id")
        start = int(last) if last and last.isdigit() else (after or 0)
        subscription = services.events.subscribe(run_id, after=start)

        async def ended(seen: int) -> bool:
            """The run is over and its last record (the `finished` one) is at or before `seen`: a stream
            resumed there would get no record ever again, so it ends instead of keeping alive for ever."""
            info = await service.info(run_id)
            return info is not None and info.status in TERMINAL and seen >= info.last_seq

        async def events() -> AsyncIterator[str]:
            async with subscription:  # the backlog from the log, then live records (each once, in order)
                if await ended(start):  # read after subscribing: a run finishing meanwhile is streamed
                    yield END
                    return
                async for item in subscription.events(keepalive_s=config.keepalive_s):
                    if isinstance(item, Quiet):
                        if await ended(subscription.seen):  # joined running past what turned out its end
                            yield END
                            return
                        yield KEEPALIVE
                    elif item.type == "delta":
                        yield sse("delta", {"text": item.delta})
                    elif item.record is not None:
                        yield _record_event(item.record)
                        if item.record.kind == "finished":
                            yield END
                            return

        return StreamingResponse(events(), media_type="text/event-stream", headers={"cache-control": "no-cache"})


END = "event: end\ndata: {}\n\n"  # after a run's last record: nothing more will come


def _record_event(r: Record) -> str:
    payload = json.loads(dump_payload(r.payload))
    data = {"run_id": r.run_id, "seq": r.seq, "ts": r.ts, "kind": r.kind, "payload": payload}
    return sse("record", data, str(r.seq))


def _plain(obj: Any) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(obj), default=str))  # type: ignore[no-any-return]


