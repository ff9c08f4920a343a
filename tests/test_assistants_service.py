"""The Assistants behaviour as a service, without HTTP: the agent of an API run, documents, the
messages of a thread (projected, paged in SQL), runs of threads, cancel."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import pytest

from tether.adapters.models.refs import ModelBackend
from tether.adapters.models.scripted import reply
from tether.adapters.store.memory import MemoryStore
from tether.adapters.store.sql import SqlStore
from tether.domain.agents import AgentSnapshot
from tether.domain.errors import AlreadyFinished, ConfigError, InvalidRequest, NotFound
from tether.domain.objects import StoredObject
from tether.domain.protocols import ObjectStore
from tether.domain.records import Record
from tether.services.assistants.agents import ApiAgents, api_agent_resolver
from tether.services.assistants.documents import AssistantSettings, RunSettings
from tether.services.assistants.service import AssistantsService, NewMessage
from tether.services.assistants.thread_messages import ThreadMessages
from tether.services.assistants.thread_runs import ThreadMessage, ThreadRun
from tether.services.pages import Cursor, Page
from tether.services.runs import RunsService
from tether.services.server_tools import ServerTools

BACKEND = ModelBackend("http://127.0.0.1:9/v1", "sk-test")  # never called: agents are only built
SETTINGS = {"assistant_id": "asst_1", "model": "qwen2.5:7b", "instructions": "Be brief.",
            "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
            "tether_tools": [{"type": "calculator"}], "tether_breakpoints": ["before_tool:weather"],
            "temperature": 0.5, "top_p": None, "tool_choice": {"type": "function", "function": {"name": "weather"}},
            "response_format": {"type": "json_object"}, "max_prompt_tokens": 100, "max_completion_tokens": None}


def snapshot_of(run_id: str) -> AgentSnapshot:
    return AgentSnapshot(name="asst_1", model="qwen2.5:7b", instructions="", agent_ref=f"api:{run_id}")


def test_the_resolver_rebuilds_an_api_run_agent_from_its_stored_settings() -> None:
    store = MemoryStore()
    asyncio.run(store.put_object(StoredObject("run_1", "run", "local", 1.0, SETTINGS, "thread_1")))
    resolve = api_agent_resolver(store, ApiAgents(ServerTools(), BACKEND))
    agent = asyncio.run(resolve(snapshot_of("run_1")))
    assert agent.ref == "api:run_1" and agent.name == "asst_1" and agent.instructions == "Be brief."
    assert sorted(agent.tools) == ["calculator", "weather"]
    assert agent.settings == {"temperature": 0.5, "parallel_tool_calls": True,
                              "response_format": {"type": "json_object"},
                              "tool_choice": {"type": "function", "function": {"name": "weather"}}}
    assert agent.limits.max_steps == 50 and agent.limits.max_prompt_tokens == 100


def test_the_resolver_refuses_a_run_without_stored_settings() -> None:
    resolve = api_agent_resolver(MemoryStore(), ApiAgents(ServerTools(), BACKEND))
    with pytest.raises(ConfigError, match="run run_x has no stored settings"):
        asyncio.run(resolve(snapshot_of("run_x")))


@pytest.mark.parametrize(("change", "param", "message"), [
    ({"model": "replay:/etc/passwd"}, "model", "Invalid value for 'model'"),
    ({"tether_tools": [{"type": "calculator", "server": "x"}]}, "tether_tools[0].server", "only an mcp tool"),
    ({"tether_tools": [{"type": "nope"}]}, "tether_tools[0]", "no server-side tool 'nope'"),
    ({"tether_breakpoints": ["before_lunch"]}, "tether_breakpoints", "Invalid value for 'tether_breakpoints'"),
    ({"tools": [{"type": "function", "function": {"name": "calculator"}}]}, "tools", "Two tools have the same name"),
])
def test_bad_settings_are_domain_errors_naming_the_field(change: dict, param: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message) as e:
        ApiAgents(ServerTools(), BACKEND).check(RunSettings.model_validate({**SETTINGS, **change}))
    assert e.value.param == param


# -- documents and thread messages, over a store ----------------------------------------------------

TENANT = "k_tenant"
MODEL = "scripted:test_assistants_service:echo"


def echo(request: Any) -> Any:
    """The model: answers with the last user message's text."""
    return reply(f"echo {[m.text for m in request.messages if m.role == 'user'][-1]}")


