"""The group-commit writer groups the write-ahead: the syncs, ends and new runs of every run due in one
event-loop iteration commit in one transaction, and each caller still gets only its own errors.

(The kill test of the same pipeline is tests/test_write_ahead.py.)
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pg import postgres, postgres_url  # noqa: F401  (fixtures)
from test_store import Run
from tether.adapters.store.sql import SqlStore
from tether.adapters.store.sql.database import StoreError
from tether.domain.errors import StoreConflict
from tether.domain.records import Record, ToolStarted

pytestmark = pytest.mark.anyio


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


def count_transactions(store: SqlStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of runs in each batch the writer commits, from now on."""
    writes: list[int] = []
    writer = store._writer
    real_write = writer._write
    monkeypatch.setattr(writer, "_write", lambda batch: (writes.append(len(batch.groups)), real_write(batch)))
    return writes


async def test_the_syncs_of_runs_due_in_one_iteration_commit_together(
    store: SqlStore, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = [Run() for _ in range(30)]
    for run in runs:
        await store.create_run(run.first, owner=None)
    writes = count_transactions(store, monkeypatch)
    other = SqlStore(store_url)  # reads what is committed

    async def before_a_tool(run: Run) -> None:
        started = run.record(ToolStarted(1, "call_1", "send_mail", "{}"))
        store.append([started])
        await store.sync()  # as before a non-idempotent tool
        assert (await other.load(run.id))[-1] == started  # committed when sync returns

    try:
        await asyncio.gather(*(before_a_tool(run) for run in runs))
    finally:
        await other.close()
    assert writes[0] == 30  # one transaction for every run's tool_started


async def test_in_a_grouped_sync_only_the_conflicting_runs_sync_raises(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = [Run() for _ in range(10)]
    for run in runs:
        await store.create_run(run.first, owner=None)
    writes = count_transactions(store, monkeypatch)
    bad = runs[4]

    async def step(run: Run) -> None:
        record = run.model()
        if run is bad:
            record = Record(run.id, 1, time.time(), record.payload)  # seq 1 is taken: a conflict
        store.append([record])
        await store.sync()

    results = await asyncio.gather(*(step(run) for run in runs), return_exceptions=True)
    assert writes[0] == 10
    for run, result in zip(runs, results, strict=True):
        if run is bad:
            assert isinstance(result, StoreConflict) and bad.id in str(result)
        else:
            assert result is None
            assert [r.kind for r in await store.load(run.id)] == ["run_started", "model_call"]
    assert [r.kind for r in await store.load(bad.id)] == ["run_started"]


async def test_a_sync_raises_its_own_runs_error_from_a_flush_it_did_not_wait_for(store: SqlStore) -> None:
    run, other = Run(), Run()
    for r in (run, other):
        await store.create_run(r.first, owner=None)
    go = asyncio.Event()

    async def another_task() -> None:
        await go.wait()
        store.append([other.model()])
        await store.sync()  # not the other task's error

    task = asyncio.create_task(another_task())  # before this task appends anything
    store.append([Record(run.id, 1, time.time(), run.model().payload)])  # a conflict
    for _ in range(3):  # the scheduled flush commits (and fails) without a sync
        await asyncio.sleep(0)
    go.set()
    await task
    with pytest.raises(StoreConflict, match=run.id):
        await store.sync()
    await store.sync()  # raised once


async def test_runs_started_together_are_created_in_one_transaction_with_their_own_errors(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    existing = Run()
    await store.create_run(existing.first, owner="me")
    writes = count_transactions(store, monkeypatch)
    fresh = [Run() for _ in range(20)]
    same_thread = [Run(thread_id="thread_1"), Run(thread_id="thread_1")]
    again = Run()
    again.id = existing.id
    again.seq = 0
    again.first = again.record(existing.first.payload)

    results = await asyncio.gather(
        *(store.create_run(r.first, owner="me") for r in [*fresh, *same_thread, again]), return_exceptions=True
    )
    assert writes[0] == 23  # tried together first
    assert results[:21] == [None] * 21
    assert isinstance(results[21], StoreConflict)
    assert str(results[21]).startswith(f"thread thread_1 already has an active run ({same_thread[0].id})")
    assert isinstance(results[22], StoreConflict)
    assert str(results[22]) == f"run {existing.id} already exists; a new run needs a new id"
    for r in [*fresh, same_thread[0]]:
        info = await store.get_run(r.id)
        assert info is not None and info.status == "queued" and info.lease_owner == "me"
        assert await store.load(r.id) == [r.first]
    assert await store.get_run(same_thread[1].id) is None
    # The run that exists is untouched, and its writer goes on appending to it.
    store.append([existing.model()])
    await store.sync()
    assert [r.kind for r in await store.load(existing.id)] == ["run_started", "model_call"]


async def test_an_append_with_a_flush_already_scheduled_looks_up_no_event_loop(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = [Run() for _ in range(5)]
    for run in runs:
        await store.create_run(run.first, owner=None)
    lookups = []
    real = asyncio.get_running_loop

    def counted() -> asyncio.AbstractEventLoop:
        lookups.append(1)
        return real()

    monkeypatch.setattr(asyncio, "get_running_loop", counted)
    for run in runs:  # one loop iteration: one flush scheduled, by the first append
        store.append([run.model()])
        store.append([run.finish()])
    assert len(lookups) == 1
    monkeypatch.undo()
    await store.sync()
    for run in runs:
        assert [r.kind for r in await store.load(run.id)] == ["run_started", "model_call", "finished"]


async def test_a_sync_waiting_while_the_store_closes_raises_instead_of_waiting_forever(store_url: str) -> None:
    store = SqlStore(store_url)
    run, late = Run(), Run()
    for r in (run, late):
        await store.create_run(r.first, owner=None)
    store.append([run.model()])  # queued when the close begins: the close's own sync writes it

    async def append_as_it_closes() -> None:
        while store._writer._open is not None:  # the close's flush has taken the queued records
            await asyncio.sleep(0)
        store.append([late.model()])  # queued after it, as the store closes
        await store.sync()

    task = asyncio.create_task(append_as_it_closes())
    await store.close()
    try:
        await asyncio.wait_for(task, 5)  # (a flush after the close never came: this waited forever)
        written = True  # on Postgres, the worker may still have written them as the store closed
    except StoreError as e:
        assert "closed before these records were written" in str(e)
        written = False
    if store_url.startswith("sqlite"):
        assert not written  # always too late there: the flush after the close's is the close's own loop's
    reopened = SqlStore(store_url)
    try:
        assert [r.kind for r in await reopened.load(run.id)] == ["run_started", "model_call"]
        assert [r.kind for r in await reopened.load(late.id)] == ["run_started", "model_call"][:1 + written]
    finally:
        await reopened.close()


def test_a_loop_that_stopped_with_its_flush_queued_does_not_stall_the_next_loop_of_its_thread(
    store_url: str,
) -> None:
    store = SqlStore(store_url)
    run = Run()
    asyncio.run(store.create_run(run.first, owner=None))
    loop = asyncio.new_event_loop()
    tasks = []

    async def append_as_the_loop_stops() -> None:
        async def append() -> None:
            store.append([run.model()])  # its flush is scheduled for an iteration that never comes

        tasks.append(asyncio.ensure_future(append()))  # runs in the iteration of run_until_complete's stop

    loop.run_until_complete(append_as_the_loop_stops())
    loop.close()
    assert store._writer._open is not None  # still queued

    async def next_loop() -> list[str]:
        store.append([run.model()])
        await asyncio.wait_for(store.sync(), 5)  # (failed: a future of the closed loop)
        return [r.kind for r in await store.load(run.id)]

    assert asyncio.run(next_loop()) == ["run_started", "model_call", "model_call"]
    store.append([run.finish()])  # and without a loop, written at once (was: left queued)
    fresh = SqlStore(store_url)
    try:
        assert [r.kind for r in asyncio.run(fresh.load(run.id))][-1] == "finished"
    finally:
        asyncio.run(fresh.close())
        asyncio.run(store.close())


@pytest.mark.postgres
def test_a_plain_append_from_another_thread_never_lets_a_sync_return_before_a_flush_in_flight(
    postgres_url: str,  # noqa: F811
) -> None:
    """Postgres: the flush worker takes a batch only once it may write it. It took the batch first
    and then waited for the database lock, while a thread without a loop (an append written at once)
    flushed under that lock: the worker's batch was no longer the one in flight, and a sync for its
    records returned before they were committed."""
    store = SqlStore(postgres_url)
    mine, theirs = Run(), Run()
    for r in (mine, theirs):
        asyncio.run(store.create_run(r.first, owner=None))
    writer = store._writer
    locked, appended, done = threading.Event(), threading.Event(), threading.Event()

    def plain_thread() -> None:
        with writer._db_lock:  # held across the other thread's flush, as a long write would
            locked.set()
            appended.wait(5)
            time.sleep(0.2)  # the worker is waiting for the lock now
            store.append([theirs.model()])  # no loop in this thread: written at once
            done.set()
            appended.wait(5)
            time.sleep(0.2)  # the loop's sync has had its chance to return early

    async def scenario() -> list[str]:
        thread = threading.Thread(target=plain_thread)
        thread.start()
        locked.wait(5)
        store.append([mine.model()])
        appended.set()
        await asyncio.sleep(0)  # the flush is scheduled: the worker starts
        while not done.is_set():
            await asyncio.sleep(0.01)
        await store.sync()  # this task's record is committed when it returns
        other = SqlStore(postgres_url)
        try:
            return [r.kind for r in await other.load(mine.id)]
        finally:
            await other.close()
            thread.join(5)

    try:
        assert asyncio.run(scenario()) == ["run_started", "model_call"]
    finally:
        asyncio.run(store.close())


async def test_a_plain_append_raises_only_its_own_runs_error_from_the_batch_it_writes(store: SqlStore) -> None:
    mine, theirs = Run(), Run()
    for r in (mine, theirs):
        await store.create_run(r.first, owner=None)
    store.append([Record(theirs.id, 1, time.time(), theirs.model().payload)])  # a conflict, queued here
    outcome: list[BaseException | None] = []

    def plain() -> None:  # a thread without a loop: its append writes the queue at once
        try:
            store.append([mine.model()])
            outcome.append(None)
        except BaseException as e:
            outcome.append(e)

    thread = threading.Thread(target=plain)
    thread.start()
    thread.join(10)  # (the loop is blocked: the queued conflict goes in the thread's flush)
    assert outcome == [None]  # (was: the other run's StoreConflict)
    with pytest.raises(StoreConflict, match=theirs.id):
        await store.sync()  # that error is the other run's, and its sync raises it
    assert [r.kind for r in await store.load(mine.id)] == ["run_started", "model_call"]
