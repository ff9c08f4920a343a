"""The group-commit writer: the SQL store's hot path, `append` + `sync`, and the creation of runs.

`append` only queues records (already serialised) and, once per event-loop iteration, schedules a
flush with `loop.call_soon`; a flush writes every queued record of every run in one transaction
(a grouped commit): one insert of all records and one guarded `UPDATE runs ... WHERE id = ? AND
last_seq = ?` a touched run, computed from a cached `RunInfo`. `create` queues a new run's row and
first record into the same flush. On SQLite the flush runs inline on the event-loop thread with raw
`sqlite3` calls (a thread hop costs more than the commit); on Postgres it runs in one worker
thread, one flush at a time, on the raw psycopg cursor (COPY for the records, one pipelined
executemany for the run rows), and records queued meanwhile go in the next.

`sync` waits for that flush instead of writing at once: every run due in this loop iteration
appends (a non-idempotent tool's `tool_started`, a pause, an end) and syncs, and one commit wakes
them all. When a sync returns, the records its caller appended are committed. Without an event
loop, `append` writes at once.

When a grouped flush fails on a conflict, each run is retried in its own transaction so that only
the conflicting run loses its records; that run is then "broken" in this store until it is loaded
again (`forget`), and `append` to it raises at once. A sync raises only the errors of the runs its
caller (its task's context) appended to; a sync from a context that appended nothing raises any
error of the flushes it waited for.

Every other statement of the store first lets pending appends commit, so that order is kept:
`call` does that. Small writes that many runs make at once (the governor's reservations) are
`submit`ted instead: they run in the next grouped flush, after its records commit, all of that
flush's in one more transaction, so that they too share a commit and wait for no statement of
their own. A settled call's spend (`append(records, spend)`) goes in its records' transaction.
Named fault points (`faults`) let a kill test stop the process inside a flush.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from tether.adapters.store.sql import database
from tether.adapters.store.sql.budgets import apply_spends
from tether.adapters.store.sql.database import Database, StoreError
from tether.adapters.store.sql.faults import fault_point
from tether.adapters.store.sql.schema import (
    INFO_COLUMNS,
    Row,
    info_from_row,
    record_row,
    releases_lease,
    runs_table,
)
from tether.domain.errors import RunNotFound, StoreConflict, TetherError
from tether.domain.governor import Spend
from tether.domain.records import ACTIVE, TERMINAL, Record
from tether.domain.runs import RunInfo, update_info

_CACHE_LIMIT = 10_000  # run rows remembered at most; past it the cache starts again

T = TypeVar("T")
Groups = dict[str, tuple[list[Record], list[Row]]]

# Raw SQLite statements of the hot path.
_SQLITE_INSERT = "INSERT INTO records (run_id, seq, kind, v, ts, payload) VALUES (?, ?, ?, ?, ?, ?)"
_SQLITE_CREATE = (
    f"INSERT INTO runs ({', '.join(INFO_COLUMNS)}, active) VALUES ({', '.join('?' * (len(INFO_COLUMNS) + 1))})"
)
_SQLITE_UPDATE = (
    "UPDATE runs SET status = ?, updated_at = ?, pause_id = ?, last_seq = ?, input_tokens = ?, "
    "output_tokens = ?, cost_usd = ?, output = ?, active = ?, "
    # A pause or the end gives the lease back in the same commit: a paused run holds nothing.
    "lease_owner = CASE WHEN ? THEN NULL ELSE lease_owner END, "
    "lease_expires = CASE WHEN ? THEN NULL ELSE lease_expires END "
    "WHERE id = ? AND last_seq = ?"
)
_SQLITE_SELECT = f"SELECT {', '.join(INFO_COLUMNS)} FROM runs WHERE id = ?"
# The same on Postgres (psycopg's placeholders).
_PG_COPY = "COPY records (run_id, seq, kind, v, ts, payload) FROM STDIN"
_PG_CREATE = _SQLITE_CREATE.replace("?", "%s")
_PG_UPDATE = _SQLITE_UPDATE.replace("?", "%s").replace("CASE WHEN %s", "CASE WHEN %s::boolean")
_PG_SELECT = _SQLITE_SELECT.replace("?", "%s")

# The runs this context (an asyncio task, or a thread) appended to since its last sync: the errors
# its sync raises. A tuple, replaced and never changed, so that a child task never sees its
# parent's later appends nor its parent the child's.
_appended: ContextVar[tuple[str, ...]] = ContextVar("tether_appended_runs", default=())


class _Batch:
    """Records (and new runs) queued for one grouped commit, by run, in append order."""

    __slots__ = ("creates", "done", "errors", "groups", "ops", "spends", "waiters")

    def __init__(self) -> None:
        self.groups: Groups = {}
        self.spends: dict[str, list[Spend]] = {}  # run id -> settled calls' spends, written with its records
        self.ops: list[_Op] = []  # submitted statements: one transaction for all, after the records
        self.creates: dict[str, RunInfo] = {}  # runs this batch creates: their run_started leads their group
        self.done = False
        self.errors: dict[str, Exception] = {}  # run id -> why its records were not written
        self.waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    @property
    def error(self) -> Exception | None:
        return next(iter(self.errors.values()), None)


class _Op:
    """A submitted statement, and where its result goes (a future of the submitter's loop)."""

    __slots__ = ("fn", "future", "loop")

    def __init__(self, fn: Callable[[sa.Connection], Any], loop: asyncio.AbstractEventLoop,
                 future: asyncio.Future[Any]) -> None:
        self.fn, self.loop, self.future = fn, loop, future


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class _RunFailed(Exception):
    """One run's records cannot be written; the others in the batch can."""

    def __init__(self, run_id: str, error: Exception) -> None:
        super().__init__(str(error))
        self.run_id, self.error = run_id, error


def _wake(futures: list[asyncio.Future[None]]) -> None:
    for fut in futures:
        if not fut.done():
            fut.set_result(None)


def _holds(batch: _Batch, runs: tuple[str, ...]) -> bool:
    groups = batch.groups
    if len(runs) == 1:  # the common case: a task advances one run
        return runs[0] in groups
    return any(run_id in groups for run_id in runs)


def _is_conflict(e: BaseException) -> bool:
    """A constraint violation or a lost race (deadlock, serialisation failure): a retry per run helps."""
    if isinstance(e, (sqlite3.IntegrityError, sa_exc.IntegrityError, _RunFailed)):
        return True
    sqlstate = getattr(getattr(e, "orig", None) or e, "sqlstate", None) or ""  # Postgres, through SQLAlchemy or not
    return sqlstate.startswith("23") or sqlstate in ("40P01", "40001")


def _written_spends(spends: dict[str, list[Spend]], groups: Groups, failed: dict[str, Exception]) -> list[Spend]:
    """The spends of the runs whose records this transaction writes (a failed run's go with them)."""
    return [s for run_id in groups if run_id not in failed for s in spends.get(run_id, ())]


def _create_params(info: RunInfo, true: object = 1) -> tuple[object, ...]:
    """A new run row's values, in INFO_COLUMNS order and `active` (`true` or NULL)."""
    return (*(getattr(info, name) for name in INFO_COLUMNS), true if info.status in ACTIVE else None)


class GroupCommitWriter:
    """Appends of many runs, committed together. See the module docstring."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._sqlite = db.sqlite
        self._fault = fault_point()
        self._db_lock = db.lock  # one batch written at a time; on SQLite, the connection's lock
        if db.sqlite:
            self._raw: sqlite3.Connection = db.raw
        self._lock = threading.Lock()  # the queue: _open, _inflight, _draining, _broken
        self._open: _Batch | None = None  # queued, not yet being written
        self._inflight: _Batch | None = None  # being written
        self._draining = False  # a Postgres worker is writing batches
        # The thread whose event loop has a flush scheduled (and that loop): an append from that
        # thread needs no loop lookup (`get_running_loop` costs a getpid() on CPython 3.11).
        self._ticking: tuple[int, asyncio.AbstractEventLoop] | None = None
        self._broken: dict[str, Exception] = {}  # runs whose records failed; cleared by forget()
        self._infos: dict[str, RunInfo] = {}  # run rows as this store last wrote them
        self._closed = False
        self._pool: ThreadPoolExecutor | None = None
        if not db.sqlite:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="tether-store-flush")
        self._flush_conn: sa.Connection | None = None  # Postgres: the flush's own connection
        self._flush_used = 0.0  # when it was last used (time.monotonic())

    @property
    def closed(self) -> bool:
        return self._closed

    # -- what the rest of the store tells the writer about runs ----------------------------------

    def known(self, info: RunInfo) -> None:
        """The run's row is `info` now, written by this store outside a flush (decided)."""
        self._broken.pop(info.id, None)
        self._infos[info.id] = info

    def forget(self, run_id: str) -> None:
        """Whoever loads a whole run starts from the log: forget what this writer remembered about it
        (a run whose records failed can be appended to again)."""
        self._broken.pop(run_id, None)
        self._infos.pop(run_id, None)

    async def call(self, fn: Callable[[sa.Connection], T]) -> T:
        """Run `fn(conn)` after pending appends commit (their errors go to their runs' next sync())."""
        await self.drain()
        return await self._db.execute(fn)

    async def submit(self, fn: Callable[[sa.Connection], T]) -> T:
        """Run `fn(conn)` in the next grouped flush, after its records commit, in one transaction with
        every other statement submitted for that flush (`fn` opens none of its own). If any of them
        raises, none of them is committed and each raises that error."""
        if self._closed:
            raise StoreError("the store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            batch = self._open
            if batch is None:
                batch = self._open = _Batch()
            batch.ops.append(_Op(fn, loop, future))
        self._schedule(loop)
        return await future

    # -- the hot path ---------------------------------------------------------------------------

    def append(self, records: Sequence[Record], spend: Spend | None = None) -> None:
        if self._closed:
            raise StoreError("the store is closed")
        if not records:
            return
        broken = self._broken
        mine = _appended.get()
        seen = mine
        for r in records:
            run_id = r.run_id
            if broken and run_id in broken:
                raise self._broken_error(run_id)
            if run_id not in seen:
                seen += (run_id,)
        rows = [record_row(r) for r in records]  # serialise first: a bad payload queues nothing
        with self._lock:
            batch = self._open
            if batch is None:
                batch = self._open = _Batch()
            groups = batch.groups
            for r, row in zip(records, rows, strict=True):
                group = groups.get(r.run_id)
                if group is None:
                    groups[r.run_id] = ([r], [row])
                else:
                    group[0].append(r)
                    group[1].append(row)
            if spend is not None:  # it commits with these records, in their run's transaction
                batch.spends.setdefault(records[-1].run_id, []).append(spend)
        ticking = self._ticking
        # Else this thread's loop flushes soon. (A loop that stopped with its flush still queued, and
        # another loop, or none, runs in this thread now: that flush may never come.)
        if ticking is None or ticking[0] != threading.get_ident() or not ticking[1].is_running():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no event loop: plain synchronous use, written (or raised) at once
                self._flush_blocking(None)  # (or another thread's flush took these records meanwhile)
                for r in records:  # this append's runs' errors only: none of them was broken before
                    if broken and (error := broken.get(r.run_id)) is not None:
                        raise error from None
                return
            self._schedule(loop)
        if seen is not mine:
            _appended.set(seen)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        """A flush at this loop's next iteration (one at a time a thread)."""
        ticking, thread = self._ticking, threading.get_ident()
        if ticking is None or ticking[0] != thread or ticking[1] is not loop:
            self._ticking = (thread, loop)
            loop.call_soon(self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        ticking = self._ticking
        if ticking is not None and ticking[1] is loop:
            self._ticking = None
        if self._closed:
            self._fail_queued(loop)
            return
        if self._sqlite:
            self._flush_blocking(loop)
        else:
            with self._lock:
                self._start_worker()

    async def create(self, record: Record, info: RunInfo) -> None:
        """Create a run (its row `info` and its first record) in the next grouped commit.
        Raises StoreConflict if the run exists or its thread has an active run."""
        if self._closed:
            raise StoreError("the store is closed")
        row = record_row(record)
        run_id = record.run_id
        while True:
            with self._lock:
                batch = self._open
                if batch is None or run_id not in batch.groups:
                    if batch is None:
                        batch = self._open = _Batch()
                    batch.groups[run_id] = ([record], [row])
                    batch.creates[run_id] = info
                    break
            await self._wait((run_id,))  # records of this run id wait for a flush: they go first
        await self._wait(batch=batch)
        error = batch.errors.get(run_id)
        if error is not None:
            raise error

    async def sync(self) -> None:
        """Wait until the records this context appended are committed (the next grouped flush)."""
        mine = _appended.get()
        if mine:
            _appended.set(())
        waited = await self._wait(mine)
        if mine:
            broken = self._broken
            for run_id in mine:
                for batch in waited:
                    if (error := batch.errors.get(run_id)) is not None:
                        raise error
                if broken and (error := broken.get(run_id)) is not None:
                    raise error
        else:  # a sync that appended nothing itself: whatever it waited for
            for batch in waited:
                if batch.error is not None:
                    raise batch.error

    async def drain(self) -> None:
        """Let pending appends commit before another statement; their errors go to their runs' next
        sync(). Like a sync, it waits for the next grouped flush: statements of many runs in one loop
        iteration (a heartbeat, a check for a cancel) must not each commit a batch of their own."""
        if self._closed:
            raise StoreError("the store is closed")
        await self._wait()

    async def _wait(
        self, runs: tuple[str, ...] = (), *, batch: _Batch | None = None
    ) -> list[_Batch]:
        """Wait for the queued batches holding records of `runs` (every batch if none are named), or
        for `batch`, and return them. Their flush comes at this loop's next iteration."""
        ticking = self._ticking  # with a flush scheduled from this thread, its loop is the running one
        mine = ticking is not None and ticking[0] == threading.get_ident() and ticking[1].is_running()
        loop = ticking[1] if mine and ticking is not None else asyncio.get_running_loop()
        pending: list[_Batch] = []
        futures = []
        with self._lock:
            for b in (self._inflight, self._open):
                if b is None or (batch is not None and b is not batch) or (runs and not _holds(b, runs)):
                    continue
                pending.append(b)
                fut = loop.create_future()
                b.waiters.append((loop, fut))
                futures.append(fut)
            if not pending:
                return pending
        self._schedule(loop)
        for fut in futures:
            await fut
        return pending

    def _flush_blocking(self, loop: asyncio.AbstractEventLoop | None) -> _Batch | None:
        """Write the queued records in this thread (SQLite on the loop thread; any store without a
        loop). `loop` is this thread's running loop, if any: its waiters are woken directly."""
        with self._db_lock:
            with self._lock:
                batch, self._open = self._open, None
                if batch is None:
                    return None
                self._inflight = batch
            self._commit(batch, loop)
        return batch

    def _commit(self, batch: _Batch, loop: asyncio.AbstractEventLoop | None) -> None:
        """Write the batch in flight (under the database lock), then its ops (reservations and the
        like, after its records), then wake its waiters, whatever failed."""
        try:
            self._write(batch)
        finally:
            try:
                if batch.ops:
                    self._run_ops(batch.ops, loop)
            finally:
                with self._lock:
                    self._inflight = None
                    self._settle(batch, loop)

    def _settle(self, batch: _Batch, loop: asyncio.AbstractEventLoop | None) -> None:
        """After a batch was written or failed (with self._lock held): mark its failed runs, wake
        its waiters."""
        batch.done = True
        for run_id, error in batch.errors.items():
            if run_id in batch.creates:
                continue  # a run that could not be created is not this writer's to break
            self._broken[run_id] = error
            if self._open is not None:
                self._open.groups.pop(run_id, None)  # appended after the failed ones: never written
                self._open.spends.pop(run_id, None)
        elsewhere: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for wloop, fut in batch.waiters:
            if wloop is loop:
                if not fut.done():
                    fut.set_result(None)
            else:
                elsewhere.setdefault(wloop, []).append(fut)
        for wloop, futures in elsewhere.items():  # one wake-up of another thread's loop for all of them
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting any more
                wloop.call_soon_threadsafe(_wake, futures)
        if self._fault is not None and batch.groups and self._fault.reached("commit.wake"):
            target = loop or (batch.waiters[0][0] if batch.waiters else None)
            if target is None:
                self._fault.die()
            else:
                self._fault.die_later(target)

    def _run_ops(self, ops: list[_Op], loop: asyncio.AbstractEventLoop | None) -> None:
        """The submitted statements of a flush, in one transaction; their results to their futures. A
        lost race (Postgres: two processes' transactions locking budgets crosswise) runs each alone."""
        try:
            outcomes: list[tuple[Any, BaseException | None]] = [(r, None) for r in self._ops_tx(ops)]
        except Exception as e:
            if len(ops) > 1 and _is_conflict(e):
                outcomes = []
                for op in ops:
                    try:
                        outcomes.append((self._ops_tx([op])[0], None))
                    except Exception as e1:
                        outcomes.append((None, self._wrap(e1)))
            else:
                outcomes = [(None, self._wrap(e))] * len(ops)
        for op, (result, error) in zip(ops, outcomes, strict=True):
            if op.loop is loop:
                _resolve(op.future, result, error)
            else:
                with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting any more
                    op.loop.call_soon_threadsafe(_resolve, op.future, result, error)

    def _ops_tx(self, ops: list[_Op]) -> list[Any]:
        if self._sqlite:
            conn = self._db.conn
            with self._db.tx(conn, write=True):
                return [op.fn(conn) for op in ops]
        with self._db.engine.connect() as conn, conn.begin():
            return [op.fn(conn) for op in ops]

    def _fail_queued(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """The store is closed: records still queued (appended while it closed) are never written.
        Their syncs raise that instead of waiting for a flush that will not come."""
        with self._lock:
            batch, self._open = self._open, None
            if batch is None:
                return
            error = StoreError(f"the store at {self._db.url} was closed before these records were written")
            batch.errors = dict.fromkeys(batch.groups, error)
            for op in batch.ops:
                with contextlib.suppress(RuntimeError):
                    op.loop.call_soon_threadsafe(_resolve, op.future, None, error)
            self._settle(batch, loop)

    def _broken_error(self, run_id: str) -> Exception:
        error = self._broken[run_id]
        kind = StoreConflict if isinstance(error, StoreConflict) else StoreError
        return kind(
            f"run {run_id}: an earlier write of its records failed ({error}); "
            "load the run again (store.load) before appending to it"
        )

    # Postgres: one worker thread writes batches one after another.

    def _start_worker(self) -> None:  # with self._lock held
        if not self._draining and self._open is not None and self._pool is not None:
            self._draining = True
            self._pool.submit(self._worker)

    def _worker(self) -> None:
        while True:
            # A batch is taken only under the database lock, as `_flush_blocking` takes one: else a
            # flush of another thread, under that lock meanwhile, would replace it as the one in flight.
            with self._db_lock:
                with self._lock:
                    batch = self._open
                    if batch is None:
                        self._draining = False
                        return
                    self._open, self._inflight = None, batch
                self._commit(batch, None)

    # -- writing a batch ------------------------------------------------------------------------

    def _write(self, batch: _Batch) -> None:
        """Commit the batch; on a conflict, retry each run alone so only the conflicting one fails.
        Fills `batch.errors`; never raises for a database error."""
        groups, creates, spends = batch.groups, batch.creates, batch.spends
        if not groups:
            return
        write = self._write_sqlite if self._sqlite else self._write_postgres
        errors: dict[str, Exception] = {}
        try:
            failed = write(groups, creates, use_cache=True, spends=spends)
            errors.update(failed)
        except Exception as e:
            for run_id in groups:
                self._infos.pop(run_id, None)
            if not _is_conflict(e):
                wrapped = self._wrap(e)
                errors = dict.fromkeys(groups, wrapped)
            elif len(groups) == 1:
                (run_id,) = groups
                errors[run_id] = self._conflict(run_id, groups[run_id][0], creates, e)
            else:
                for run_id, group in groups.items():
                    try:
                        errors.update(write({run_id: group}, creates, use_cache=False, spends=spends))
                    except Exception as e1:
                        self._infos.pop(run_id, None)
                        errors[run_id] = (
                            self._conflict(run_id, group[0], creates, e1) if _is_conflict(e1) else self._wrap(e1)
                        )
        if errors:
            batch.errors = errors
        if len(self._infos) > _CACHE_LIMIT:
            self._infos.clear()

    def _wrap(self, e: Exception) -> Exception:
        if isinstance(e, TetherError):
            return e
        detail = getattr(e, "orig", None) or e
        return StoreError(f"could not write to {self._db.url}: {detail}")

    def _conflict(self, run_id: str, records: list[Record], creates: dict[str, RunInfo], e: Exception) -> Exception:
        if isinstance(e, _RunFailed):
            return e.error
        if run_id in creates:
            return self._create_conflict(creates[run_id])
        return StoreConflict(
            f"run {run_id}: records {records[0].seq}..{records[-1].seq} conflict with records already in "
            "its log (another actor advanced this run); load the run again before continuing it"
        )

    def _create_conflict(self, info: RunInfo) -> StoreConflict:
        """Why a new run's row was refused: its id is taken, or its thread has an active run."""

        def query(conn: sa.Connection) -> tuple[object, object]:
            with self._db.tx(conn, write=False):
                other = None
                if info.thread_id is not None:
                    other = conn.execute(
                        sa.select(runs_table.c.id).where(
                            runs_table.c.thread_id == info.thread_id, runs_table.c.active.is_(True)
                        )
                    ).scalar()
                exists = conn.execute(sa.select(runs_table.c.id).where(runs_table.c.id == info.id)).scalar()
                return exists, other

        try:
            if self._sqlite:
                exists, other = query(self._db.conn)
            else:
                with self._db.engine.connect() as conn:
                    exists, other = query(conn)
        except Exception:  # the database is gone as well: say what is known
            exists = other = None
        if exists is not None:
            return StoreConflict(f"run {info.id} already exists; a new run needs a new id")
        if other is not None:
            return StoreConflict(
                f"thread {info.thread_id} already has an active run ({other}); "
                "wait for it, answer its pause, or cancel it before starting another"
            )
        return StoreConflict(f"run {info.id} could not be created: it conflicts with a stored run")

    def _plan(
        self,
        groups: Groups,
        creates: dict[str, RunInfo],
        use_cache: bool,
        read: Callable[[str], RunInfo | None],
    ) -> tuple[list[tuple[RunInfo, int]], list[RunInfo], dict[str, Exception]]:
        """The changed run rows (each with the last_seq it must still have), the new run rows, and
        the runs that cannot be written: unknown, or whose records do not follow their log."""
        updates: list[tuple[RunInfo, int]] = []
        inserts: list[RunInfo] = []
        failed: dict[str, Exception] = {}
        infos = self._infos
        for run_id, (recs, _) in groups.items():
            created = creates.get(run_id) if creates else None
            info: RunInfo | None
            if created is not None:  # a new run: its row holds what all of its records say
                info = copy.copy(created)  # a retry plans again from the same start
                recs = recs[1:]
            else:
                info = infos.get(run_id) if use_cache else None
                if info is None or info.last_seq != recs[0].seq - 1:
                    info = read(run_id)
                    if info is None:
                        failed[run_id] = RunNotFound(
                            f"run {run_id} does not exist; create it (create_run) before appending records"
                        )
                        continue
            assert info is not None
            prev = info.last_seq
            for r in recs:
                if r.seq != info.last_seq + 1:
                    failed[run_id] = StoreConflict(
                        f"run {run_id}: record {r.seq} conflicts with the log (at {info.last_seq}); "
                        "another actor may have advanced this run: load it again"
                    )
                    infos.pop(run_id, None)
                    break
                update_info(info, r)
            else:
                if created is not None:
                    inserts.append(info)
                else:
                    updates.append((info, prev))
        return updates, inserts, failed

    def _remember(self, updates: list[tuple[RunInfo, int]], inserts: list[RunInfo]) -> None:
        infos = self._infos
        for info, _ in updates:
            if info.status in TERMINAL:
                infos.pop(info.id, None)
            else:
                infos[info.id] = info
        for info in inserts:
            self._broken.pop(info.id, None)  # a new run: nothing of an earlier one under its id holds
            if info.status not in TERMINAL:
                infos[info.id] = info

    def _write_sqlite(self, groups: Groups, creates: dict[str, RunInfo], use_cache: bool,
                      spends: dict[str, list[Spend]]) -> dict[str, Exception]:
        raw = self._raw
        raw.execute("BEGIN IMMEDIATE")
        try:
            updates, inserts, failed = self._plan(groups, creates, use_cache, self._read_sqlite)
            if inserts:
                raw.executemany(_SQLITE_CREATE, [_create_params(info) for info in inserts])
            if failed:
                rows = [row for run_id, g in groups.items() if run_id not in failed for row in g[1]]
            elif len(groups) == 1:
                rows = next(iter(groups.values()))[1]
            else:
                rows = [row for g in groups.values() for row in g[1]]
            if len(rows) == 1:
                raw.execute(_SQLITE_INSERT, rows[0])
            elif rows:
                raw.executemany(_SQLITE_INSERT, rows)
            params = [
                (info.status, info.updated_at, info.pause_id, info.last_seq, info.input_tokens,
                 info.output_tokens, info.cost_usd, info.output, 1 if info.status in ACTIVE else None,
                 releases_lease(info), releases_lease(info), info.id, prev)
                for info, prev in updates
            ]  # fmt: skip
            if len(params) == 1:
                changed = raw.execute(_SQLITE_UPDATE, params[0]).rowcount
            elif params:
                changed = raw.executemany(_SQLITE_UPDATE, params).rowcount
            else:
                changed = 0
            if changed != len(params):  # some run's row moved under this writer: name it
                for info, _ in updates:
                    row = raw.execute("SELECT last_seq FROM runs WHERE id = ?", (info.id,)).fetchone()
                    if row is None or row[0] != info.last_seq:
                        raise _RunFailed(
                            info.id, StoreConflict(f"run {info.id}: its row changed under this writer")
                        )
            if spends:
                apply_spends(raw, _written_spends(spends, groups, failed), postgres=False)
            if self._fault is not None and self._fault.reached("commit.before"):
                self._fault.die()
            raw.execute("COMMIT")
        except BaseException:
            if raw.in_transaction:
                raw.execute("ROLLBACK")
            raise
        if self._fault is not None and self._fault.reached("commit.after"):
            self._fault.die()
        self._remember(updates, inserts)
        return failed

    def _read_sqlite(self, run_id: str) -> RunInfo | None:
        row = self._raw.execute(_SQLITE_SELECT, (run_id,)).fetchone()
        return info_from_row(row) if row is not None else None

    def _write_postgres(
        self, groups: Groups, creates: dict[str, RunInfo], use_cache: bool, spends: dict[str, list[Spend]]
    ) -> dict[str, Exception]:
        # Runs in a fixed order (by id) so that two processes' flushes lock rows in the same order.
        ordered = dict(sorted(groups.items()))
        conn = self._flush_conn
        if conn is not None and time.monotonic() - self._flush_used > database.PING_AFTER_IDLE_S \
                and not self._alive(conn):  # idle a while: the server may have dropped it meanwhile
            self._flush_conn = conn = None
        if conn is None:  # the flush keeps one connection: no pool checkout, ping or reset a flush
            conn = self._flush_conn = self._db.engine.connect()
        self._flush_used = time.monotonic()
        try:
            with conn.begin():
                # The raw driver: its executemany sends a batch's statements in one pipeline, where
                # one statement a run would cost a round trip each.
                with conn.connection.dbapi_connection.cursor() as cur:  # type: ignore[union-attr]
                    updates, inserts, failed = self._write_postgres_tx(cur, ordered, creates, use_cache)
                    if spends:
                        apply_spends(cur, _written_spends(spends, ordered, failed), postgres=True)
                if self._fault is not None and self._fault.reached("commit.before"):
                    self._fault.die()
        except Exception as e:
            if not _is_conflict(e):  # the connection may be broken: take a fresh one next time
                self._flush_conn = None
                with contextlib.suppress(Exception):
                    conn.close()
            raise
        if self._fault is not None and self._fault.reached("commit.after"):
            self._fault.die()
        self._remember(updates, inserts)
        return failed

    def _alive(self, conn: sa.Connection) -> bool:
        """Ping the flush's idle connection, as the pool pings one idle as long (a restart of the
        server, or its idle timeout, leaves it dead): else the next batch of every run would fail."""
        try:
            dbapi = conn.connection.dbapi_connection
            return dbapi is not None and bool(self._db.engine.dialect.do_ping(dbapi))
        except Exception:
            with contextlib.suppress(Exception):
                conn.close()
            return False

    def _write_postgres_tx(
        self, cur: Any, ordered: Groups, creates: dict[str, RunInfo], use_cache: bool
    ) -> tuple[list[tuple[RunInfo, int]], list[RunInfo], dict[str, Exception]]:
        def read(run_id: str) -> RunInfo | None:
            cur.execute(_PG_SELECT, (run_id,))
            row = cur.fetchone()
            return info_from_row(row) if row is not None else None

        updates, inserts, failed = self._plan(ordered, creates, use_cache, read)
        if inserts:
            cur.executemany(_PG_CREATE, [_create_params(info, True) for info in inserts])
        rows = [row for run_id, g in ordered.items() if run_id not in failed for row in g[1]]
        if rows:  # COPY: half the driver's work of an executemany of inserts
            with cur.copy(_PG_COPY) as copy:
                for row in rows:
                    copy.write_row(row)
        if updates:
            cur.executemany(_PG_UPDATE, [
                (info.status, info.updated_at, info.pause_id, info.last_seq, info.input_tokens,
                 info.output_tokens, info.cost_usd, info.output, True if info.status in ACTIVE else None,
                 releases_lease(info), releases_lease(info), info.id, prev)
                for info, prev in updates
            ])  # fmt: skip
            if cur.rowcount != len(updates):  # some run's row moved under this writer: name it
                for info, _ in updates:
                    cur.execute("SELECT last_seq FROM runs WHERE id = %s", (info.id,))
                    row = cur.fetchone()
                    if row is None or row[0] != info.last_seq:
                        raise _RunFailed(
                            info.id, StoreConflict(f"run {info.id}: its row changed under this writer")
                        )
        return updates, inserts, failed

    def close(self) -> None:
        """Stop writing (the caller synced first): the Postgres worker and its connection end."""
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._fail_queued(None)
        if self._flush_conn is not None:
            with self._db_lock, contextlib.suppress(Exception):
                self._flush_conn.close()
