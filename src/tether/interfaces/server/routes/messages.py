"""/v1/threads/{thread_id}/messages: create, list, retrieve, modify, delete."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from tether.interfaces.server import schemas
from tether.interfaces.server.routes.common import Limit, Order, cursor, face, tenant

router = APIRouter()


@router.post("/v1/threads/{thread_id}/messages", tags=["messages"])
async def create_message(request: Request, thread_id: str, body: schemas.MessageCreate) -> dict[str, Any]:
    return await face(request).create_message(tenant(request), thread_id, body)


@router.get("/v1/threads/{thread_id}/messages", tags=["messages"])
async def list_messages(request: Request, thread_id: str, after: str | None = None, before: str | None = None,
                        limit: Limit = 20, order: Order = "desc", run_id: str | None = None) -> dict[str, Any]:
    return await face(request).list_messages(tenant(request), thread_id, run_id, **cursor(after, before, limit, order))


@router.get("/v1/threads/{thread_id}/messages/{message_id}", tags=["messages"])
async def get_message(request: Request, thread_id: str, message_id: str) -> dict[str, Any]:
    return await face(request).message(tenant(request), thread_id, message_id)


@router.post("/v1/threads/{thread_id}/messages/{message_id}", tags=["messages"])
async def update_message(request: Request, thread_id: str, message_id: str,
                         body: schemas.MetadataUpdate) -> dict[str, Any]:
    return await face(request).update_message(tenant(request), thread_id, message_id, body)


@router.delete("/v1/threads/{thread_id}/messages/{message_id}", tags=["messages"])
async def delete_message(request: Request, thread_id: str, message_id: str) -> dict[str, Any]:
    return await face(request).delete_message(tenant(request), thread_id, message_id)
