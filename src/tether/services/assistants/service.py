"""The Assistants API's behaviour over the runs service: assistants, threads, messages and the runs
of threads, for every interface (the HTTP server today).

Documents live in the objects table (the run store keeps them too), typed by
`assistant_documents`; a run's settings are stored with it (the `run` row) and its agent is rebuilt
from them (`assistants.ApiAgents`). Everything a client sees of a run is read from its log
(`thread_runs.ThreadRun`). Every method takes the tenant the caller acts for and answers
`NotFound` for another tenant's objects.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

from pydantic import BaseModel, ValidationError

from tether.domain.errors import AlreadyFinished, AlreadyResumed, InvalidRequest, NotFound, StoreConflict
from tether.domain.ids import new_id
from tether.domain.messages import ContentPart, ImagePart, Message, TextPart
from tether.domain.objects import StoredObject
from tether.domain.protocols import ObjectStore
from tether.domain.records import ACTIVE, Action, Record, RunStarted
from tether.domain.state import RunState, fold
from tether.services.agents import Agent
from tether.services.assistants.agents import AGENT_REF_PREFIX, BATCH_AGENT, ApiAgents, api_agent_resolver
from tether.services.assistants.documents import (
    Assistant,
    AssistantSettings,
    MessageFields,
    RunSettings,
    Thread,
    ThreadFields,
)
from tether.services.assistants.thread_messages import OVERRIDE, PROJECTION, ThreadMessages
from tether.services.assistants.thread_runs import ThreadMessage, ThreadRun, text_content
from tether.services.pages import Cursor, Page, paged
from tether.services.runs import RunsService
from tether.services.views import RunView

FINISHED_CACHE = 2000  # finished runs kept in memory (they never change): the most recently used
RunT = TypeVar("RunT", bound=ThreadRun)
M = TypeVar("M", bound=BaseModel)


@dataclass(slots=True)
class NewMessage:
    """A message a client adds to a thread: its content parts in the stored shape."""

    role: str
    content: list[dict[str, Any]]
    metadata: dict[str, str] = field(default_factory=dict)

    @classmethod
    def text(cls, role: str, text: str) -> NewMessage:
        return cls(role, text_content(text))


@dataclass(frozen=True, slots=True)
class RunFlags:
    """What a run's object shows besides its log: `queued` (no worker has taken it yet) and
    `cancelling` (a cancel was asked for and the run has not ended)."""

    queued: bool = False
    cancelling: bool = False


def _validated(model: type[M], data: Mapping[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        param = "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in first["loc"]).lstrip(".") or None
        raise InvalidRequest(f"Invalid value for '{param}': {first['msg']}.", param) from None


class AssistantsService(Generic[RunT]):
    """`make_run` builds the object each run of a thread is handed out as (a `ThreadRun`, or an
    interface's subclass of it that also builds its wire objects)."""

    def __init__(self, runs: RunsService, agents: ApiAgents,
                 make_run: Callable[[StoredObject, list[Record], RunState], RunT]) -> None:
        self.runs, self.agents, self.make_run = runs, agents, make_run
        self.objects = cast(ObjectStore, runs.store)  # the run store keeps the documents too
        self.messages = ThreadMessages(self.objects, self._load)
        self._finished: OrderedDict[str, RunT] = OrderedDict()

    def register(self) -> None:
        """Let every face of the runs service continue (resolver) and fork (listener) the runs this
        service made. The composition root does it once, whichever instances a face makes."""
        self.runs.resolvers[AGENT_REF_PREFIX] = api_agent_resolver(self.objects, self.agents)
        self.runs.fork_listeners[AGENT_REF_PREFIX] = self.forking

    async def _row(self, tenant: str, kind: str, object_id: str, label: str | None = None) -> StoredObject:
        obj = await self.objects.get_object(object_id)
        if obj is None or obj.kind != kind or obj.tenant != tenant or obj.data.get("override"):
            raise NotFound(label or kind, object_id)
        return obj

    # -- assistants ------------------------------------------------------------------------------

    async def create_assistant(self, tenant: str, given: Mapping[str, Any]) -> Assistant:
        settings = _validated(AssistantSettings, {k: v for k, v in given.items() if v is not None})
        self.agents.check(RunSettings.of_assistant(None, settings))
        a = Assistant(new_id("asst"), _now(), settings)
        await self.objects.put_object(StoredObject(a.id, "assistant", tenant, a.created_at, settings.stored()))
        return a

    async def assistant(self, tenant: str, assistant_id: str) -> Assistant:
        row = await self._row(tenant, "assistant", assistant_id)
        return Assistant(row.id, row.created_at, _validated(AssistantSettings, row.data))

    async def update_assistant(self, tenant: str, assistant_id: str, given: Mapping[str, Any]) -> Assistant:
        """`given`: the fields to change; an explicit None sets a field back to its default."""
        a = await self.assistant(tenant, assistant_id)
        if "model" in given and given["model"] is None:
            raise InvalidRequest("Invalid value for 'model': an assistant needs a model.", "model")
        defaults = AssistantSettings.model_fields
        data = a.settings.stored()
        for key, value in given.items():
            if key not in defaults:
                raise InvalidRequest(f"Unrecognized request argument supplied: {key}", key)
            data[key] = defaults[key].get_default(call_default_factory=True) if value is None else value
        a.settings = _validated(AssistantSettings, data)
        self.agents.check(RunSettings.of_assistant(None, a.settings))
        await self.objects.put_object(StoredObject(a.id, "assistant", tenant, a.created_at, a.settings.stored()))
        return a

    async def list_assistants(self, tenant: str, cursor: Cursor) -> Page[Assistant]:
        rows = await self.objects.list_objects("assistant", tenant, after=cursor.after, before=cursor.before,
                                               limit=cursor.limit + 1, order=cursor.order)
        items = sorted((Assistant(r.id, r.created_at, _validated(AssistantSettings, r.data)) for r in rows),
                       key=lambda a: a.id)
        return paged(items, cursor, lambda a: a.id)

    async def delete_assistant(self, tenant: str, assistant_id: str) -> None:
        await self._row(tenant, "assistant", assistant_id)
        await self.objects.delete_object(assistant_id)

    # -- threads ---------------------------------------------------------------------------------

    async def create_thread(self, tenant: str, given: Mapping[str, Any] | None = None,
                            messages: Sequence[NewMessage] = ()) -> Thread:
        given = given or {}
        fields = ThreadFields(metadata=given.get("metadata") or {}, tool_resources=given.get("tool_resources") or {})
        t = Thread(new_id("thread"), _now(), fields)
        await self.objects.put_object(StoredObject(t.id, "thread", tenant, t.created_at, fields.stored()))
        for m in messages:
            await self._put_message(tenant, t.id, m)
        return t

    async def thread(self, tenant: str, thread_id: str) -> Thread:
        row = await self._row(tenant, "thread", thread_id)
        return Thread(row.id, row.created_at, _validated(ThreadFields, row.data))

    async def update_thread(self, tenant: str, thread_id: str, given: Mapping[str, Any]) -> Thread:
        t = await self.thread(tenant, thread_id)
        t.fields = _validated(ThreadFields, {**t.fields.stored(), **{k: v or {} for k, v in given.items()}})
        await self.objects.put_object(StoredObject(t.id, "thread", tenant, t.created_at, t.fields.stored()))
        return t

    async def delete_thread(self, tenant: str, thread_id: str) -> None:
        await self._row(tenant, "thread", thread_id)
        if (active := await self.active_run(thread_id)) is not None:
            raise InvalidRequest(f"Can't delete thread {thread_id} while a run {active} is active.")
        await self.objects.delete_object(thread_id)
        # Its messages go with it: those clients wrote, the projected answers of its runs, their changes
        # and the projection's mark. Its runs stay (their logs, and the settings a face rebuilds them from).
        await self.objects.delete_children(thread_id, ["message", OVERRIDE, PROJECTION])

    async def active_run(self, thread_id: str) -> str | None:
        latest = await self.runs.list(thread_id=thread_id, limit=1)
        return latest[0].id if latest and latest[0].status in ACTIVE else None

    # -- messages --------------------------------------------------------------------------------

    async def _put_message(self, tenant: str, thread_id: str, m: NewMessage, *,
                           message_id: str | None = None) -> ThreadMessage:
        now = _now()
        fields = _validated(MessageFields, {"role": m.role, "content": m.content, "metadata": m.metadata,
                                            "completed_at": int(now)})
        message = ThreadMessage(message_id or new_id("msg"), now, thread_id, fields)
        await self.objects.put_object(message.row(tenant))
        return message

    async def create_message(self, tenant: str, thread_id: str, m: NewMessage) -> ThreadMessage:
        await self._row(tenant, "thread", thread_id)
        if (active := await self.active_run(thread_id)) is not None:
            raise InvalidRequest(f"Can't add messages to {thread_id} while a run {active} is active.")
        return await self._put_message(tenant, thread_id, m)

    async def list_messages(self, tenant: str, thread_id: str, cursor: Cursor, run_id: str | None = None
                            ) -> Page[ThreadMessage]:
        await self._row(tenant, "thread", thread_id)
        return await self.messages.page(tenant, thread_id, cursor, run_id)

    async def message(self, tenant: str, thread_id: str, message_id: str) -> ThreadMessage:
        await self._row(tenant, "thread", thread_id)
        return await self.messages.get(tenant, thread_id, message_id)

    async def update_message(self, tenant: str, thread_id: str, message_id: str, metadata: dict[str, str] | None
                             ) -> ThreadMessage:
        await self._row(tenant, "thread", thread_id)
        return await self.messages.set_metadata(tenant, thread_id, message_id, metadata or {})

    async def delete_message(self, tenant: str, thread_id: str, message_id: str) -> None:
        await self._row(tenant, "thread", thread_id)
        await self.messages.delete(tenant, thread_id, message_id)

    # -- runs of threads -------------------------------------------------------------------------

    async def _load(self, row: StoredObject) -> RunT | None:
        cached = self._finished.get(row.id)
        if cached is not None:
            self._finished.move_to_end(row.id)
            cached.set_row(row)  # its metadata may have changed
            return cached
        records = await self.runs.store.load(row.id)
        if not records:
            return None
        run = self.make_run(row, records, fold(row.id, records))
        if run.finished() is not None:
            self._finished[row.id] = run
            if len(self._finished) > FINISHED_CACHE:
                self._finished.popitem(last=False)
        return run

    async def run(self, tenant: str, thread_id: str, run_id: str) -> RunT:
        await self._row(tenant, "thread", thread_id)
        row = await self._row(tenant, "run", run_id)
        run = await self._load(row) if row.parent_id == thread_id else None
        if run is None:
            raise NotFound("run", run_id)
        return run

    async def flags(self, run: ThreadRun) -> RunFlags:
        if run.finished() is not None:
            return RunFlags()  # a finished run shows how it ended, whatever else is known of it
        state = await self.runs.queue_state(run.id)
        return RunFlags(queued=state.queued, cancelling=state.cancel_requested)

    async def list_runs(self, tenant: str, thread_id: str, cursor: Cursor) -> Page[RunT]:
        await self._row(tenant, "thread", thread_id)
        rows = await self.objects.list_objects("run", tenant, thread_id, after=cursor.after, before=cursor.before,
                                               limit=cursor.limit + 1, order=cursor.order)
        page = paged(sorted(rows, key=lambda r: r.id), cursor, lambda r: r.id)
        runs = [await self._load(r) for r in page.data]
        return Page([r for r in runs if r is not None], page.has_more)

    async def prepare_run(self, tenant: str, thread_id: str, assistant_id: str, given: Mapping[str, Any], *,
                          additional: Sequence[NewMessage] = (), additional_instructions: str | None = None,
                          ) -> RunT:
        """Create a run on the thread, queued (a dispatcher advances it). `given`: the run's own
        settings (a None is "the assistant's")."""
        assistant = await self.assistant(tenant, assistant_id)
        await self._row(tenant, "thread", thread_id)
        if (active := await self.active_run(thread_id)) is not None:
            raise InvalidRequest(f"Thread {thread_id} already has an active run {active}.")
        data = RunSettings.of_assistant(assistant.id, assistant.settings).stored()
        for key, value in given.items():
            if key == "tether_breakpoints":
                data[key] += value or []
            elif value is not None and key in RunSettings.model_fields:
                data[key] = value
        settings = _validated(RunSettings, data)
        if additional_instructions:
            settings.instructions = f"{settings.instructions}\n\n{additional_instructions}".strip()
        run_id = new_id("run")
        agent = self.agents.build(run_id, settings)

        history = [_to_message(m.fields.content, m.fields.role) for m in await self.messages.all(tenant, thread_id)]
        ids = [new_id("msg") for _ in additional]  # minted now: they sort before the run's answers
        history += [_to_message(m.content, m.role) for m in additional]
        keep = settings.truncation_strategy.last_messages
        if settings.truncation_strategy.type == "last_messages" and keep:
            history = history[-keep:]

        row = StoredObject(run_id, "run", tenant, _now(), settings.stored(), thread_id)
        await self.objects.put_object(row)
        try:
            view = await self.runs.start(agent, [], thread_id=thread_id, history=history, run_id=run_id,
                                         drive=False, breakpoints=settings.tether_breakpoints,
                                         metadata={"api": "assistants"})
        except StoreConflict:
            await self.objects.delete_object(run_id)
            active = await self.active_run(thread_id)
            raise InvalidRequest(f"Thread {thread_id} already has an active run {active}.") from None
        except BaseException:
            await self.objects.delete_object(run_id)
            raise
        for message_id, m in zip(ids, additional, strict=True):
            await self._put_message(tenant, thread_id, m, message_id=message_id)
        return self.make_run(row, list(view.records), fold(run_id, view.records))

    async def create_thread_and_run(self, tenant: str, assistant_id: str, given: Mapping[str, Any],
                                    thread: Mapping[str, Any] | None, messages: Sequence[NewMessage]
                                    ) -> tuple[Thread, RunT]:
        await self.assistant(tenant, assistant_id)  # unknown: refused before a thread is made
        t = await self.create_thread(tenant, thread, messages)
        try:
            return t, await self.prepare_run(tenant, t.id, assistant_id, given)
        except BaseException:
            await self.objects.delete_object(t.id)
            raise

    async def update_run(self, run: ThreadRun, metadata: dict[str, str] | None) -> None:
        run.settings.metadata = metadata or {}
        run.row.data = run.settings.stored()
        await self.objects.put_object(run.row)

    async def submit_tool_outputs(self, run: ThreadRun, outputs: Sequence[tuple[str, str | None]]) -> None:
        """Answer the client tool calls the run waits for (`outputs`: (call id, output), as given)."""
        pause = run.state.pause
        if run.finished() is not None or pause is None or not run.waits_for_client():
            flags = await self.flags(run)
            status = run.status(queued=flags.queued, cancelling=flags.cancelling)
            raise InvalidRequest(f'Runs in status "{status}" do not accept tool outputs.')
        expected = [i.call_id for i in run.client_calls()]
        given = [call_id for call_id, _ in outputs]
        if sorted(given) != sorted(expected) or len(set(given)) != len(given):  # type: ignore[type-var]
            missing = sorted({e for e in expected if e is not None} - set(given))
            raise InvalidRequest(f"Expected tool outputs for call_ids {expected}, got {given}"
                                 + (f" (missing {missing})" if missing else "") + ".", "tool_outputs")
        answers: dict[str, tuple[Action, Any]] = {call_id: ("supply", output or "") for call_id, output in outputs}
        try:
            await self.runs.decide(run.id, pause.pause_id, answers, by="client", drive=False)
        except AlreadyResumed as e:
            raise InvalidRequest(f"Tool outputs were already submitted for run {run.id}: {e}") from None

    async def cancel_run(self, run: ThreadRun) -> None:
        """Cancel the run (see RunsService.cancel); the client sees "cancelling" until it has ended."""
        if run.finished() is not None:
            raise InvalidRequest(f"Cannot cancel run with status '{run.status()}'.")
        with contextlib.suppress(AlreadyFinished):  # it ended meanwhile: its object says how
            await self.runs.cancel(run.id, by="client", wait=False)

    # -- batches ---------------------------------------------------------------------------------

    async def batch_agent(self, tenant: str, given: Mapping[str, Any]) -> Agent:
        """The agent of a batch made over HTTP, configured as an assistant is (model, instructions,
        server tools, response format, sampling) under the operator's grants. Its settings are stored
        (`api:bagent_…`), so any process can rebuild it to resume the batch. Function tools are refused:
        a batch has no client to run them. InvalidRequest names the field."""
        settings = _validated(RunSettings, given)
        for i, t in enumerate(settings.tools):
            if t.type == "function":
                raise InvalidRequest(f"Invalid value for 'tools[{i}]': a batch cannot use function tools (no client "
                                     "runs them); use tether_tools, which the server runs.", f"tools[{i}]")
        agent_id = new_id("bagent")
        agent = self.agents.build_batch(agent_id, settings)
        await self.objects.put_object(StoredObject(agent_id, BATCH_AGENT, tenant, _now(), settings.stored()))
        return agent

    async def own_batch_agent(self, agent: Agent, batch_id: str) -> None:
        """File a batch agent's settings under the batch made with it, so that they go with it
        (`forget_batch`)."""
        row = await self.objects.get_object((agent.ref or "").partition(":")[2])
        if row is not None and row.kind == BATCH_AGENT:
            row.parent_id = batch_id
            await self.objects.put_object(row)

    async def forget_batch(self, batch_id: str) -> None:
        """Delete what this service keeps for a deleted batch (its agent's settings, if made over HTTP)."""
        await self.objects.delete_children(batch_id, [BATCH_AGENT])

    # -- forks -----------------------------------------------------------------------------------

    async def forking(self, run_id: str, step: int, records: Sequence[Record]
                      ) -> Callable[[RunView], Awaitable[None]] | None:
        """A fork listener (RunsService.fork_listeners), so a fork from any face does this: the fork of
        an API run gets a new thread of the parent's tenant holding the conversation the run started
        from, and the parent's settings, so the Assistants API shows it whole."""
        parent = await self.objects.get_object(run_id)
        if parent is None or parent.kind != "run":
            return None
        start = records[0].payload if records else None  # the parent's log, as the fork read it
        inputs = [m for m in start.input if m.role in ("user", "assistant") and m.text] \
            if isinstance(start, RunStarted) else []
        ids = [new_id("msg") for _ in inputs]  # minted before the fork exists: they sort before its answers

        async def documents(view: RunView) -> None:
            if view.thread_id is None:
                return
            now, tenant = _now(), parent.tenant
            fields = ThreadFields(metadata={"forked_from": f"{parent.parent_id}/{run_id}@{step}"})
            await self.objects.put_object(StoredObject(view.thread_id, "thread", tenant, now, fields.stored()))
            for message_id, m in zip(ids, inputs, strict=True):
                await self._put_message(tenant, view.thread_id, NewMessage.text(m.role, m.text),
                                        message_id=message_id)
            await self.objects.put_object(StoredObject(view.id, "run", tenant, now, dict(parent.data),
                                                       view.thread_id))

        return documents

    async def is_tenant_run(self, tenant: str, run_id: str) -> bool:
        """Whether `run_id` is an API run of this tenant's."""
        row = await self.objects.get_object(run_id)
        return row is not None and row.kind == "run" and row.tenant == tenant


def _to_message(content: list[dict[str, Any]], role: str) -> Message:
    """A thread message's content (stored shape) as a message the model is sent."""
    parts: list[ContentPart] = []
    for p in content:
        if p["type"] == "text":
            parts.append(TextPart(p["text"]["value"]))
        elif p["type"] == "image_url":
            parts.append(ImagePart(p["image_url"]["url"], p["image_url"].get("detail") or "auto"))
    return Message(role, parts)  # type: ignore[arg-type]


def _now() -> float:
    return time.time()
