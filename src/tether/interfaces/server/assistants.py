"""The Assistants API's face over `AssistantsService`: request bodies in, wire objects out.

The behaviour (documents, runs of threads, pagination) is in `services.assistants.service`; this
turns the HTTP bodies (`schemas`) into the service's typed inputs and its typed values into the
JSON the SDK reads (`wire`). The debug API and the SSE streams use it too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tether.domain.errors import NotFound
from tether.interfaces.server import schemas, wire
from tether.interfaces.server.wire import RunLog
from tether.services.assistants.service import AssistantsService, NewMessage
from tether.services.compose import Services
from tether.services.pages import Cursor, Page


@dataclass(slots=True)
class ServerConfig:
    """The HTTP face's own settings (what runs may do is the operator's, in `Services`)."""

    api_keys: list[str] = field(default_factory=list)
    concurrency: int = 16
    poll_after_ms: int = 200
    keepalive_s: float = 10.0
    allowed_hosts: list[str] = field(default_factory=list)  # Host names served besides loopback ("*": any)


def tenant_of(api_key: str | None) -> str:
    """A tenant id for an API key (its hash: the key itself is never stored)."""
    if api_key is None:
        return "local"
    return "k_" + hashlib.sha256(api_key.encode()).hexdigest()[:24]


def new_message(m: schemas.MessageCreate) -> NewMessage:
    """A message of a request, in the service's terms (its content in the stored shape)."""
    content = (wire.text_content(m.content) if isinstance(m.content, str) else [_stored_part(p) for p in m.content])
    return NewMessage(m.role, content, dict(m.metadata or {}))


def _stored_part(p: schemas.ContentPart) -> dict[str, Any]:
    if p.type == "text":
        return {"type": "text", "text": {"value": p.text, "annotations": []}}
    assert p.image_url is not None
    return {"type": "image_url", "image_url": {"url": p.image_url.url, "detail": p.image_url.detail or "auto"}}


