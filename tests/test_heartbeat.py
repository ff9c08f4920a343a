"""One heartbeat per runs service: one statement renews every lease it holds on the runs it advances,
hands each executor a cancel or breakpoints set from outside, and stops a run whose lease another
process took over before it writes again."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pg import postgres, postgres_url  # noqa: F401  (fixtures)
from tether.adapters.models.scripted import ScriptedModel, call_tool, reply
from tether.adapters.store.memory import MemoryStore
from tether.adapters.store.sql import SqlStore
from tether.adapters.store.sql import leases as sql_leases
from tether.adapters.tools.function import tool
from tether.domain.errors import LeaseLost
from tether.domain.leases import LeaseState
from tether.domain.models import ModelRequest
from tether.services.agents import Agent
from tether.services.runs import RunsService, run_blocking

pytestmark = pytest.mark.anyio

TTL_S = 0.3  # a heartbeat every 100 ms


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlStore | MemoryStore]:
    if request.param == "memory":
        s: SqlStore | MemoryStore = MemoryStore()
    else:
        sqlite = request.param == "sqlite"
        s = SqlStore(f"sqlite:///{tmp_path / 'runs.db'}" if sqlite else request.getfixturevalue("postgres_url"))
    yield s
    await s.close()


class Watched:
    """A store seen through: counts the calls made to it, and can hold the heartbeat's renewals
    (a process suspended, or too busy to renew) and run a hook inside one."""

    def __init__(self, inner: SqlStore | MemoryStore) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self.renewing = asyncio.Event()
        self.renewing.set()
        self.before_renewal: Callable[[], Awaitable[None]] | None = None
        self.after_renewal: Callable[[], Awaitable[None]] | None = None
        self.renewed: list[list[LeaseState]] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return attr(*args, **kwargs)

        return counted

    async def renew_leases(self, owner: str, run_ids: Any, ttl_s: float) -> list[LeaseState]:
        self.calls["renew_leases"] += 1
        await self.renewing.wait()
        if self.before_renewal is not None:
            await self.before_renewal()
        renewed = await self.inner.renew_leases(owner, run_ids, ttl_s)
        if self.after_renewal is not None:
            await self.after_renewal()
        self.renewed.append(renewed)
        return renewed


def blocked_model(entered: asyncio.Event, gate: asyncio.Event | None = None, answer: str = "done"):
    """A model whose first call waits for `gate` (for ever without one); it answers `answer`."""

    async def script(request: ModelRequest):
        entered.set()
        await (gate or asyncio.Event()).wait()
        return reply(answer)

    return ScriptedModel(script)


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition never became true"
        await asyncio.sleep(0.01)


def trace(store: SqlStore | MemoryStore, statements: list[str]) -> Callable[[], None]:
    """Keep every SQL statement the store runs (on SQLite, also those of its raw hot path); returns
    the function that stops."""
    if isinstance(store, MemoryStore):
        return lambda: None
    if store.dialect == "sqlite":
        store._db.raw.set_trace_callback(statements.append)
        return lambda: store._db.raw.set_trace_callback(None)

    def keep(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    sa.event.listen(store._db.engine, "before_cursor_execute", keep)
    return lambda: sa.event.remove(store._db.engine, "before_cursor_execute", keep)


def heartbeat_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("tether heartbeat") and not t.done()]


# -- the store ------------------------------------------------------------------------------------


@pytest.mark.parametrize("returning", [True, False])
async def test_renew_leases_renews_only_the_owners_runs_and_brings_their_controls(store, monkeypatch, returning):
    if not returning and getattr(store, "dialect", None) != "sqlite":
        pytest.skip("only an SQLite older than 3.35 renews without RETURNING")
    monkeypatch.setattr(sql_leases, "_RETURNING", returning)  # it selects the renewed rows afterwards
    a = RunsService(store, owner="A", lease_ttl_s=30)
    b = RunsService(store, owner="B", lease_ttl_s=30)
    quick = Agent("quick", ScriptedModel([reply("done")]))
    plain, cancelled, breaking = [(await a.start(quick, "hi", drive=False)).id for _ in range(3)]
    others = (await b.start(quick, "hi", drive=False)).id
    await store.request_cancel(cancelled, "cancelled by cli")
    bps = [{"id": "bp_1", "stop": "before_finish", "tool": None, "condition": None, "once": False, "hits": 0,
            "enabled": True}]
    await store.set_breakpoints(breaking, bps)
    before = time.time()

    renewed = await store.renew_leases("A", [plain, cancelled, breaking, others, "run_gone"], 60)

    by_id = {s.run_id: s for s in renewed}
    assert set(by_id) == {plain, cancelled, breaking}  # not B's run, not a run that does not exist
    assert by_id[plain] == LeaseState(plain)
    assert by_id[cancelled].cancel_requested == "cancelled by cli"
    assert by_id[breaking].breakpoints == bps
    for run_id in (plain, cancelled, breaking):
        info = await store.get_run(run_id)
        assert info is not None and info.lease_owner == "A" and (info.lease_expires or 0) >= before + 59
    info = await store.get_run(others)
    assert info is not None and info.lease_owner == "B" and (info.lease_expires or 0) < before + 31
    assert await store.renew_leases("A", [], 60) == []


async def test_controls_reads_only_the_runs_with_a_cancel_or_breakpoints_set(store):
    a = RunsService(store, owner="A", lease_ttl_s=30)
    quick = Agent("quick", ScriptedModel([reply("done")]))
    plain, cancelled, breaking = [(await a.start(quick, "hi", drive=False)).id for _ in range(3)]
    await store.request_cancel(cancelled, "cancelled by cli")
    bps = [{"id": "bp_1", "stop": "before_finish", "tool": None, "condition": None, "once": False, "hits": 0,
            "enabled": True}]
    await store.set_breakpoints(breaking, bps)
    expires = {r: (await store.get_run(r)).lease_expires for r in (plain, cancelled, breaking)}

    found = {s.run_id: s for s in await store.controls([plain, cancelled, breaking, "run_gone"])}

    assert found == {cancelled: LeaseState(cancelled, "cancelled by cli"), breaking: LeaseState(breaking, None, bps)}
    assert {r: (await store.get_run(r)).lease_expires for r in expires} == expires  # a read: nothing renewed
    assert await store.controls([]) == []


# -- the service: one heartbeat, one statement ------------------------------------------------------


@pytest.mark.parametrize("runs", [1, 25])
async def test_one_statement_a_heartbeat_renews_every_run_the_service_advances(store, runs):
    watched = Watched(store)
    service = RunsService(watched, lease_ttl_s=TTL_S)  # type: ignore[arg-type]
    gate, entered = asyncio.Event(), asyncio.Event()
    waiting = Agent("waiting", blocked_model(entered, gate))
    tasks = [asyncio.create_task(service.start(waiting, "hi")) for _ in range(runs)]
    await until(lambda: len(service._active) == runs)
    assert len(heartbeat_tasks()) == 1  # one task for all of them
    statements: list[str] = []
    stop_tracing = trace(store, statements)
    watched.calls.clear()
    since = time.time()

    await asyncio.sleep(TTL_S * 1.2)  # about three heartbeats; every run waits for its model meanwhile

    stop_tracing()
    beats = watched.calls["renew_leases"]
    assert beats >= 2 and set(watched.calls) == {"renew_leases"}  # no statement a run
    if isinstance(store, SqlStore):
        work = [s for s in statements if s.split()[0].upper() not in ("BEGIN", "COMMIT")]
        assert len(work) == beats and all(s.startswith("UPDATE runs SET lease_expires") for s in work), work
    for run_id in service._active:
        info = await store.get_run(run_id)
        assert info is not None and info.lease_owner == service.owner and (info.lease_expires or 0) > since + TTL_S
    gate.set()
    assert {(await t).status for t in tasks} == {"completed"}
    await asyncio.sleep(0)
    assert not service._heartbeats and heartbeat_tasks() == []  # nothing advanced: no task


async def test_the_heartbeat_comes_back_with_the_next_run_and_survives_a_failing_store(store):
    watched = Watched(store)
    service = RunsService(watched, lease_ttl_s=TTL_S)  # type: ignore[arg-type]
    done = await service.start(Agent("quick", ScriptedModel([reply("done")])), "hi")
    assert done.status == "completed" and not service._heartbeats

    async def failing() -> None:
        raise OSError("the disk is gone for a moment")

    watched.after_renewal = failing
    gate, entered = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(service.start(Agent("waiting", blocked_model(entered, gate)), "hi"))
    await entered.wait()
    await until(lambda: watched.calls["renew_leases"] >= 2)  # it beat again after a failure
    watched.after_renewal = None
    gate.set()
    assert (await task).status == "completed"


# -- what the heartbeat brings from other processes -------------------------------------------------


async def test_a_cancel_asked_by_another_process_stops_a_model_call_within_a_heartbeat(store):
    owner = RunsService(store, lease_ttl_s=TTL_S)
    entered = asyncio.Event()
    task = asyncio.create_task(owner.start(Agent("waiting", blocked_model(entered)), "hi"))  # waits for ever
    await entered.wait()
    (run_id,) = owner._active
    other = RunsService(store, lease_ttl_s=TTL_S)  # another process: it reaches the run through the store only
    await other.cancel(run_id, by="cli", wait=False)
    run = await asyncio.wait_for(task, 5)  # about a heartbeat (0.1 s); the model call would wait for ever
    assert run.status == "cancelled" and "cancelled by cli" in (run.error or "")
    assert [r.kind for r in await store.load(run_id)] == ["run_started", "finished"]


async def test_breakpoints_set_by_another_process_are_picked_up_while_running(store):
    owner = RunsService(store, lease_ttl_s=TTL_S)
    gate, entered = asyncio.Event(), asyncio.Event()
    waiting = Agent("waiting", blocked_model(entered, gate), ref="test_heartbeat:waiting")
    task = asyncio.create_task(owner.start(waiting, "hi"))
    await entered.wait()
    (run_id,) = owner._active
    other = RunsService(store)
    other.register(waiting)
    await other.add_breakpoint(run_id, "before_finish")
    await until(lambda: any(b.stop == "before_finish" for b in owner._active[run_id].breakpoints))
    gate.set()
    run = await task
    assert run.status == "paused" and run.pending[0].stop == "before_finish"


# -- a lease lost ---------------------------------------------------------------------------------


@tool
async def slow(gate: str) -> str:
    """Wait until the test opens the gate."""
    await GATES[gate].wait()
    return "late"


GATES: dict[str, asyncio.Event] = {}


@tool(idempotent=True)
async def noop() -> str:
    """Do nothing."""
    return "ok"


@pytest.mark.parametrize("in_flight", ["model", "tool"])
async def test_a_run_whose_lease_another_process_took_stops_before_its_next_write(store, in_flight):
    """This process stops renewing (suspended, or starved past the TTL); another takes the run over and
    advances it; this one, when its heartbeat runs again, stops the run without writing anything more."""
    watched = Watched(store)
    here = RunsService(watched, lease_ttl_s=TTL_S)  # type: ignore[arg-type]
    entered, gate = asyncio.Event(), asyncio.Event()
    GATES["tool"] = gate

    async def first(request: ModelRequest):
        if in_flight == "tool":
            return call_tool("slow", {"gate": "tool"})
        entered.set()
        await gate.wait()
        return reply("this process's answer")

    task = asyncio.create_task(here.start(Agent("a", ScriptedModel(first), tools=[slow], ref="hb:a"), "hi"))
    await until(lambda: bool(here._active))
    (run_id,) = here._active
    if in_flight == "tool":
        await until(lambda: any(r.kind == "tool_started" for r in here._active[run_id].log or []))
    else:
        await entered.wait()
    watched.renewing.clear()  # this process stops renewing ...
    await asyncio.sleep(TTL_S * 1.5)  # ... past its lease's expiry

    there = RunsService(store, owner="there", lease_ttl_s=30)
    there.register(Agent("a", ScriptedModel([reply("the other process's answer")]), tools=[slow], ref="hb:a"))
    theirs = await there.resume(run_id)
    # A model call lost is asked again; a non-idempotent tool call that started is uncertain.
    assert theirs.status == ("completed" if in_flight == "model" else "paused")
    records = await store.load(run_id)

    watched.renewing.set()  # this process wakes up: its heartbeat finds the run not renewed ...
    await until(lambda: len(watched.renewed) >= 1)
    assert run_id not in {s.run_id for s in watched.renewed[0]}
    gate.set()  # ... and its model call was interrupted, or its tool call returns: nothing is written
    with pytest.raises(LeaseLost, match="another process took the run over"):
        await asyncio.wait_for(task, 5)

    assert await store.load(run_id) == records  # the other process's records, intact
    info = await store.get_run(run_id)
    assert info is not None and info.status == theirs.status and info.last_seq == records[-1].seq
    assert [r.kind for r in records].count("finished") == (1 if in_flight == "model" else 0)
    assert not here._heartbeats


async def test_a_run_paused_and_resumed_during_a_renewal_keeps_its_new_executor(store):
    """The run pauses (giving its lease back) as a renewal starts, so it is not renewed, and it is
    answered and advanced again before the renewal returns: its new executor holds the lease, and goes on."""
    watched = Watched(store)
    service = RunsService(watched, lease_ttl_s=TTL_S)  # type: ignore[arg-type]
    keeper_gate, keeper_entered = asyncio.Event(), asyncio.Event()
    keeper = asyncio.create_task(service.start(Agent("keeper", blocked_model(keeper_entered, keeper_gate)), "hi"))
    await keeper_entered.wait()  # another run keeps the heartbeat going meanwhile
    gates, entered = [asyncio.Event(), asyncio.Event()], [asyncio.Event(), asyncio.Event()]
    calls = iter(range(2))

    async def script(request: ModelRequest):
        n = next(calls)
        entered[n].set()
        await gates[n].wait()
        return call_tool("noop") if n == 0 else reply("answer 1")

    task = asyncio.create_task(service.start(Agent("pausing", ScriptedModel(script), tools=[noop]), "hi",
                                             breakpoints=["before_tool"]))
    await entered[0].wait()
    (run_id,) = [r for r, e in service._active.items() if e.breakpoints]
    first_executor = service._active[run_id]
    resumed: list[asyncio.Task[Any]] = []

    async def pause() -> None:  # after the heartbeat took its list of runs, before its statement
        watched.before_renewal = None
        gates[0].set()
        assert (await task).status == "paused"  # the pause gave the lease back

    async def resume() -> None:  # after the statement, before the heartbeat looks at what it renewed
        watched.after_renewal = None
        resumed.append(asyncio.create_task(service.answer(run_id)))
        await entered[1].wait()
        assert service._active[run_id] is not first_executor

    watched.before_renewal, watched.after_renewal = pause, resume
    await until(lambda: len(watched.renewed) >= 1)
    assert {s.run_id for s in watched.renewed[0]} == set(service._active) - {run_id}  # the run was not renewed
    gates[1].set()
    run = await asyncio.wait_for(resumed[0], 5)
    assert run.status == "completed" and run.output == "answer 1"  # not stopped: its new executor holds the lease
    keeper_gate.set()
    assert (await keeper).status == "completed"


def test_runs_advanced_from_two_threads_keep_their_leases_and_get_their_cancels(tmp_path: Path) -> None:
    """`run_sync` from threads: each thread's loop advances runs of one service. The second run's
    leases and controls must not depend on the first thread's loop, which ends with its run."""
    store = SqlStore(f"sqlite:///{tmp_path / 'runs.db'}")
    service = RunsService(store, lease_ttl_s=TTL_S)
    first_may_end, second_may_end = threading.Event(), threading.Event()

    def waiting_model(gate: threading.Event) -> ScriptedModel:
        async def script(request: ModelRequest):
            while not gate.is_set():
                await asyncio.sleep(0.01)
            return reply("done")

        return ScriptedModel(script)

    views: dict[str, Any] = {}

    def advance(name: str, gate: threading.Event) -> None:
        views[name] = run_blocking(service.start(Agent(name, waiting_model(gate)), "hi"))

    def wait_for(condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 5
        while not condition():
            assert time.monotonic() < deadline, "the condition never became true"
            time.sleep(0.01)

    first = threading.Thread(target=advance, args=("first", first_may_end))
    second = threading.Thread(target=advance, args=("second", second_may_end))
    try:
        first.start()
        wait_for(lambda: len(service._active) == 1)
        (first_id,) = service._active
        second.start()
        wait_for(lambda: len(service._active) == 2)
        (second_id,) = set(service._active) - {first_id}
        first_may_end.set()
        first.join(5)  # the first run ended, and its thread's loop with it
        assert views["first"].status == "completed"

        time.sleep(TTL_S * 2)  # longer than a lease: only a heartbeat keeps the second run's
        other = SqlStore(f"sqlite:///{tmp_path / 'runs.db'}")
        try:
            info = asyncio.run(other.get_run(second_id))
            assert info is not None and info.lease_owner == service.owner
            assert (info.lease_expires or 0) > time.time()  # (was: expired, with no heartbeat left)
            asyncio.run(other.request_cancel(second_id, "cancelled by another process"))
        finally:
            asyncio.run(other.close())
        wait_for(lambda: "second" in views)  # the cancel interrupts its model call
        assert views["second"].status == "cancelled"
    finally:
        first_may_end.set()
        second_may_end.set()
        first.join(5)
        second.join(5)
        asyncio.run(store.close())
