"""/v1/assistants: create, list, retrieve, modify, delete."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from tether.interfaces.server import schemas
from tether.interfaces.server.routes.common import Limit, Order, cursor, face, tenant

router = APIRouter()


@router.post("/v1/assistants", tags=["assistants"])
async def create_assistant(request: Request, body: schemas.AssistantCreate) -> dict[str, Any]:
    return await face(request).create_assistant(tenant(request), body)


@router.get("/v1/assistants", tags=["assistants"])
async def list_assistants(request: Request, after: str | None = None, before: str | None = None,
                          limit: Limit = 20, order: Order = "desc") -> dict[str, Any]:
    return await face(request).list_assistants(tenant(request), **cursor(after, before, limit, order))


@router.get("/v1/assistants/{assistant_id}", tags=["assistants"])
async def get_assistant(request: Request, assistant_id: str) -> dict[str, Any]:
    return await face(request).assistant(tenant(request), assistant_id)


@router.post("/v1/assistants/{assistant_id}", tags=["assistants"])
async def update_assistant(request: Request, assistant_id: str, body: schemas.AssistantUpdate) -> dict[str, Any]:
    return await face(request).update_assistant(tenant(request), assistant_id, body)


@router.delete("/v1/assistants/{assistant_id}", tags=["assistants"])
async def delete_assistant(request: Request, assistant_id: str) -> dict[str, Any]:
    return await face(request).delete_assistant(tenant(request), assistant_id)