class CountingStore(MemoryStore):
    """A MemoryStore that counts the run logs read."""

    def __init__(self) -> None:
        super().__init__()
        self.loads: list[str] = []

    async def load(self, run_id: str, after: int = 0) -> list[Record]:
        self.loads.append(run_id)
        return await super().load(run_id, after)


def service(store: MemoryStore | SqlStore | None = None) -> AssistantsService[ThreadRun]:
    runs = RunsService(store or CountingStore())
    svc = AssistantsService(runs, ApiAgents(ServerTools(), BACKEND, allow_file_models=True), ThreadRun)
    svc.register()
    return svc


async def new_thread(svc: AssistantsService[ThreadRun], turns: int) -> tuple[str, str]:
    """A thread with `turns` user messages, each answered by a run; (assistant id, thread id)."""
    a = await svc.create_assistant(TENANT, {"model": MODEL})
    t = await svc.create_thread(TENANT)
    for i in range(turns):
        await ask(svc, a.id, t.id, f"q{i}")
    return a.id, t.id


async def ask(svc: AssistantsService[ThreadRun], assistant_id: str, thread_id: str, text: str) -> ThreadRun:
    await svc.create_message(TENANT, thread_id, NewMessage.text("user", text))
    run = await svc.prepare_run(TENANT, thread_id, assistant_id, {})
    await svc.runs.resume(run.id)
    return await svc.run(TENANT, thread_id, run.id)


def texts(page: Page[ThreadMessage]) -> list[str]:
    return [m.fields.content[0]["text"]["value"] for m in page.data]


def test_pages_of_a_thread_read_no_finished_run_log_once_projected() -> None:
    async def main() -> None:
        store = CountingStore()
        svc = service(store)
        _, thread_id = await new_thread(svc, 30)
        first = await svc.list_messages(TENANT, thread_id, Cursor(limit=4))
        assert texts(first) == ["echo q29", "q29", "echo q28", "q28"] and first.has_more
        store.loads.clear()
        svc._finished.clear()  # as another process would: nothing cached
        page = await svc.list_messages(TENANT, thread_id, Cursor(limit=4, after=first.data[-1].id))
        assert texts(page) == ["echo q27", "q27", "echo q26", "q26"]
        before = await svc.list_messages(TENANT, thread_id, Cursor(limit=3, before=page.data[0].id, order="asc"))
        assert texts(before) == ["q26", "echo q26", "q27"] and before.has_more  # the nearest, oldest first
        whole = await svc.list_messages(TENANT, thread_id, Cursor(limit=100, order="asc"))
        assert len(whole.data) == 60 and [m.id for m in whole.data] == sorted(m.id for m in whole.data)
        assert store.loads == []  # every answer came from the projected rows

    asyncio.run(main())


def test_the_running_run_is_merged_and_projected_once_finished() -> None:
    async def main() -> None:
        svc = service()
        assistant_id, thread_id = await new_thread(svc, 2)
        await svc.create_message(TENANT, thread_id, NewMessage.text("user", "q2"))
        paused = await svc.prepare_run(TENANT, thread_id, assistant_id, {"tether_breakpoints": ["before_finish"]})
        await svc.runs.resume(paused.id)  # it answered, and stops before it finishes
        page = await svc.list_messages(TENANT, thread_id, Cursor(limit=2))
        assert texts(page) == ["echo q2", "q2"]
        answer = page.data[0]
        changed = await svc.update_message(TENANT, thread_id, answer.id, {"seen": "yes"})
        assert changed.fields.metadata == {"seen": "yes"}
        assert (await svc.message(TENANT, thread_id, answer.id)).fields.metadata == {"seen": "yes"}
        view = await svc.runs.get(paused.id)
        await svc.runs.answer(paused.id, {i.id: ("continue", None) for i in view.pending})
        # Finished now: its answer is a stored row, with the change made while it ran.
        row = await svc.objects.get_object(answer.id)
        assert row is None or row.kind == "message_override"
        again = await svc.list_messages(TENANT, thread_id, Cursor(limit=2))
        assert [m.id for m in again.data] == [answer.id, page.data[1].id]
        row = await svc.objects.get_object(answer.id)
        assert row is not None and row.kind == "message" and row.data["metadata"] == {"seen": "yes"}
        assert row.data["run_id"] == paused.id

    asyncio.run(main())