class AssistantsApi:
    def __init__(self, services: Services, config: ServerConfig) -> None:
        self.service, self.config = services.runs, config
        # Handing out runs as wire-ready `RunLog`s; the agents and grants are the composition root's.
        self.assistants: AssistantsService[RunLog] = AssistantsService(services.runs, services.api_agents, RunLog)

    # -- assistants ----------------------------------------------------------------------------

    async def create_assistant(self, tenant: str, body: schemas.AssistantCreate) -> dict[str, Any]:
        return wire.assistant(await self.assistants.create_assistant(tenant, body.given()))

    async def assistant(self, tenant: str, assistant_id: str) -> dict[str, Any]:
        return wire.assistant(await self.assistants.assistant(tenant, assistant_id))

    async def update_assistant(self, tenant: str, assistant_id: str, body: schemas.AssistantUpdate) -> dict[str, Any]:
        return wire.assistant(await self.assistants.update_assistant(tenant, assistant_id, body.given()))

    async def list_assistants(self, tenant: str, **cursor: Any) -> dict[str, Any]:
        return wire.listing(await self.assistants.list_assistants(tenant, Cursor(**cursor)), wire.assistant)

    async def delete_assistant(self, tenant: str, assistant_id: str) -> dict[str, Any]:
        await self.assistants.delete_assistant(tenant, assistant_id)
        return wire.deleted(assistant_id, "assistant")

    # -- threads -------------------------------------------------------------------------------

    async def create_thread(self, tenant: str, body: schemas.ThreadCreate | None) -> dict[str, Any]:
        given = body.given() if body is not None else {}
        messages = [new_message(m) for m in (body.messages or [])] if body is not None else []
        return wire.thread(await self.assistants.create_thread(tenant, given, messages))

    async def thread(self, tenant: str, thread_id: str) -> dict[str, Any]:
        return wire.thread(await self.assistants.thread(tenant, thread_id))

    async def update_thread(self, tenant: str, thread_id: str, body: schemas.ThreadUpdate) -> dict[str, Any]:
        return wire.thread(await self.assistants.update_thread(tenant, thread_id, body.given()))

    async def delete_thread(self, tenant: str, thread_id: str) -> dict[str, Any]:
        await self.assistants.delete_thread(tenant, thread_id)
        return wire.deleted(thread_id, "thread")

    # -- messages ------------------------------------------------------------------------------

    async def create_message(self, tenant: str, thread_id: str, body: schemas.MessageCreate) -> dict[str, Any]:
        return wire.message(await self.assistants.create_message(tenant, thread_id, new_message(body)))

    async def message(self, tenant: str, thread_id: str, message_id: str) -> dict[str, Any]:
        return wire.message(await self.assistants.message(tenant, thread_id, message_id))

    async def update_message(self, tenant: str, thread_id: str, message_id: str,
                             body: schemas.MetadataUpdate) -> dict[str, Any]:
        return wire.message(await self.assistants.update_message(tenant, thread_id, message_id, body.metadata))

    async def delete_message(self, tenant: str, thread_id: str, message_id: str) -> dict[str, Any]:
        await self.assistants.delete_message(tenant, thread_id, message_id)
        return wire.deleted(message_id, "thread.message")

    async def list_messages(self, tenant: str, thread_id: str, run_id: str | None, **cursor: Any) -> dict[str, Any]:
        page = await self.assistants.list_messages(tenant, thread_id, Cursor(**cursor), run_id)
        return wire.listing(page, wire.message)

    # -- runs ----------------------------------------------------------------------------------

    async def run_log(self, tenant: str, thread_id: str, run_id: str) -> RunLog:
        return await self.assistants.run(tenant, thread_id, run_id)

    async def run_object(self, log: RunLog) -> dict[str, Any]:
        flags = await self.assistants.flags(log)
        return log.run(queued=flags.queued, cancelling=flags.cancelling)

    async def prepare_run(self, tenant: str, thread_id: str, body: schemas.RunFields, *,
                          additional: Sequence[schemas.MessageCreate] = (), additional_instructions: str | None = None,
                          ) -> RunLog:
        """Create a run on the thread, queued: the dispatcher advances it."""
        given = body.given()
        return await self.assistants.prepare_run(tenant, thread_id, given["assistant_id"], given,
                                                 additional=[new_message(m) for m in additional],
                                                 additional_instructions=additional_instructions)

    async def create_thread_and_run(self, tenant: str, body: schemas.ThreadAndRun) -> tuple[dict[str, Any], RunLog]:
        given = body.given()
        thread_body = body.thread
        messages = [new_message(m) for m in (thread_body.messages or [])] if thread_body is not None else []
        thread, run = await self.assistants.create_thread_and_run(
            tenant, body.assistant_id, given, thread_body.given() if thread_body is not None else None, messages)
        return wire.thread(thread), run

    async def update_run(self, log: RunLog, body: schemas.MetadataUpdate) -> None:
        await self.assistants.update_run(log, body.metadata)

    async def list_runs(self, tenant: str, thread_id: str, **cursor: Any) -> dict[str, Any]:
        page = await self.assistants.list_runs(tenant, thread_id, Cursor(**cursor))
        return wire.listing(Page([await self.run_object(log) for log in page.data], page.has_more), lambda run: run)

    async def submit_tool_outputs(self, log: RunLog, body: schemas.SubmitToolOutputs) -> None:
        outputs = [(o.tool_call_id, o.output) for o in body.tool_outputs]
        await self.assistants.submit_tool_outputs(log, outputs)

    async def cancel_run(self, log: RunLog) -> None:
        await self.assistants.cancel_run(log)

    async def steps(self, log: RunLog, **cursor: Any) -> dict[str, Any]:
        return wire.page(log.run_steps(), Cursor(**cursor))

    async def step(self, log: RunLog, step_id: str) -> dict[str, Any]:
        for s in log.run_steps():
            if s["id"] == step_id:
                return s
        raise NotFound("run step", step_id)
