"""What every route module shares: the tenant of a request, the Assistants face and the services
of the app, and the list parameters (cursor, `include[]`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Query, Request

from tether.interfaces.server.assistants import AssistantsApi
from tether.interfaces.server.errors import ApiError
from tether.services.compose import Services

Order = Annotated[Literal["asc", "desc"], Query()]
Limit = Annotated[int, Query(ge=1, le=100)]
Include = Annotated[list[str] | None, Query(alias="include[]")]


def tenant(request: Request) -> str:
    """The tenant the request acts for (set by the key middleware)."""
    return request.state.tenant  # type: ignore[no-any-return]


def face(request: Request) -> AssistantsApi:
    return request.app.state.api  # type: ignore[no-any-return]


def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def cursor(after: str | None, before: str | None, limit: int, order: str) -> dict[str, Any]:
    return {"after": after, "before": before, "limit": limit, "order": order}


def check_include(include: list[str] | None) -> None:
    for value in include or []:
        if value != "step_details.tool_calls[*].file_search.results[*].content":
            raise ApiError(400, f"Invalid value for 'include[]': {value!r} is not a known include", param="include[]")