def test_a_deleted_answer_stays_deleted_when_the_projection_is_rebuilt() -> None:
    async def main() -> None:
        svc = service()
        _, thread_id = await new_thread(svc, 2)
        page = await svc.list_messages(TENANT, thread_id, Cursor(limit=1))
        await svc.delete_message(TENANT, thread_id, page.data[0].id)
        with pytest.raises(NotFound, match=rf"No message found with id '{page.data[0].id}'\."):
            await svc.message(TENANT, thread_id, page.data[0].id)
        await svc.objects.delete_object(f"{thread_id}.projected")  # forget the projection: rebuilt from logs
        rebuilt = await svc.list_messages(TENANT, thread_id, Cursor(limit=10, order="asc"))
        assert texts(rebuilt) == ["q0", "echo q0", "q1"]

    asyncio.run(main())


def test_rows_written_by_the_previous_version_read_as_before() -> None:
    """A run row kept the whole request (stream, additional_messages, ...), and a change to a run's
    message was a message row marked `override`: both still read, and the change is folded in."""

    async def main() -> None:
        svc = service()
        assistant_id, thread_id = await new_thread(svc, 0)
        run = await ask(svc, assistant_id, thread_id, "q0")
        old = dict(run.row.data, stream=None, additional_instructions="x", additional_messages=[{"role": "user"}])
        await svc.objects.put_object(StoredObject(run.id, "run", TENANT, run.row.created_at, old, thread_id))
        answer_id = run.thread_messages()[0].id
        await svc.objects.put_object(StoredObject(answer_id, "message", TENANT, 1.0, {
            "override": True, "metadata": {"old": "1"}}, thread_id))
        deleted = await ask(svc, assistant_id, thread_id, "q1")
        await svc.objects.put_object(StoredObject(deleted.thread_messages()[0].id, "message", TENANT, 1.0, {
            "override": True, "deleted": True, "metadata": {}}, thread_id))
        svc._finished.clear()
        again = await svc.run(TENANT, thread_id, run.id)
        assert again.settings.assistant_id == assistant_id and again.settings.model == MODEL
        page = await svc.list_messages(TENANT, thread_id, Cursor(limit=10, order="asc"))
        assert texts(page) == ["q0", "echo q0", "q1"] and page.data[1].fields.metadata == {"old": "1"}
        tombstone = await svc.objects.get_object(deleted.thread_messages()[0].id)
        assert tombstone is not None and tombstone.kind == "message_override"  # no longer a row of message lists
        await svc.objects.delete_object(f"{thread_id}.projected")  # rebuilt: the deletion is still known
        assert texts(await svc.list_messages(TENANT, thread_id, Cursor(limit=10, order="asc"))) == [
            "q0", "echo q0", "q1"]

    asyncio.run(main())


# -- two processes on one database: A projects (or changes) a message, B changes it meanwhile -------


class PausedBeforeWrite:
    """Process A's view of the store: before A's first write of a message row, `meanwhile` (what
    process B does) runs, as if A were paused between its reads and its write."""

    def __init__(self, store: SqlStore, meanwhile: Callable[[], Awaitable[object]]) -> None:
        self.store, self.meanwhile = store, meanwhile
        self.paused = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def _pause(self, obj: StoredObject) -> None:
        if obj.kind == "message" and not self.paused:
            self.paused = True
            await self.meanwhile()

    async def put_object(self, obj: StoredObject) -> None:
        await self._pause(obj)
        await self.store.put_object(obj)

    async def insert_object(self, obj: StoredObject) -> bool:
        await self._pause(obj)
        return await self.store.insert_object(obj)

    async def replace_object(self, obj: StoredObject, old: StoredObject) -> bool:
        await self._pause(obj)
        return await self.store.replace_object(obj, old)


async def finished_unprojected(svc: AssistantsService[ThreadRun]) -> tuple[str, str]:
    """A thread whose one run is finished and not projected; (thread id, the run's answer id)."""
    assistant_id, thread_id = await new_thread(svc, 0)
    run = await ask(svc, assistant_id, thread_id, "q0")
    answer_id = run.thread_messages()[0].id
    assert await svc.objects.get_object(answer_id) is None
    return thread_id, answer_id


def process_a(svc: AssistantsService[ThreadRun], path: Path, meanwhile: Callable[[], Awaitable[object]]
              ) -> tuple[ThreadMessages, SqlStore]:
    """Another process's messages on the same SQLite file, paused before its first write."""
    store = SqlStore(f"sqlite:///{path}")
    return ThreadMessages(cast(ObjectStore, PausedBeforeWrite(store, meanwhile)), svc._load), store


