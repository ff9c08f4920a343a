"""The Assistants API's behaviour over the runs service: assistants, threads, messages, runs.

Routes (`routes.py`) parse HTTP and call this; the debug API and the SSE streams use it too.
Every object a client sees is read from the store: runs, their steps and the assistant messages
from the run log (`wire.RunLog`), everything else from the objects table.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from tether.adapters.models.refs import ModelBackend
from tether.domain.errors import AlreadyResumed, StoreConflict, TetherError
from tether.domain.ids import new_id
from tether.domain.messages import ContentPart, ImagePart, Message, TextPart
from tether.domain.objects import StoredObject
from tether.domain.protocols import ObjectStore
from tether.domain.records import ACTIVE, RunStarted
from tether.domain.state import fold
from tether.interfaces.server import schemas, wire
from tether.interfaces.server.errors import ApiError, bad_request, not_found
from tether.interfaces.server.wire import RunLog
from tether.services.assistants import AGENT_REF_PREFIX, ApiAgents, api_agent_resolver
from tether.services.runs import RunsService
from tether.services.server_tools import ServerTools

FINISHED_CACHE = 2000


@dataclass(slots=True)
class ServerConfig:
    api_keys: list[str] = field(default_factory=list)
    allow_file_models: bool = False
    concurrency: int = 16
    poll_after_ms: int = 200
    keepalive_s: float = 10.0
    tools: ServerTools = field(default_factory=ServerTools)  # the operator's server-side tools and MCP servers
    models: ModelBackend | None = None  # where bare model names go (None: OPENAI_BASE_URL / OPENAI_API_KEY)
    allowed_hosts: list[str] = field(default_factory=list)  # Host names served besides loopback ("*": any)


def tenant_of(api_key: str | None) -> str:
    """A tenant id for an API key (its hash: the key itself is never stored)."""
    if api_key is None:
        return "local"
    return "k_" + hashlib.sha256(api_key.encode()).hexdigest()[:24]


def page(items: list[dict[str, Any]], *, after: str | None, before: str | None, limit: int,
         order: str) -> dict[str, Any]:
    """OpenAI's list envelope over `items` (oldest first), with cursor pagination by id.

    `after`/`before` are compared as ids (which sort by creation time), so a cursor whose object
    was deleted meanwhile still works.
    """
    asc = order == "asc"
    seq = items if asc else items[::-1]
    if after:
        seq = [i for i in seq if (i["id"] > after if asc else i["id"] < after)]
    if before:
        seq = [i for i in seq if (i["id"] < before if asc else i["id"] > before)]
        data = seq[-limit:]  # the ones closest to the cursor, still in the list's order
        has_more = len(seq) > limit
    else:
        data = seq[:limit]
        has_more = len(seq) > limit
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": has_more}


class AssistantsApi:
    def __init__(self, service: RunsService, config: ServerConfig) -> None:
        self.service, self.config = service, config
        # The run store keeps the documents too (SqlStore and MemoryStore are both).
        self.store = cast(ObjectStore, service.store)
        self.agents = ApiAgents(config.tools, config.models, config.allow_file_models)
        service.resolvers[AGENT_REF_PREFIX] = api_agent_resolver(self.store, config.tools, config.models,
                                                                 config.allow_file_models)
        self._finished: OrderedDict[str, RunLog] = OrderedDict()  # terminal runs never change: kept, the
        # most recently used FINISHED_CACHE of them

    # -- objects of a tenant -------------------------------------------------------------------

    async def _get(self, tenant: str, kind: str, object_id: str, label: str | None = None) -> StoredObject:
        obj = await self.store.get_object(object_id)
        if obj is None or obj.kind != kind or obj.tenant != tenant or obj.data.get("override"):
            raise not_found(label or kind, object_id)
        return obj

    # -- assistants ----------------------------------------------------------------------------

    async def create_assistant(self, tenant: str, body: schemas.AssistantCreate) -> dict[str, Any]:
        data: dict[str, Any] = {
                "name": None, "description": None, "instructions": None, "tools": [], "tool_resources": {},
                "metadata": {}, "temperature": 1.0, "top_p": 1.0, "response_format": "auto",
                "reasoning_effort": None, "tether_tools": [], "tether_breakpoints": []}
        data.update({k: v for k, v in body.given().items() if v is not None})
        self._check_settings(data)
        obj = StoredObject(new_id("asst"), "assistant", tenant, wire.now(), data)
        await self.store.put_object(obj)
        return wire.plain_object(obj, "assistant")

    async def assistant(self, tenant: str, assistant_id: str) -> dict[str, Any]:
        return wire.plain_object(await self._get(tenant, "assistant", assistant_id), "assistant")

    async def update_assistant(self, tenant: str, assistant_id: str, body: schemas.AssistantUpdate) -> dict[str, Any]:
        obj = await self._get(tenant, "assistant", assistant_id)
        given = body.given()
        if "model" in given and given["model"] is None:
            raise bad_request("Invalid value for 'model': an assistant needs a model.", "model")
        defaults = {"tools": [], "metadata": {}, "tool_resources": {}, "tether_tools": [], "tether_breakpoints": [],
                    "response_format": "auto", "temperature": 1.0, "top_p": 1.0}
        for key, value in given.items():
            obj.data[key] = defaults.get(key) if value is None else value
        self._check_settings(obj.data)
        await self.store.put_object(obj)
        return wire.plain_object(obj, "assistant")

    async def list_assistants(self, tenant: str, **cursor: Any) -> dict[str, Any]:
        objs = await self.store.list_objects("assistant", tenant)
        return page([wire.plain_object(o, "assistant") for o in objs], **cursor)

    async def delete_assistant(self, tenant: str, assistant_id: str) -> dict[str, Any]:
        await self._get(tenant, "assistant", assistant_id)
        await self.store.delete_object(assistant_id)
        return wire.deleted(assistant_id, "assistant")

    def _check_settings(self, data: dict[str, Any]) -> None:
        """Fail now, not when a run starts: the model reference, the tools, the breakpoints."""
        self.agents.check(data)

    # -- threads -------------------------------------------------------------------------------

    async def create_thread(self, tenant: str, body: schemas.ThreadCreate | None) -> dict[str, Any]:
        given = body.given() if body is not None else {}
        data = {"metadata": given.get("metadata") or {}, "tool_resources": given.get("tool_resources") or {}}
        obj = StoredObject(new_id("thread"), "thread", tenant, wire.now(), data)
        await self.store.put_object(obj)
        for m in (body.messages or []) if body is not None else []:
            await self._put_message(tenant, obj.id, m)
        return wire.plain_object(obj, "thread")

    async def thread(self, tenant: str, thread_id: str) -> dict[str, Any]:
        return wire.plain_object(await self._get(tenant, "thread", thread_id), "thread")

    async def update_thread(self, tenant: str, thread_id: str, body: schemas.ThreadUpdate) -> dict[str, Any]:
        obj = await self._get(tenant, "thread", thread_id)
        for key, value in body.given().items():
            obj.data[key] = value or {}
        await self.store.put_object(obj)
        return wire.plain_object(obj, "thread")

    async def delete_thread(self, tenant: str, thread_id: str) -> dict[str, Any]:
        await self._get(tenant, "thread", thread_id)
        if (active := await self._active_run(thread_id)) is not None:
            raise bad_request(f"Can't delete thread {thread_id} while a run {active} is active.")
        await self.store.delete_object(thread_id)
        return wire.deleted(thread_id, "thread")

    async def _active_run(self, thread_id: str) -> str | None:
        latest = await self.service.list(thread_id=thread_id, limit=1)
        return latest[0].id if latest and latest[0].status in ACTIVE else None

    # -- messages ------------------------------------------------------------------------------

    async def _put_message(self, tenant: str, thread_id: str, m: schemas.MessageCreate, *,
                           message_id: str | None = None) -> StoredObject:
        content = ([{"type": "text", "text": {"value": m.content, "annotations": []}}] if isinstance(m.content, str)
                   else [_stored_part(p) for p in m.content])
        now = wire.now()
        obj = StoredObject(message_id or new_id("msg"), "message", tenant, now, {
            "role": m.role, "content": content, "assistant_id": None, "run_id": None, "attachments": [],
            "metadata": m.metadata or {}, "status": "completed", "completed_at": int(now),
            "incomplete_at": None, "incomplete_details": None,
        }, parent_id=thread_id)  # fmt: skip
        await self.store.put_object(obj)
        return obj

    async def create_message(self, tenant: str, thread_id: str, body: schemas.MessageCreate) -> dict[str, Any]:
        await self._get(tenant, "thread", thread_id)
        if (active := await self._active_run(thread_id)) is not None:
            raise bad_request(f"Can't add messages to {thread_id} while a run {active} is active.")
        return wire.stored_message(await self._put_message(tenant, thread_id, body))

    async def thread_messages(self, tenant: str, thread_id: str) -> list[dict[str, Any]]:
        """Every message of the thread, oldest first: stored ones and those the runs wrote."""
        stored = await self.store.list_objects("message", tenant, thread_id)
        overrides = {o.id: o.data for o in stored if o.data.get("override")}
        out = [wire.stored_message(o) for o in stored if not o.data.get("override")]
        for log in await self._thread_runs(tenant, thread_id):
            for m in log.messages():
                change = overrides.get(m["id"])
                if change is not None and change.get("deleted"):
                    continue
                if change is not None:
                    m["metadata"] = change.get("metadata") or {}
                out.append(m)
        out.sort(key=lambda m: m["id"])
        return out

    async def message(self, tenant: str, thread_id: str, message_id: str) -> dict[str, Any]:
        await self._get(tenant, "thread", thread_id)
        for m in await self.thread_messages(tenant, thread_id):
            if m["id"] == message_id:
                return m
        raise not_found("message", message_id)

    async def update_message(self, tenant: str, thread_id: str, message_id: str,
                             body: schemas.MetadataUpdate) -> dict[str, Any]:
        m = await self.message(tenant, thread_id, message_id)
        m["metadata"] = body.metadata or {}
        await self._change_message(tenant, thread_id, m, {"metadata": m["metadata"]})
        return m

    async def delete_message(self, tenant: str, thread_id: str, message_id: str) -> dict[str, Any]:
        m = await self.message(tenant, thread_id, message_id)
        await self._change_message(tenant, thread_id, m, {"deleted": True}, delete=True)
        return wire.deleted(message_id, "thread.message")

    async def _change_message(self, tenant: str, thread_id: str, m: dict[str, Any], change: dict[str, Any],
                              *, delete: bool = False) -> None:
        stored = await self.store.get_object(m["id"])
        if stored is not None and not stored.data.get("override"):  # a message a client wrote
            if delete:
                await self.store.delete_object(m["id"])
            else:
                stored.data.update(change)
                await self.store.put_object(stored)
            return
        # A message a run wrote lives in the run log; its changes are kept beside it.
        data = {"override": True, "metadata": m["metadata"], **(stored.data if stored else {}), **change}
        await self.store.put_object(StoredObject(m["id"], "message", tenant, wire.now(), data, thread_id))

    async def list_messages(self, tenant: str, thread_id: str, run_id: str | None, **cursor: Any) -> dict[str, Any]:
        await self._get(tenant, "thread", thread_id)
        messages = await self.thread_messages(tenant, thread_id)
        if run_id is not None:
            messages = [m for m in messages if m.get("run_id") == run_id]
        return page(messages, **cursor)

    # -- runs ----------------------------------------------------------------------------------

    async def _thread_runs(self, tenant: str, thread_id: str) -> list[RunLog]:
        rows = await self.store.list_objects("run", tenant, thread_id)
        return [await self._log(row) for row in rows]

    async def _log(self, row: StoredObject) -> RunLog:
        cached = self._finished.get(row.id)
        if cached is not None:
            self._finished.move_to_end(row.id)
            cached.row = row  # its metadata may have changed
            return cached
        records = await self.service.store.load(row.id)
        if not records:
            raise not_found("run", row.id)
        log = RunLog(row, records, fold(row.id, records))
        if log.finished() is not None:
            self._finished[row.id] = log
            if len(self._finished) > FINISHED_CACHE:
                self._finished.popitem(last=False)
        return log

    async def run_log(self, tenant: str, thread_id: str, run_id: str) -> RunLog:
        await self._get(tenant, "thread", thread_id)
        row = await self._get(tenant, "run", run_id)
        if row.parent_id != thread_id:
            raise not_found("run", run_id)
        return await self._log(row)

    async def run_object(self, log: RunLog) -> dict[str, Any]:
        info = await self.service.store.get_run(log.id)
        # Queued until a worker takes it: one here, or another process holding a live lease on it.
        advanced_elsewhere = (info is not None and info.lease_owner not in (None, self.service.owner)
                              and (info.lease_expires or 0) > wire.now())
        queued = (info is not None and info.status == "queued" and not self.service.advancing(log.id)
                  and not advanced_elsewhere)
        cancelling = (log.finished() is None and info is not None and info.status in ACTIVE
                      and await self.service.store.cancel_requested(log.id) is not None)
        return log.run(queued=queued, cancelling=cancelling)

    async def prepare_run(self, tenant: str, thread_id: str, body: schemas.RunFields, *,
                          additional: Sequence[schemas.MessageCreate] = (), additional_instructions: str | None = None,
                          ) -> str:
        """Create a run on the thread, queued: the scheduler advances it. Returns its id."""
        assistant = await self._get(tenant, "assistant", body.assistant_id)  # type: ignore[attr-defined]
        if (active := await self._active_run(thread_id)) is not None:
            raise ApiError(400, f"Thread {thread_id} already has an active run {active}.")
        given = body.given()
        given.pop("stream", None)
        a = assistant.data
        settings: dict[str, Any] = {
            "assistant_id": assistant.id, "model": a["model"], "instructions": a.get("instructions") or "",
            "tools": a.get("tools") or [], "tether_tools": a.get("tether_tools") or [],
            "tether_breakpoints": list(a.get("tether_breakpoints") or []),
            "tool_choice": "auto", "parallel_tool_calls": True,
            "response_format": a.get("response_format") or "auto", "temperature": a.get("temperature"),
            "top_p": a.get("top_p"), "reasoning_effort": a.get("reasoning_effort"),
            "max_prompt_tokens": None, "max_completion_tokens": None,
            "truncation_strategy": {"type": "auto", "last_messages": None}, "metadata": {},
        }  # fmt: skip
        for key, value in given.items():
            if key == "tether_breakpoints":
                settings[key] += value or []
            elif value is not None:
                settings[key] = value
        if additional_instructions:
            settings["instructions"] = f"{settings['instructions']}\n\n{additional_instructions}".strip()
        run_id = new_id("run")
        agent = self.agents.build(run_id, settings)

        history = [_to_message(m) for m in await self.thread_messages(tenant, thread_id)]
        ids = [new_id("msg") for _ in additional]  # minted now: they sort before the run's answers
        history += [_to_message({"role": m.role, "content": _input_content(m)}) for m in additional]
        keep = (settings["truncation_strategy"] or {}).get("last_messages")
        if settings["truncation_strategy"].get("type") == "last_messages" and keep:
            history = history[-keep:]

        row = StoredObject(run_id, "run", tenant, wire.now(), settings, thread_id)
        await self.store.put_object(row)
        try:
            await self.service.start(agent, [], thread_id=thread_id, history=history, run_id=run_id, drive=False,
                                     breakpoints=settings["tether_breakpoints"], metadata={"api": "assistants"})
        except StoreConflict:
            await self.store.delete_object(run_id)
            active = await self._active_run(thread_id)
            raise ApiError(400, f"Thread {thread_id} already has an active run {active}.") from None
        except BaseException:
            await self.store.delete_object(run_id)
            raise
        for message_id, m in zip(ids, additional, strict=True):
            await self._put_message(tenant, thread_id, m, message_id=message_id)
        return run_id

    async def update_run(self, log: RunLog, body: schemas.MetadataUpdate) -> None:
        log.row.data["metadata"] = body.metadata or {}
        await self.store.put_object(log.row)

    async def list_runs(self, tenant: str, thread_id: str, **cursor: Any) -> dict[str, Any]:
        await self._get(tenant, "thread", thread_id)
        return page([await self.run_object(log) for log in await self._thread_runs(tenant, thread_id)], **cursor)

    async def submit_tool_outputs(self, log: RunLog, body: schemas.SubmitToolOutputs) -> None:
        pause = log.state.pause
        if log.finished() is not None or pause is None or not log.waits_for_client():
            status = (await self.run_object(log))["status"]
            raise bad_request(f'Runs in status "{status}" do not accept tool outputs.')
        expected = [c["id"] for c in log.pending_calls()]
        given = [o.tool_call_id for o in body.tool_outputs]
        if sorted(given) != sorted(expected) or len(set(given)) != len(given):
            missing = sorted(set(expected) - set(given))
            raise bad_request(f"Expected tool outputs for call_ids {expected}, got {given}"
                              + (f" (missing {missing})" if missing else "") + ".", "tool_outputs")
        answers = {o.tool_call_id: ("supply", o.output or "") for o in body.tool_outputs}
        try:
            await self.service.decide(log.id, pause.pause_id, answers, by="client", drive=False)  # type: ignore[arg-type]
        except AlreadyResumed as e:
            raise bad_request(f"Tool outputs were already submitted for run {log.id}: {e}") from None

    async def cancel_run(self, log: RunLog) -> None:
        if log.finished() is not None:
            status = log.run()["status"]
            raise bad_request(f"Cannot cancel run with status '{status}'.")
        await self.service.store.request_cancel(log.id, "cancelled by the client")
        with contextlib.suppress(TetherError):  # it finished meanwhile, or its owner acts on the request
            await self.service.cancel(log.id, by="client", wait=False)

    async def steps(self, log: RunLog, **cursor: Any) -> dict[str, Any]:
        return page(log.run_steps(), **cursor)

    async def step(self, log: RunLog, step_id: str) -> dict[str, Any]:
        for s in log.run_steps():
            if s["id"] == step_id:
                return s
        raise not_found("run step", step_id)

    async def fork(self, tenant: str, run_id: str, step: int, edits: dict[str, Any] | None) -> Any:
        """Fork a run (see RunsService.fork). The fork of an API run gets a new thread that holds the
        conversation the run started from, so the Assistants API shows it whole."""
        parent = await self.store.get_object(run_id)
        records = await self.service.store.load(run_id)
        start = records[0].payload if records else None
        inputs = [m for m in start.input if m.role in ("user", "assistant") and m.text] \
            if isinstance(start, RunStarted) else []
        ids = [new_id("msg") for _ in inputs]  # minted before the fork: they sort before its answers
        view = await self.service.fork(run_id, step, edits, drive=False)
        if parent is None or parent.kind != "run" or view.thread_id is None:
            return view
        now = wire.now()
        await self.store.put_object(StoredObject(view.thread_id, "thread", tenant, now, {
            "metadata": {"forked_from": f"{parent.parent_id}/{run_id}@{step}"}, "tool_resources": {}}))
        for message_id, m in zip(ids, inputs, strict=True):
            await self._put_message(tenant, view.thread_id, schemas.MessageCreate(role=m.role, content=m.text),  # type: ignore[arg-type]
                                    message_id=message_id)
        await self.store.put_object(StoredObject(view.id, "run", tenant, now, dict(parent.data), view.thread_id))
        return view


def _stored_part(p: schemas.ContentPart) -> dict[str, Any]:
    if p.type == "text":
        return {"type": "text", "text": {"value": p.text, "annotations": []}}
    assert p.image_url is not None
    return {"type": "image_url", "image_url": {"url": p.image_url.url, "detail": p.image_url.detail or "auto"}}


def _input_content(m: schemas.MessageCreate) -> list[dict[str, Any]]:
    return ([{"type": "text", "text": {"value": m.content, "annotations": []}}] if isinstance(m.content, str)
            else [_stored_part(p) for p in m.content])


def _to_message(m: dict[str, Any]) -> Message:
    """A thread message (API shape) as a message the model is sent."""
    parts: list[ContentPart] = []
    for p in m["content"]:
        if p["type"] == "text":
            parts.append(TextPart(p["text"]["value"]))
        elif p["type"] == "image_url":
            parts.append(ImagePart(p["image_url"]["url"], p["image_url"].get("detail") or "auto"))
    return Message(m["role"], parts)
