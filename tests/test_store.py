"""The SQL store (SQLite and Postgres) against the run contract, and against MemoryStore."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from pg import postgres, postgres_url  # noqa: F401  (fixtures)
from tether.adapters.store.memory import MemoryStore
from tether.adapters.store.migrations import LATEST, SchemaError
from tether.adapters.store.sql import INFO_COLUMNS, SqlStore, default_url, open_store, tether_home
from tether.domain.agents import AgentSnapshot, Limits, ToolSpec
from tether.domain.answers import Approve, Continue, Deny
from tether.domain.errors import ConfigError, RunNotFound, StoreConflict
from tether.domain.ids import new_id
from tether.domain.messages import ImagePart, Message, RefusalPart, TextPart, ToolCall
from tether.domain.models import ModelResponse
from tether.domain.records import (
    Decision,
    Finished,
    ForkOrigin,
    ModelCalled,
    Paused,
    PendingItem,
    Record,
    RunStarted,
    ToolFinished,
    ToolStarted,
)
from tether.domain.runs import RunInfo
from tether.domain.usage import Usage

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tether.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[SqlStore]:
    s = SqlStore(store_url)
    try:
        yield s
    finally:
        await s.close()


# -- building records -------------------------------------------------------------------------


def agent(name: str = "tester") -> AgentSnapshot:
    return AgentSnapshot(
        name=name,
        model="scripted:test",
        instructions="Be brief.",
        limits=Limits(max_steps=5, on_max_steps="finish"),
        tools=[ToolSpec("add", "Add two numbers.", {"type": "object", "properties": {}}, "sha256:abc")],
        output_schema={"type": "object"},
        agent_ref="tests.agents:adder",
        breakpoints=[{"stop": "before_tool", "tool": "add"}],
        settings={"temperature": 0.0},
    )


class Run:
    """Makes the records of one run, numbering them."""

    def __init__(self, thread_id: str | None = None, fork: ForkOrigin | None = None) -> None:
        self.id = new_id("run")
        self.seq = 0
        self.first = self.record(
            RunStarted(
                agent(), [Message.system("sys"), Message.user("2+3?")], thread_id, fork, {"k": [1, "x"]}
            )
        )

    def record(self, payload: object) -> Record:
        self.seq += 1
        return Record(self.id, self.seq, time.time(), payload)  # type: ignore[arg-type]

    def model(
        self,
        tokens: tuple[int, int] = (10, 5),
        cost: float | None = 0.001,
        text: str | None = None,
        calls: list[ToolCall] | None = None,
    ) -> Record:
        response = ModelResponse(
            text, list(calls or []), "tool_calls" if calls else "stop", Usage(*tokens, 2)
        )
        return self.record(ModelCalled(self.seq, "fp-" + str(self.seq), response, cost, 0.25))

    def pause(self, pause_id: str = "pause_1") -> Record:
        return self.record(
            Paused(pause_id, [PendingItem("call_1", "approval", "call_1", "add", '{"a":1}', "ok?")])
        )

    def decision(self, pause_id: str = "pause_1") -> Record:
        return self.record(Decision(pause_id, "call_1", Approve('{"a": 2}'), "alice", "call_1"))

    def finish(self, output: str = "5") -> Record:
        return self.record(Finished("completed", output, {"answer": 5}, None, Usage(10, 5), 0.002))


def every_kind(run: Run) -> list[Record]:
    call = ToolCall("call_1", "add", '{"a": 2, "b": 3}', provider_id="prov-1")
    return [
        run.model(calls=[call]),
        run.record(ToolStarted(2, "call_1", "add", '{"a": 2, "b": 3}', attempt=1)),
        run.record(ToolFinished(2, "call_1", "add", result="5", duration_s=0.01)),
        run.record(ToolFinished(2, "call_1", "add", error="boom", reused=True)),
        run.pause(),
        run.decision(),
        run.record(ModelCalled(3, "fp3", ModelResponse("5", [], "stop", Usage(1, 1), refusal=None,
                                                       model_name="m-1"), None, final=True, rejected="bad")),
        run.record(RunStarted(agent(), [
            Message("user", [TextPart("look"), ImagePart("https://x/y.png", "low"), RefusalPart("no")]),
            Message.assistant(None, [call]), Message.tool("call_1", "add", "5")])),
        run.finish(),
    ]  # fmt: skip


# -- the log ----------------------------------------------------------------------------------


async def test_round_trip_of_every_record_kind(store: SqlStore) -> None:
    run = Run(thread_id="thread_1", fork=ForkOrigin("run_parent", 3))
    await store.create_run(run.first, owner=None)
    records = every_kind(run)
    for r in records:
        store.append([r])
    await store.sync()
    assert await store.load(run.id) == [run.first, *records]
    assert await store.load("run_unknown") == []


async def test_a_taken_seq_is_a_conflict(store: SqlStore) -> None:
    run = Run()
    await store.create_run(run.first, owner="a")
    second = run.model()
    store.append([second])
    await store.sync()
    store.append([dataclasses.replace(second, payload=run.finish().payload)])
    with pytest.raises(StoreConflict, match=run.id):
        await store.sync()
    # The run is broken here until it is loaded again; its log is unchanged.
    with pytest.raises(StoreConflict, match="load the run again"):
        store.append([run.finish()])
    assert await store.load(run.id) == [run.first, second]
    store.append([Record(run.id, 3, time.time(), run.finish().payload)])
    await store.sync()
    assert len(await store.load(run.id)) == 3


async def test_two_writers_of_one_seq_conflict_on_the_primary_key(store_url: str) -> None:
    a, b = SqlStore(store_url), SqlStore(store_url)
    try:
        run = Run()
        await b.create_run(run.first, owner="b")  # b remembers the run at seq 1
        a.append([run.model()])
        await a.sync()
        b.append([Record(run.id, 2, time.time(), run.finish().payload)])
        with pytest.raises(StoreConflict, match=run.id):
            await b.sync()
        assert [r.kind for r in await a.load(run.id)] == ["run_started", "model_call"]
        assert (await b.get_run(run.id)).last_seq == 2  # type: ignore[union-attr]
    finally:
        await a.close()
        await b.close()


async def test_a_gap_in_seq_is_a_conflict_and_unknown_runs_are_not_found(store: SqlStore) -> None:
    run = Run()
    await store.create_run(run.first, owner=None)
    store.append([Record(run.id, 5, time.time(), run.finish().payload)])
    with pytest.raises(StoreConflict, match="record 5 conflicts with the log"):
        await store.sync()
    store.append([Record("run_nope", 2, time.time(), run.finish().payload)])
    with pytest.raises(RunNotFound, match="run_nope"):
        await store.sync()


async def test_grouped_commit_of_many_runs(store: SqlStore, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = [Run() for _ in range(40)]
    for run in runs:
        await store.create_run(run.first, owner=None)
    writes = []
    writer = store._writer
    real_write = writer._write
    monkeypatch.setattr(writer, "_write", lambda batch: (writes.append(len(batch.groups)), real_write(batch)))
    expected = {}
    for run in runs:  # all within one event-loop iteration: no await in between
        records = [run.model(), run.record(ToolStarted(2, "c", "t", "{}")),
                   run.record(ToolFinished(2, "c", "t", "ok")), run.finish()]  # fmt: skip
        for r in records:
            store.append([r])
        expected[run.id] = [run.first, *records]
    await store.sync()
    assert writes == [40]  # one transaction for all of them
    for run in runs:
        assert await store.load(run.id) == expected[run.id]
        info = await store.get_run(run.id)
        assert info is not None and info.status == "completed" and info.last_seq == 5


async def test_a_conflict_in_a_group_loses_only_that_runs_records(store: SqlStore) -> None:
    good, bad = Run(), Run()
    for run in (good, bad):
        await store.create_run(run.first, owner=None)
    store.append([good.model()])
    store.append([Record(bad.id, 1, time.time(), bad.finish().payload)])  # seq 1 is taken
    store.append([good.finish()])
    with pytest.raises(StoreConflict, match=bad.id):
        await store.sync()
    assert [r.kind for r in await store.load(good.id)] == ["run_started", "model_call", "finished"]
    assert [r.kind for r in await store.load(bad.id)] == ["run_started"]


async def test_appends_flush_by_themselves_at_the_end_of_the_loop_iteration(
    store: SqlStore, store_url: str
) -> None:
    run = Run()
    await store.create_run(run.first, owner=None)
    store.append([run.model()])
    for _ in range(20):  # no sync: the scheduled flush commits
        await asyncio.sleep(0.01)
    other = SqlStore(store_url)
    try:
        assert len(await other.load(run.id)) == 2
    finally:
        await other.close()


async def test_many_concurrent_writers(store: SqlStore) -> None:
    runs = [Run() for _ in range(12)]
    for run in runs:
        await store.create_run(run.first, owner=None)
    expected: dict[str, list[Record]] = {run.id: [run.first] for run in runs}

    async def drive(run: Run, n: int) -> None:
        for step in range(25):
            records = [run.model(), run.record(ToolStarted(step, "c", "t", "{}"))]
            store.append(records[:1])
            store.append(records[1:])
            if (step + n) % 3 == 0:
                await store.sync()  # as before a non-idempotent tool
            else:
                await asyncio.sleep(0)
            finished = run.record(ToolFinished(step, "c", "t", "ok"))
            store.append([finished])
            expected[run.id] += [*records, finished]
            if step % 5 == n % 5:
                await store.get_run(run.id)  # other statements wait for pending appends
        finish = run.finish()
        store.append([finish])
        expected[run.id].append(finish)
        await store.sync()

    await asyncio.gather(*(drive(run, n) for n, run in enumerate(runs)))
    await store.sync()
    for run in runs:
        assert await store.load(run.id) == expected[run.id]
        info = await store.get_run(run.id)
        assert info is not None and info.status == "completed" and info.last_seq == run.seq


def test_append_without_an_event_loop_commits_at_once(store_url: str) -> None:
    store = SqlStore(store_url)
    run = Run()
    asyncio.run(store.create_run(run.first, owner=None))
    store.append([run.model()])
    store.append([run.finish()])
    with pytest.raises(StoreConflict):
        store.append([Record(run.id, 2, time.time(), run.finish().payload)])
    fresh = SqlStore(store_url)
    assert [r.seq for r in asyncio.run(fresh.load(run.id))] == [1, 2, 3]
    asyncio.run(fresh.close())
    asyncio.run(store.close())


# -- the run index ----------------------------------------------------------------------------


def without_lease(info: RunInfo | None) -> RunInfo | None:
    return None if info is None else dataclasses.replace(info, lease_owner=None, lease_expires=None)


async def test_run_rows_follow_the_log_like_the_memory_store(store: SqlStore) -> None:
    memory = MemoryStore()
    run = Run(thread_id="thread_rows")
    for s in (store, memory):
        await s.create_run(run.first, owner="me")
    assert without_lease(await store.get_run(run.id)) == without_lease(await memory.get_run(run.id))
    info = await store.get_run(run.id)
    assert info is not None and info.status == "queued" and info.lease_owner == "me"
    assert info.lease_expires is not None and info.lease_expires > time.time() + 20

    steps = [
        [run.model((100, 20), 0.5)],
        [run.model((50, 10), None), run.pause("pause_9")],
        [run.decision("pause_9")],
        [run.model((1, 1), 0.25)],
        [run.finish("the answer")],
    ]
    expected_status = ["running", "paused", "queued", "running", "completed"]
    for records, status in zip(steps, expected_status, strict=True):
        for s in (store, memory):
            s.append(records)
        await store.sync()
        got = await store.get_run(run.id)
        assert got is not None and got.status == status
        assert without_lease(got) == without_lease(await memory.get_run(run.id))
        if status == "paused":
            assert got.pause_id == "pause_9"
            assert [r.id for r in await store.list_runs(status="paused")] == [run.id]
    final = await store.get_run(run.id)
    assert final is not None
    assert (final.input_tokens, final.output_tokens) == (151, 31)
    assert final.cost_usd == 0.002 and final.output == "the answer" and final.pause_id is None
    assert final.agent_name == "tester" and final.model == "scripted:test" and final.last_seq == 7
    assert await store.get_run("run_missing") is None


async def test_list_runs_newest_first_with_filters(store: SqlStore) -> None:
    runs = [Run(thread_id="thread_a" if i % 2 else None) for i in range(5)]
    for run in runs:
        await store.create_run(run.first, owner=None)
        store.append([run.finish()])  # finished: thread_a may start another
    running = Run()
    await store.create_run(running.first, owner=None)
    ids = [r.id for r in runs] + [running.id]
    assert [r.id for r in await store.list_runs()] == ids[::-1]
    assert [r.id for r in await store.list_runs(limit=2)] == ids[::-1][:2]
    assert [r.id for r in await store.list_runs(thread_id="thread_a")] == [runs[3].id, runs[1].id]
    assert [r.id for r in await store.list_runs(status="queued")] == [running.id]
    assert [r.id for r in await store.list_runs(status="completed", thread_id="thread_a", limit=1)] == [
        runs[3].id
    ]


async def test_one_active_run_per_thread(store: SqlStore) -> None:
    first = Run(thread_id="thread_busy")
    await store.create_run(first.first, owner=None)
    second = Run(thread_id="thread_busy")
    with pytest.raises(StoreConflict, match=rf"thread thread_busy already has an active run \({first.id}\)"):
        await store.create_run(second.first, owner=None)
    assert await store.get_run(second.id) is None and await store.load(second.id) == []
    await store.create_run(Run(thread_id="thread_other").first, owner=None)  # other threads are free
    await store.create_run(Run().first, owner=None)  # and so are runs without a thread
    await store.create_run(Run().first, owner=None)

    store.append([first.pause()])  # paused is still active
    with pytest.raises(StoreConflict, match="thread_busy"):
        await store.create_run(Run(thread_id="thread_busy").first, owner=None)
    store.append([first.decision(), first.finish()])
    await store.create_run(second.first, owner=None)  # the first is done: the thread is free
    with pytest.raises(StoreConflict, match="already exists"):
        await store.create_run(second.first, owner=None)


# -- leases -----------------------------------------------------------------------------------


async def test_leases(store: SqlStore) -> None:
    run = Run()
    await store.create_run(run.first, owner=None)
    assert await store.acquire_lease(run.id, "A", 30)
    assert not await store.acquire_lease(run.id, "B", 30)
    assert await store.acquire_lease(run.id, "A", 30)  # the holder may take it again
    assert await store.renew_lease(run.id, "A", 30)
    assert not await store.renew_lease(run.id, "B", 30)
    await store.release_lease(run.id, "B")  # not B's: nothing happens
    info = await store.get_run(run.id)
    assert info is not None and info.lease_owner == "A"

    assert await store.acquire_lease(run.id, "A", 0.05)
    await asyncio.sleep(0.1)  # A's lease expires
    assert await store.acquire_lease(run.id, "B", 30)
    assert not await store.renew_lease(run.id, "A", 30)
    await store.release_lease(run.id, "B")
    info = await store.get_run(run.id)
    assert info is not None and (info.lease_owner, info.lease_expires) == (None, None)
    assert await store.acquire_lease(run.id, "A", 30)

    for call in (store.acquire_lease("run_x", "A", 1), store.renew_lease("run_x", "A", 1),
                 store.release_lease("run_x", "A")):  # fmt: skip
        with pytest.raises(RunNotFound):
            await call


async def test_create_run_with_an_owner_holds_the_lease(store: SqlStore) -> None:
    run = Run()
    await store.create_run(run.first, owner="A")
    assert not await store.acquire_lease(run.id, "B", 30)
    assert await store.acquire_lease(run.id, "A", 30)


async def test_expired_runs(store: SqlStore) -> None:
    never, held, lapsed, paused, done = Run(), Run(), Run(), Run(), Run()
    await store.create_run(never.first, owner=None)
    await store.create_run(held.first, owner="A")
    await store.create_run(lapsed.first, owner=None)
    await store.acquire_lease(lapsed.id, "A", 0.01)
    store.append([lapsed.model()])  # running
    await store.create_run(paused.first, owner=None)
    store.append([paused.pause()])
    await store.create_run(done.first, owner=None)
    store.append([done.finish()])
    await asyncio.sleep(0.05)
    assert sorted(await store.expired_runs()) == sorted([never.id, lapsed.id])


# -- decisions --------------------------------------------------------------------------------


async def test_decide_is_compare_and_set(store: SqlStore) -> None:
    run = Run()
    await store.create_run(run.first, owner=None)
    model, pause = run.model(), run.pause("pause_1")
    store.append([model, pause])
    assert not await store.decide(
        run.id, "pause_other", [Record(run.id, 4, time.time(), Decision("pause_other", "i", Continue()))]
    )
    first = run.decision("pause_1")
    assert await store.decide(run.id, "pause_1", [first])
    info = await store.get_run(run.id)
    assert info is not None and (info.status, info.pause_id, info.last_seq) == ("queued", None, 4)
    late = Record(run.id, 4, time.time(), Decision("pause_1", "call_1", Deny("no"), by="bob"))
    assert not await store.decide(run.id, "pause_1", [late])
    assert await store.load(run.id) == [run.first, model, pause, first]  # nothing of the loser's
    # The run goes on from the decision.
    store.append([run.model(), run.finish()])
    await store.sync()
    info = await store.get_run(run.id)
    assert info is not None and (info.status, info.last_seq) == ("completed", 6)
    with pytest.raises(RunNotFound):
        await store.decide("run_gone", "pause_1", [late])


async def test_decide_between_two_stores(store_url: str) -> None:
    a, b = SqlStore(store_url), SqlStore(store_url)
    try:
        run = Run()
        await a.create_run(run.first, owner=None)
        a.append([run.pause("p")])
        await a.sync()
        decision = run.decision("p")
        results = await asyncio.gather(a.decide(run.id, "p", [decision]), b.decide(run.id, "p", [decision]))
        assert sorted(results) == [False, True]
        # a's memory of the row was refreshed by whichever decision won.
        a.append([run.finish()])
        await a.sync()
        assert [r.seq for r in await b.load(run.id)] == [1, 2, 3, 4]
    finally:
        await a.close()
        await b.close()


DECIDER = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from tether.adapters.store.sql import SqlStore
    from tether.domain.answers import Continue
    from tether.domain.records import Decision, Record

    url, start, who, *runs = sys.argv[1:]

    async def main():
        store = SqlStore(url)
        results = []
        at = float(start)
        for run_id in runs:
            while time.time() < at:
                time.sleep(0.0005)
            record = Record(run_id, 3, time.time(), Decision("pause_1", "call_1", Continue(), by=who))
            results.append(await store.decide(run_id, "pause_1", [record]))
            at += 0.3  # the next race starts together too
        await store.close()
        print(json.dumps(results))

    asyncio.run(main())
    """
)