def test_a_message_deleted_while_another_process_projects_it_stays_deleted(tmp_path: Path) -> None:
    async def main() -> None:
        store = SqlStore(f"sqlite:///{tmp_path / 't.db'}")
        svc = service(store)
        thread_id, answer_id = await finished_unprojected(svc)
        a, a_store = process_a(svc, tmp_path / "t.db", lambda: svc.delete_message(TENANT, thread_id, answer_id))
        page = await a.page(TENANT, thread_id, Cursor(limit=10, order="asc"))  # A read no row, B deleted, A wrote
        assert texts(page) == ["q0"]
        again = await svc.list_messages(TENANT, thread_id, Cursor(limit=10, order="asc"))
        assert texts(again) == ["q0"]
        for messages in (svc.messages, a):
            with pytest.raises(NotFound):
                await messages.get(TENANT, thread_id, answer_id)
        row = await store.get_object(answer_id)
        assert row is not None and row.kind == "message_override" and row.data["deleted"]  # its tombstone
        with pytest.raises(NotFound):
            await svc.update_message(TENANT, thread_id, answer_id, {"x": "1"})
        await a_store.close()
        await store.close()

    asyncio.run(main())


def test_metadata_set_while_another_process_projects_the_message_is_kept(tmp_path: Path) -> None:
    async def main() -> None:
        store = SqlStore(f"sqlite:///{tmp_path / 't.db'}")
        svc = service(store)
        thread_id, answer_id = await finished_unprojected(svc)
        a, a_store = process_a(
            svc, tmp_path / "t.db", lambda: svc.update_message(TENANT, thread_id, answer_id, {"x": "1"}))
        await a.page(TENANT, thread_id, Cursor(limit=10))
        for messages in (svc.messages, a):
            assert (await messages.get(TENANT, thread_id, answer_id)).fields.metadata == {"x": "1"}
        await a_store.close()
        await store.close()

    asyncio.run(main())


def test_metadata_set_as_the_run_ends_is_kept_by_the_projection_that_missed_it(tmp_path: Path) -> None:
    """B saw the run going on (so kept its change beside the message) and wrote it after A, which
    projects the finished run, had read that there was none: A folds it in after its write."""

    async def main() -> None:
        store = SqlStore(f"sqlite:///{tmp_path / 't.db'}")
        svc = service(store)
        assistant_id, thread_id = await new_thread(svc, 0)
        await svc.create_message(TENANT, thread_id, NewMessage.text("user", "q0"))
        paused = await svc.prepare_run(TENANT, thread_id, assistant_id, {"tether_breakpoints": ["before_finish"]})
        await svc.runs.resume(paused.id)
        going_on = await svc.run(TENANT, thread_id, paused.id)
        answer_id = going_on.thread_messages()[0].id
        view = await svc.runs.get(paused.id)
        await svc.runs.answer(paused.id, {i.id: ("continue", None) for i in view.pending})  # finished now

        async def stale(row: StoredObject) -> ThreadRun | None:  # B read the run before it finished
            return going_on if row.id == paused.id else await svc._load(row)

        b = ThreadMessages(svc.objects, stale)
        a, a_store = process_a(svc, tmp_path / "t.db", lambda: b.set_metadata(TENANT, thread_id, answer_id, {"x": "1"}))
        await a.page(TENANT, thread_id, Cursor(limit=10))
        row = await store.get_object(answer_id)
        assert row is not None and row.kind == "message" and row.data["metadata"] == {"x": "1"}
        await a_store.close()
        await store.close()

    asyncio.run(main())


def test_an_update_racing_a_deletion_does_not_bring_the_message_back(tmp_path: Path) -> None:
    async def main() -> None:
        store = SqlStore(f"sqlite:///{tmp_path / 't.db'}")
        svc = service(store)
        thread_id, answer_id = await finished_unprojected(svc)
        await svc.list_messages(TENANT, thread_id, Cursor())  # projected
        a, a_store = process_a(svc, tmp_path / "t.db", lambda: svc.delete_message(TENANT, thread_id, answer_id))
        with pytest.raises(NotFound):
            await a.set_metadata(TENANT, thread_id, answer_id, {"x": "1"})  # read it, B deleted it, A wrote
        assert texts(await svc.list_messages(TENANT, thread_id, Cursor())) == ["q0"]
        await a_store.close()
        question_id = (await svc.list_messages(TENANT, thread_id, Cursor())).data[0].id  # a client's message
        a, a_store = process_a(svc, tmp_path / "t.db", lambda: svc.delete_message(TENANT, thread_id, question_id))
        with pytest.raises(NotFound):
            await a.set_metadata(TENANT, thread_id, question_id, {"x": "1"})
        assert texts(await svc.list_messages(TENANT, thread_id, Cursor())) == []
        assert await store.get_object(f"{question_id}.change") is None
        await a_store.close()
        await store.close()

    asyncio.run(main())


