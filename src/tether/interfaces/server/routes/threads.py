"""/v1/threads: create (also with a run: /v1/threads/runs), retrieve, modify, delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request

from tether.interfaces.server import schemas
from tether.interfaces.server.routes.common import face, tenant
from tether.interfaces.server.routes.runs import started
from tether.interfaces.server.streaming import sse

router = APIRouter()


@router.post("/v1/threads", tags=["threads"])
async def create_thread(request: Request, body: Annotated[schemas.ThreadCreate | None, Body()] = None
                        ) -> dict[str, Any]:
    return await face(request).create_thread(tenant(request), body)


# before /v1/threads/{thread_id}: that route would take POST /v1/threads/runs for a thread "runs"
@router.post("/v1/threads/runs", tags=["runs"])
async def create_thread_and_run(request: Request, body: schemas.ThreadAndRun) -> Any:
    thread, log_ = await face(request).create_thread_and_run(tenant(request), body)
    return await started(log_, body.stream, request, [sse("thread.created", thread)])


@router.get("/v1/threads/{thread_id}", tags=["threads"])
async def get_thread(request: Request, thread_id: str) -> dict[str, Any]:
    return await face(request).thread(tenant(request), thread_id)


@router.post("/v1/threads/{thread_id}", tags=["threads"])
async def update_thread(request: Request, thread_id: str, body: schemas.ThreadUpdate) -> dict[str, Any]:
    return await face(request).update_thread(tenant(request), thread_id, body)


@router.delete("/v1/threads/{thread_id}", tags=["threads"])
async def delete_thread(request: Request, thread_id: str) -> dict[str, Any]:
    return await face(request).delete_thread(tenant(request), thread_id)