async def test_two_processes_race_to_decide(store_url: str) -> None:
    store = SqlStore(store_url)
    runs = [Run() for _ in range(3)]
    for run in runs:
        await store.create_run(run.first, owner=None)
        store.append([run.pause("pause_1")])
    await store.close()
    start = time.time() + 2.5  # both processes import and connect before then
    procs = [
        subprocess.Popen([sys.executable, "-c", DECIDER, store_url, str(start), who, *(r.id for r in runs)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for who in ("p1", "p2")
    ]  # fmt: skip
    outputs = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        outputs.append(json.loads(out))
    for i in range(len(runs)):
        assert sorted(o[i] for o in outputs) == [False, True]  # exactly one wins each race
    check = SqlStore(store_url)
    try:
        for run in runs:
            log = await check.load(run.id)
            assert [r.kind for r in log] == ["run_started", "paused", "decision"]
            info = await check.get_run(run.id)
            assert info is not None and info.status == "queued"
    finally:
        await check.close()


# -- durability and schema --------------------------------------------------------------------


async def test_records_survive_a_reopen(store_url: str) -> None:
    store = SqlStore(store_url)
    run = Run()
    await store.create_run(run.first, owner="A")
    records = every_kind(run)
    store.append(records)
    await store.sync()
    await store.close()
    with pytest.raises(Exception, match="closed"):
        store.append([run.finish()])
    again = SqlStore(store_url)
    try:
        assert await again.load(run.id) == [run.first, *records]
        info = await again.get_run(run.id)
        assert info is not None and info.status == "completed" and info.last_seq == len(records) + 1
    finally:
        await again.close()


def _engine(url: str) -> sa.Engine:
    return sa.create_engine(url, poolclass=sa.NullPool)


async def test_schema_version_is_recorded_and_a_newer_schema_is_refused(store_url: str) -> None:
    await SqlStore(store_url).close()
    await SqlStore(store_url).close()  # opening an up-to-date database changes nothing
    engine = _engine(store_url)
    with engine.begin() as conn:
        versions = conn.execute(sa.text("SELECT version FROM schema_version ORDER BY version")).scalars().all()
        assert versions == list(range(1, LATEST + 1))
        conn.execute(sa.text("INSERT INTO schema_version (version, applied_at) VALUES (:v, 0)"),
                     {"v": LATEST + 1})  # fmt: skip
    engine.dispose()
    with pytest.raises(SchemaError, match=f"schema version {LATEST + 1}, newer than this Tether"):
        SqlStore(store_url)


def test_sqlite_settings(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "t.db"  # folders are created on first use
    for mode, number in (("NORMAL", 1), ("FULL", 2)):
        store = SqlStore(f"sqlite:///{path}", synchronous=mode)  # type: ignore[arg-type]
        raw = store._db.raw
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA synchronous").fetchone()[0] == number
        assert raw.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
        asyncio.run(store.close())
    with pytest.raises(ConfigError, match="synchronous"):
        SqlStore(f"sqlite:///{path}", synchronous="OFF")  # type: ignore[arg-type]
    db = sqlite3.connect(path)
    assert db.execute("SELECT count(*) FROM runs").fetchone() == (0,)
    db.close()


def test_info_columns_are_the_run_info_fields() -> None:
    assert tuple(f.name for f in dataclasses.fields(RunInfo)) == INFO_COLUMNS


# -- where the store lives --------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in ("TETHER_DATABASE_URL", "TETHER_HOME", "XDG_DATA_HOME"):
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch


def test_default_url_and_open_store(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("HOME", str(tmp_path / "home"))
    assert tether_home() == tmp_path / "home" / ".local" / "share" / "tether"
    clean_env.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert tether_home() == tmp_path / "xdg" / "tether"
    clean_env.setenv("TETHER_HOME", str(tmp_path / "th"))
    assert default_url() == f"sqlite:///{tmp_path / 'th' / 'tether.db'}"
    assert not (tmp_path / "th").exists()
    store = open_store()
    assert isinstance(store, SqlStore)
    asyncio.run(store.close())
    assert (tmp_path / "th" / "tether.db").exists()  # created on first use

    assert isinstance(open_store("memory://"), MemoryStore)
    clean_env.setenv("TETHER_DATABASE_URL", "memory://")
    assert default_url() == "memory://"
    assert isinstance(open_store(), MemoryStore)
    clean_env.setenv("TETHER_DATABASE_URL", f"sqlite:///{tmp_path / 'env.db'}")
    asyncio.run(open_store().close())  # type: ignore[union-attr]
    assert (tmp_path / "env.db").exists()
    with pytest.raises(ConfigError):
        open_store("mysql://nope/db")


def test_open_store_reads_synchronous_mode_from_the_environment(tmp_path, monkeypatch):
    from tether.adapters.store.sql import open_store
    from tether.domain.errors import ConfigError

    monkeypatch.setenv("TETHER_SQLITE_SYNCHRONOUS", "full")
    store = open_store(f"sqlite:///{tmp_path / 'f.db'}")
    assert store._db.raw.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    monkeypatch.setenv("TETHER_SQLITE_SYNCHRONOUS", "sometimes")
    with pytest.raises(ConfigError, match="NORMAL or FULL"):
        open_store(f"sqlite:///{tmp_path / 'g.db'}")


async def test_breakpoints_set_on_a_run_are_kept_beside_it(store_url: str) -> None:
    from tether.domain.errors import RunNotFound

    store = SqlStore(store_url)
    try:
        run = Run()
        await store.create_run(run.first, owner=None)
        assert await store.get_breakpoints(run.id) is None
        bps = [{"id": "bp_1", "stop": "before_tool", "tool": "delete_*", "condition": None, "once": False}]
        await store.set_breakpoints(run.id, bps)
        assert await store.get_breakpoints(run.id) == bps
        await store.set_breakpoints(run.id, None)
        assert await store.get_breakpoints(run.id) is None
        with pytest.raises(RunNotFound):
            await store.set_breakpoints("run_nope", [])
    finally:
        await store.close()


async def test_a_cancel_request_is_kept_beside_the_run(store_url: str) -> None:
    from tether.domain.errors import RunNotFound

    store = SqlStore(store_url)
    try:
        run = Run()
        await store.create_run(run.first, owner=None)
        assert await store.cancel_requested(run.id) is None
        await store.request_cancel(run.id, "cancelled by api")
        assert await store.cancel_requested(run.id) == "cancelled by api"
        with pytest.raises(RunNotFound):
            await store.request_cancel("run_nope", "x")
    finally:
        await store.close()


async def test_objects_put_get_list_delete_by_tenant(store: SqlStore, store_url: str) -> None:
    """The server's documents (assistants, threads, messages) live beside the runs, per tenant."""
    from tether.domain.objects import StoredObject

    await store.put_object(StoredObject("asst_2", "assistant", "t1", 2.0, {"name": "b", "tools": []}))
    await store.put_object(StoredObject("asst_1", "assistant", "t1", 1.0, {"name": "a"}))
    await store.put_object(StoredObject("asst_3", "assistant", "t2", 3.0, {"name": "other tenant"}))
    await store.put_object(StoredObject("msg_1", "message", "t1", 4.0, {"role": "user"}, parent_id="thread_1"))
    await store.put_object(StoredObject("msg_2", "message", "t1", 5.0, {"role": "user"}, parent_id="thread_2"))
    assert [o.id for o in await store.list_objects("assistant", "t1")] == ["asst_1", "asst_2"]
    assert [o.id for o in await store.list_objects("message", "t1", "thread_2")] == ["msg_2"]

    await store.put_object(StoredObject("asst_2", "assistant", "t1", 2.0, {"name": "b2", "meta": {"k": "é"}}))
    other = SqlStore(store_url)  # another process sees the same
    try:
        got = await other.get_object("asst_2")
        assert got == StoredObject("asst_2", "assistant", "t1", 2.0, {"name": "b2", "meta": {"k": "é"}})
        assert await other.delete_object("asst_2") is True
        assert await other.delete_object("asst_2") is False
    finally:
        await other.close()
    assert await store.get_object("asst_2") is None
    assert await store.get_object("nope") is None


# -- reads that do not grow with history: the records after a seq, a page of objects ------------


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlStore | MemoryStore]:
    if request.param == "memory":
        s: SqlStore | MemoryStore = MemoryStore()
    elif request.param == "sqlite":
        s = SqlStore(f"sqlite:///{tmp_path / 'tether.db'}")
    else:
        s = SqlStore(str(request.getfixturevalue("postgres_url")))
    try:
        yield s
    finally:
        await s.close()


async def test_load_after_a_seq_reads_only_newer_records_appended_ones_included(
    any_store: SqlStore | MemoryStore,
) -> None:
    store = any_store
    run = Run()
    await store.create_run(run.first, owner=None)
    committed = [run.model(), run.model()]
    store.append(committed)
    await store.sync()
    assert await store.load(run.id, after=0) == await store.load(run.id) == [run.first, *committed]
    assert await store.load(run.id, after=1) == committed
    assert await store.load(run.id, after=3) == []
    assert await store.load(run.id, after=-1) == [run.first, *committed]
    assert await store.load("run_unknown", after=2) == []
    pending = [run.model(), run.finish()]
    store.append(pending[:1])
    store.append(pending[1:])  # not flushed yet: no await since the appends
    assert await store.load(run.id, after=2) == [committed[1], *pending]
    assert await store.load(run.id, after=4) == pending[1:]


async def test_load_after_a_seq_does_not_reset_a_broken_run_a_full_load_does(store: SqlStore) -> None:
    run = Run()
    await store.create_run(run.first, owner="a")
    store.append([Record(run.id, 1, time.time(), run.finish().payload)])  # seq 1 is taken
    with pytest.raises(StoreConflict):
        await store.sync()
    assert await store.load(run.id, after=1) == []  # a reader of new records (an event stream)
    with pytest.raises(StoreConflict, match="load the run again"):
        store.append([run.model()])
    assert await store.load(run.id) == [run.first]  # the run's writer starts again from the log
    store.append([Record(run.id, 2, time.time(), run.finish().payload)])
    await store.sync()


async def test_reads_after_a_cursor_are_index_searches_on_sqlite(tmp_path: Path) -> None:
    """`load(after=)` and a page of objects read only what they return: the index finds the first."""
    from tether.domain.objects import StoredObject

    store = SqlStore(f"sqlite:///{tmp_path / 'tether.db'}")
    try:
        run = Run()
        await store.create_run(run.first, owner=None)
        await store.put_object(StoredObject("msg_1", "message", "t1", 1.0, {}, parent_id="thread_1"))
        statements: list[str] = []
        store._db.raw.set_trace_callback(statements.append)
        await store.load(run.id, after=1)
        await store.list_objects("message", "t1", "thread_1", after="msg_0", limit=5)
        await store.list_objects("message", "t1", "thread_1", before="msg_9", limit=5)
        store._db.raw.set_trace_callback(None)
        selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
        assert len(selects) == 3
        plans = [" / ".join(row[3] for row in store._db.raw.execute("EXPLAIN QUERY PLAN " + sql)) for sql in selects]
        for sql, plan in zip(selects, plans, strict=True):
            assert "SEARCH" in plan and "TEMP B-TREE" not in plan, (sql, plan)
        assert "seq>?" in plans[0].replace(" ", "")  # the primary key finds the first newer record
        assert "id>?" in plans[1].replace(" ", "") and "id<?" in plans[2].replace(" ", "")
    finally:
        await store.close()


def _page_in_memory(ids: list[str], *, after: str | None, before: str | None, limit: int | None,
                    order: str) -> list[str]:
    """The page OpenAI's lists give, computed plainly (as the server did over every object)."""
    seq = sorted(ids, reverse=order == "desc")
    asc = order == "asc"
    if after is not None:
        seq = [i for i in seq if (i > after if asc else i < after)]
    if before is not None:
        seq = [i for i in seq if (i < before if asc else i > before)]
        return seq if limit is None else seq[max(len(seq) - limit, 0):]
    return seq if limit is None else seq[:limit]


async def test_a_page_of_objects_by_cursor_in_either_order(any_store: SqlStore | MemoryStore) -> None:
    from tether.domain.objects import StoredObject

    store = any_store
    mine = [f"msg_{n:02d}" for n in range(1, 10, 1)]  # msg_01 .. msg_09, oldest first
    for n, oid in enumerate(mine):
        await store.put_object(StoredObject(oid, "message", "t1", float(n), {"n": n}, parent_id="thread_1"))
    # Beside them: another thread's, another tenant's, another kind's, interleaved by id.
    await store.put_object(StoredObject("msg_045", "message", "t1", 0.0, {}, parent_id="thread_2"))
    await store.put_object(StoredObject("msg_055", "message", "t2", 0.0, {}, parent_id="thread_1"))
    await store.put_object(StoredObject("msg_065", "run", "t1", 0.0, {}, parent_id="thread_1"))

    async def page(**kw: object) -> list[str]:
        return [o.id for o in await store.list_objects("message", "t1", "thread_1", **kw)]  # type: ignore[arg-type]

    assert await page() == mine
    assert await page(limit=3) == ["msg_01", "msg_02", "msg_03"]
    assert await page(after="msg_03", limit=2) == ["msg_04", "msg_05"]
    assert await page(order="desc", limit=3) == ["msg_09", "msg_08", "msg_07"]
    assert await page(order="desc", after="msg_07", limit=2) == ["msg_06", "msg_05"]
    # `before` alone: the ones nearest to the cursor, still in the list's order.
    assert await page(before="msg_07", limit=2) == ["msg_05", "msg_06"]
    assert await page(order="desc", before="msg_03", limit=2) == ["msg_05", "msg_04"]
    assert await page(after="msg_02", before="msg_06") == ["msg_03", "msg_04", "msg_05"]
    assert await page(limit=0) == []
    # A cursor whose object was deleted still places the page.
    assert await store.delete_object("msg_05") is True
    assert await page(after="msg_05", limit=2) == ["msg_06", "msg_07"]
    assert await page(before="msg_05", limit=2, order="desc") == ["msg_07", "msg_06"]
    # Every other object is still outside the parent's pages, and lists of a kind keep no parent filter.
    assert [o.id for o in await store.list_objects("message", "t1")] == [*mine[:4], "msg_045", *mine[5:]]
    assert [o.id for o in await store.list_objects("message", "t1", after="msg_04", limit=2)] == [
        "msg_045", "msg_06"]  # fmt: skip

    # Against the plain computation, for every cursor (present, deleted, outside) and both orders.
    ids = [oid for oid in mine if oid != "msg_05"]
    cursors = [None, "msg_00", "msg_01", "msg_045", "msg_05", "msg_09", "msg_99"]
    for order in ("asc", "desc"):
        for limit in (None, 1, 3):
            for after in cursors:
                for before in cursors:
                    kw = {"after": after, "before": before, "limit": limit, "order": order}
                    assert await page(**kw) == _page_in_memory(ids, **kw), kw  # type: ignore[arg-type]


async def test_insert_and_replace_of_an_object_write_only_over_what_was_read(
    any_store: SqlStore | MemoryStore,
) -> None:
    """The conditional writes two processes meet on: an insert where no row is, a replace of the
    row as it was read; a row someone else wrote meanwhile wins."""
    from tether.domain.objects import StoredObject

    store = any_store
    first = StoredObject("msg_1", "message", "t1", 1.0, {"metadata": {}, "n": 1.5}, parent_id="thread_1")
    assert await store.insert_object(first) is True
    assert await store.insert_object(StoredObject("msg_1", "message_override", "t1", 2.0, {"deleted": True})) is False
    read = await store.get_object("msg_1")
    assert read == first
    changed = dataclasses.replace(first, data={"metadata": {"x": "1"}, "n": 1.5})
    assert await store.replace_object(changed, read) is True  # still as read
    assert await store.replace_object(dataclasses.replace(first, data={"metadata": {"y": "2"}}), read) is False
    tombstone = StoredObject("msg_1", "message_override", "t1", 1.0, {"metadata": {"x": "1"}, "n": 1.5})
    await store.put_object(tombstone)  # same data, another kind: a replace of the message finds nothing
    assert await store.replace_object(changed, changed) is False
    assert await store.get_object("msg_1") == tombstone
    assert await store.replace_object(changed, dataclasses.replace(changed, id="msg_2")) is False  # not one id
    elsewhere = dataclasses.replace(changed, id="msg_2")
    assert await store.replace_object(elsewhere, elsewhere) is False  # no row at that id


async def test_delete_children_deletes_only_those_kinds_under_that_parent(any_store: SqlStore | MemoryStore) -> None:
    """What a deleted thread takes with it: its objects of the kinds named, nothing else."""
    from tether.domain.objects import StoredObject

    store = any_store
    rows = [StoredObject("msg_1", "message", "t1", 1.0, {}, "thread_1"),
            StoredObject("msg_1.change", "message_override", "t1", 1.0, {}, "thread_1"),
            StoredObject("thread_1.projected", "projection", "t1", 1.0, {}, "thread_1"),
            StoredObject("run_1", "run", "t1", 1.0, {}, "thread_1"),  # a run row stays
            StoredObject("msg_2", "message", "t1", 1.0, {}, "thread_2")]  # another thread's stays
    for row in rows:
        await store.put_object(row)
    assert await store.delete_children("thread_1", ["message", "message_override", "projection"]) == 3
    assert [r.id for r in rows if await store.get_object(r.id) is not None] == ["run_1", "msg_2"]
    assert await store.delete_children("thread_1", ["message"]) == 0


async def test_a_page_of_objects_refuses_a_negative_limit_or_an_unknown_order(
    any_store: SqlStore | MemoryStore,
) -> None:
    with pytest.raises(ValueError, match="limit"):
        await any_store.list_objects("message", "t1", limit=-1)
    with pytest.raises(ValueError, match="order"):
        await any_store.list_objects("message", "t1", order="sideways")  # type: ignore[arg-type]


# -- the SQL store's parts, one concept a module ------------------------------------------------


async def test_each_part_of_the_sql_store_works_on_a_bare_database(store_url: str) -> None:
    """The parts compose into SqlStore, but each stands on a `Database` alone (statements run with
    `db.execute`, without a writer to wait for), so that each can be tested by itself."""
    from tether.adapters.store.sql.controls import Controls
    from tether.adapters.store.sql.database import Database
    from tether.adapters.store.sql.leases import Leases
    from tether.adapters.store.sql.objects import Objects
    from tether.adapters.store.sql.runs import Runs
    from tether.adapters.store.sql.writer import GroupCommitWriter
    from tether.domain.objects import StoredObject

    db = Database(store_url)
    writer = GroupCommitWriter(db)
    try:
        runs = Runs(db, writer)
        run = Run()
        await runs.create_run(run.first, owner=None)
        records = [run.model(), run.pause()]
        writer.append(records)
        await writer.sync()
        assert await runs.load(run.id) == [run.first, *records]
        assert await runs.decide(run.id, "pause_1", [run.decision()]) is True

        leases = Leases(db, db.execute)
        assert await leases.acquire_lease(run.id, "a", 30) is True
        assert await leases.acquire_lease(run.id, "b", 30) is False
        assert await leases.take_over_lease(run.id, "a", "b", 30) is True
        controls = Controls(db, db.execute)
        await controls.request_cancel(run.id, "enough")
        assert await controls.cancel_requested(run.id) == "enough"
        objects = Objects(db, db.execute)
        await objects.put_object(StoredObject("asst_1", "assistant", "t1", 1.0, {"name": "a"}))
        assert [o.id for o in await objects.list_objects("assistant", "t1", limit=1)] == ["asst_1"]
        info = await runs.get_run(run.id)
        assert info is not None and info.status == "queued" and info.lease_owner == "b"
    finally:
        await writer.sync()
        writer.close()
        db.close()


def test_the_sql_store_parts_import_only_what_they_build_on() -> None:
    """Each part names the parts below it and no other: the writer knows no runs query, the runs
    index no lease; only `store` composes them all."""
    import ast

    import tether.adapters.store.sql as package

    below = {
        "location": set(),
        "schema": set(),
        "database": {"location"},
        "faults": set(),
        "budgets": {"database"},
        "writer": {"budgets", "database", "faults", "schema"},
        "runs": {"database", "schema", "writer"},
        "leases": {"budgets", "database", "schema"},
        "controls": {"database", "schema"},
        "objects": {"database", "schema"},
        "batches": {"database", "schema"},
        "store": {"batches", "budgets", "controls", "database", "leases", "objects", "runs", "writer"},
    }
    folder = Path(package.__file__).parent
    assert {p.stem for p in folder.glob("*.py")} == {*below, "__init__"}
    prefix = "tether.adapters.store.sql."
    for name, allowed in below.items():
        tree = ast.parse((folder / f"{name}.py").read_text())
        imported = {
            node.module.removeprefix(prefix)
            for node in tree.body  # module level only: not under TYPE_CHECKING, not inside a function
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(prefix)
        }
        assert imported <= allowed, (name, imported - allowed)