def test_runs_of_a_thread_are_paged_and_not_found_is_a_domain_error() -> None:
    async def main() -> None:
        svc = service()
        _, thread_id = await new_thread(svc, 3)
        page = await svc.list_runs(TENANT, thread_id, Cursor(limit=2))
        assert len(page.data) == 2 and page.has_more and page.data[0].id > page.data[1].id
        with pytest.raises(NotFound, match=r"No thread found with id 'thread_x'\."):
            await svc.list_runs(TENANT, "thread_x", Cursor())
        with pytest.raises(NotFound, match=rf"No thread found with id '{thread_id}'\."):
            await svc.thread("another tenant", thread_id)

    asyncio.run(main())


def test_cancel_records_the_request_for_whoever_advances_the_run() -> None:
    """One cancel for every interface: a run leased by another process is asked (its heartbeat
    cancels it); the caller is not told an error."""

    async def main() -> None:
        store = MemoryStore()
        svc = service(store)
        assistant_id, thread_id = await new_thread(svc, 0)
        await svc.create_message(TENANT, thread_id, NewMessage.text("user", "q"))
        run = await svc.prepare_run(TENANT, thread_id, assistant_id, {})  # queued, leased to its maker
        other = RunsService(store, owner="another-process")
        view = await other.cancel(run.id, by="cli", wait=False)
        assert view.status in ("queued", "running")
        assert await store.cancel_requested(run.id) == "cancelled by cli"
        assert (await svc.flags(run)).cancelling
        await svc.runs.cancel(run.id, by="client", wait=False)  # its owner: ends it at once
        assert (await svc.runs.get(run.id)).status == "cancelled"
        with pytest.raises(AlreadyFinished):
            await other.cancel(run.id, by="cli")

    asyncio.run(main())


def test_settings_are_typed_at_the_boundary() -> None:
    async def main() -> None:
        svc = service()
        with pytest.raises(InvalidRequest) as e:
            await svc.create_assistant(TENANT, {"model": MODEL, "tools": [{"type": "function", "function": {}}]})
        assert e.value.param == "tools[0].function.name"
        a = await svc.create_assistant(TENANT, {"model": MODEL, "temperature": 0.3, "tether_tools": [
            {"type": "calculator"}]})
        assert isinstance(a.settings, AssistantSettings) and a.settings.temperature == 0.3
        row = await svc.objects.get_object(a.id)
        assert row is not None and row.data["tether_tools"] == [{"type": "calculator"}]  # as the client wrote it
        reset = await svc.update_assistant(TENANT, a.id, {"temperature": None, "name": "n"})
        assert reset.settings.temperature == 1.0 and reset.settings.name == "n"
        with pytest.raises(InvalidRequest, match="Unrecognized request argument supplied: colour"):
            await svc.update_assistant(TENANT, a.id, {"colour": "red"})

    asyncio.run(main())


def test_a_run_on_an_unknown_thread_is_not_made() -> None:
    async def main() -> None:
        svc = service()
        a = await svc.create_assistant(TENANT, {"model": MODEL})
        with pytest.raises(NotFound, match="No thread found with id 'thread_nope'"):
            await svc.prepare_run(TENANT, "thread_nope", a.id, {})
        assert await svc.runs.list() == []  # before, a run was made, then the thread was looked up

    asyncio.run(main())


def test_a_deleted_thread_takes_its_messages_and_projection_with_it() -> None:
    """Deleting a thread deletes what grew with it in the objects table (its messages, the projected
    answers of its runs, changes and tombstones, the projection's mark); its runs stay, so they can
    still be shown, replayed or forked."""
    async def main() -> None:
        store = CountingStore()
        svc = service(store)
        _, thread_id = await new_thread(svc, 3)
        page = await svc.list_messages(TENANT, thread_id, Cursor(limit=100))  # projects the runs' answers
        answer = next(m for m in page.data if m.fields.run_id is not None)
        await svc.delete_message(TENANT, thread_id, answer.id)  # leaves a tombstone
        kept = {o.id for o in store._objects.values() if o.parent_id == thread_id and o.kind == "run"}
        assert len(kept) == 3
        await svc.delete_thread(TENANT, thread_id)
        assert {o.id for o in store._objects.values() if o.parent_id == thread_id} == kept
        assert await store.get_object(thread_id) is None
        for run_id in kept:
            assert (await svc.runs.get(run_id)).status == "completed"

    asyncio.run(main())
