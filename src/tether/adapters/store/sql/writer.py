"""The group-commit writer: the SQL store's hot path, `append` + `sync`.

`append` only queues records (already serialised) and, once per event-loop iteration, schedules a
flush with `loop.call_soon`; a flush writes every queued record of every run in one transaction
(a grouped commit): one insert of all records and one guarded `UPDATE runs ... WHERE id = ? AND
last_seq = ?` a touched run, computed from a cached `RunInfo`. On SQLite the flush runs inline on
the event-loop thread with raw `sqlite3` calls (a thread hop costs more than the commit); on
Postgres it runs in one worker thread, one flush at a time, and records queued meanwhile go in the
next. When a grouped flush fails on a conflict, each run is retried in its own transaction so that
only the conflicting run loses its records; that run is then "broken" in this store until it is
loaded again (`forget`), and `append` to it raises at once.

Every other statement of the store first lets pending appends commit, so that order is kept:
`call` does that.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from tether.adapters.store.sql.database import Database, StoreError
from tether.adapters.store.sql.schema import (
    INFO_COLUMNS,
    RECORD_COLUMNS,
    Row,
    read_info,
    record_row,
    records_table,
    releases_lease,
    runs_table,
    update_values,
)
from tether.domain.errors import RunNotFound, StoreConflict, TetherError
from tether.domain.records import ACTIVE, TERMINAL, Record
from tether.domain.runs import RunInfo, update_info

_CACHE_LIMIT = 10_000  # run rows remembered at most; past it the cache starts again

T = TypeVar("T")

# Raw SQLite statements of the hot path.
_SQLITE_INSERT = "INSERT INTO records (run_id, seq, kind, v, ts, payload) VALUES (?, ?, ?, ?, ?, ?)"
_SQLITE_UPDATE = (
    "UPDATE runs SET status = ?, updated_at = ?, pause_id = ?, last_seq = ?, input_tokens = ?, "
    "output_tokens = ?, cost_usd = ?, output = ?, active = ?, "
    # A pause or the end gives the lease back in the same commit: a paused run holds nothing.
    "lease_owner = CASE WHEN ? THEN NULL ELSE lease_owner END, "
    "lease_expires = CASE WHEN ? THEN NULL ELSE lease_expires END "
    "WHERE id = ? AND last_seq = ?"
)
_SQLITE_SELECT = f"SELECT {', '.join(INFO_COLUMNS)} FROM runs WHERE id = ?"


class _Batch:
    """Records queued for one grouped commit, by run, in append order."""

    __slots__ = ("done", "error", "errors", "groups", "reporters", "waiters")

    def __init__(self) -> None:
        self.groups: dict[str, tuple[list[Record], list[Row]]] = {}
        self.done = False
        self.error: Exception | None = None  # the first of `errors`
        self.errors: dict[str, Exception] = {}  # run id -> why its records were not written
        self.waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self.reporters = 0  # waiters that will raise `error` (sync), as opposed to merely wait


class _RunFailed(Exception):
    """One run's records cannot be written; the others in the batch can."""

    def __init__(self, run_id: str, error: Exception) -> None:
        super().__init__(str(error))
        self.run_id, self.error = run_id, error


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _is_conflict(e: BaseException) -> bool:
    """A constraint violation or a lost race (deadlock, serialisation failure): a retry per run helps."""
    if isinstance(e, (sqlite3.IntegrityError, sa_exc.IntegrityError, _RunFailed)):
        return True
    orig = getattr(e, "orig", None)
    return getattr(orig, "sqlstate", None) in ("40P01", "40001")


class GroupCommitWriter:
    """Appends of many runs, committed together. See the module docstring."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._sqlite = db.sqlite
        self._db_lock = db.lock  # one batch written at a time; on SQLite, the connection's lock
        if db.sqlite:
            self._raw: sqlite3.Connection = db.raw
        self._lock = threading.Lock()  # the queue: _open, _inflight, _draining, _broken, _unreported
        self._open: _Batch | None = None  # queued, not yet being written
        self._inflight: _Batch | None = None  # being written (Postgres worker)
        self._draining = False  # a Postgres worker is writing batches
        self._tick_loop: asyncio.AbstractEventLoop | None = None  # loop with a flush scheduled
        self._unreported: list[Exception] = []  # errors of flushes no sync() waited on
        self._broken: dict[str, Exception] = {}  # runs whose records failed; cleared by forget()
        self._infos: dict[str, RunInfo] = {}  # run rows as this store last wrote them
        self._closed = False
        self._pool: ThreadPoolExecutor | None = None
        if not db.sqlite:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="tether-store-flush")
        self._flush_conn: sa.Connection | None = None  # Postgres: the flush's own connection

    @property
    def closed(self) -> bool:
        return self._closed

    # -- what the rest of the store tells the writer about runs ----------------------------------

    def known(self, info: RunInfo) -> None:
        """The run's row is `info` now, written by this store outside a flush (created, decided)."""
        self._broken.pop(info.id, None)
        self._infos[info.id] = info

    def forget(self, run_id: str) -> None:
        """Whoever loads a whole run starts from the log: forget what this writer remembered about it
        (a run whose records failed can be appended to again)."""
        self._broken.pop(run_id, None)
        self._infos.pop(run_id, None)

    async def call(self, fn: Callable[[sa.Connection], T]) -> T:
        """Run `fn(conn)` after pending appends commit (their errors go to the next sync())."""
        await self.drain()
        return await self._db.execute(fn)

    # -- the hot path ---------------------------------------------------------------------------

    def append(self, records: Sequence[Record]) -> None:
        if self._closed:
            raise StoreError("the store is closed")
        if not records:
            return
        broken = self._broken
        if broken:
            for r in records:
                if r.run_id in broken:
                    raise self._broken_error(r.run_id)
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
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop: plain synchronous use
            self._flush_blocking(report=True)
            return
        if self._tick_loop is not loop:
            self._tick_loop = loop
            loop.call_soon(self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._tick_loop is loop:
            self._tick_loop = None
        if self._closed:
            return
        if self._sqlite:
            self._flush_blocking(report=False)
        else:
            with self._lock:
                self._start_worker()

    async def sync(self) -> None:
        if self._sqlite:
            self._flush_blocking(report=True)
        else:
            await self._wait(report=True)

    def _flush_blocking(self, *, report: bool) -> None:
        """Write the queued records in this thread (SQLite on the loop thread; any store without a loop)."""
        with self._db_lock:
            with self._lock:
                batch, self._open = self._open, None
            if batch is not None:
                self._write(batch)
                with self._lock:
                    self._settle(batch, report=report)
        if report:
            self._raise_errors([batch] if batch is not None else [])

    def _raise_errors(self, batches: list[_Batch]) -> None:
        errors = [b.error for b in batches if b.error is not None]
        with self._lock:
            errors += self._unreported
            self._unreported.clear()
        if errors:
            raise errors[0]

    def _settle(self, batch: _Batch, *, report: bool = False) -> None:
        """After a batch was written or failed (with self._lock held)."""
        batch.done = True
        for run_id, error in batch.errors.items():
            self._broken[run_id] = error
            if self._open is not None:
                self._open.groups.pop(run_id, None)  # appended after the failed ones: never written
        if batch.error is not None and not report and batch.reporters == 0:
            self._unreported.append(batch.error)
        for loop, fut in batch.waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting any more
                loop.call_soon_threadsafe(_wake, fut)

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
            with self._lock:
                batch = self._open
                if batch is None:
                    self._draining = False
                    return
                self._open, self._inflight = None, batch
            try:
                with self._db_lock:
                    self._write(batch)
            finally:
                with self._lock:
                    self._inflight = None
                    self._settle(batch)

    async def _wait(self, *, report: bool) -> None:
        """Wait until everything queued before the call is written (Postgres)."""
        loop = asyncio.get_running_loop()
        futures = []
        with self._lock:
            batches = [b for b in (self._inflight, self._open) if b is not None]
            for b in batches:
                fut = loop.create_future()
                b.waiters.append((loop, fut))
                futures.append(fut)
                if report:
                    b.reporters += 1
            self._start_worker()
        try:
            for fut in futures:
                await fut
        except BaseException:  # cancelled: the errors this call would have raised go to the next sync()
            if report:
                with self._lock:
                    for b in batches:
                        b.reporters -= 1
                        if b.done and b.error is not None and b.reporters == 0:
                            self._unreported.append(b.error)
            raise
        if report:
            self._raise_errors(batches)

    async def drain(self) -> None:
        """Let pending appends commit before another statement; their errors go to the next sync()."""
        if self._closed:
            raise StoreError("the store is closed")
        if self._sqlite:
            self._flush_blocking(report=False)
        else:
            await self._wait(report=False)

    # -- writing a batch ------------------------------------------------------------------------

    def _write(self, batch: _Batch) -> None:
        """Commit the batch; on a conflict, retry each run alone so only the conflicting one fails.
        Fills `batch.errors`/`batch.error`; never raises for a database error."""
        groups = batch.groups
        if not groups:
            return
        write = self._write_sqlite if self._sqlite else self._write_core
        errors: dict[str, Exception] = {}
        try:
            failed = write(groups, use_cache=True)
            errors.update(failed)
        except Exception as e:
            for run_id in groups:
                self._infos.pop(run_id, None)
            if not _is_conflict(e):
                wrapped = self._wrap(e)
                errors = dict.fromkeys(groups, wrapped)
            elif len(groups) == 1:
                (run_id,) = groups
                errors[run_id] = self._conflict(run_id, groups[run_id][0], e)
            else:
                for run_id, group in groups.items():
                    try:
                        errors.update(write({run_id: group}, use_cache=False))
                    except Exception as e1:
                        self._infos.pop(run_id, None)
                        errors[run_id] = (
                            self._conflict(run_id, group[0], e1) if _is_conflict(e1) else self._wrap(e1)
                        )
        if errors:
            batch.errors = errors
            batch.error = next(iter(errors.values()))
        if len(self._infos) > _CACHE_LIMIT:
            self._infos.clear()

    def _wrap(self, e: Exception) -> Exception:
        if isinstance(e, TetherError):
            return e
        detail = getattr(e, "orig", None) or e
        return StoreError(f"could not write to {self._db.url}: {detail}")

    @staticmethod
    def _conflict(run_id: str, records: list[Record], e: Exception) -> Exception:
        if isinstance(e, _RunFailed):
            return e.error
        return StoreConflict(
            f"run {run_id}: records {records[0].seq}..{records[-1].seq} conflict with records already in "
            "its log (another actor advanced this run); load the run again before continuing it"
        )

    def _plan(
        self,
        groups: dict[str, tuple[list[Record], list[Row]]],
        use_cache: bool,
        read: Callable[[str], RunInfo | None],
    ) -> tuple[list[tuple[RunInfo, int]], dict[str, Exception]]:
        """The new run rows (each with the last_seq it must still have), and the runs that cannot be
        written: unknown, or whose records do not follow their log."""
        updates: list[tuple[RunInfo, int]] = []
        failed: dict[str, Exception] = {}
        infos = self._infos
        for run_id, (recs, _) in groups.items():
            info = infos.get(run_id) if use_cache else None
            if info is None or info.last_seq != recs[0].seq - 1:
                info = read(run_id)
                if info is None:
                    failed[run_id] = RunNotFound(
                        f"run {run_id} does not exist; create it (create_run) before appending records"
                    )
                    continue
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
                updates.append((info, prev))
        return updates, failed

    def _remember(self, updates: list[tuple[RunInfo, int]]) -> None:
        for info, _ in updates:
            if info.status in TERMINAL:
                self._infos.pop(info.id, None)
            else:
                self._infos[info.id] = info

    def _write_sqlite(
        self, groups: dict[str, tuple[list[Record], list[Row]]], use_cache: bool
    ) -> dict[str, Exception]:
        raw = self._raw
        raw.execute("BEGIN IMMEDIATE")
        try:
            updates, failed = self._plan(groups, use_cache, self._read_sqlite)
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
            else:
                changed = raw.executemany(_SQLITE_UPDATE, params).rowcount
            if changed != len(params):  # some run's row moved under this writer: name it
                for info, _ in updates:
                    row = raw.execute("SELECT last_seq FROM runs WHERE id = ?", (info.id,)).fetchone()
                    if row is None or row[0] != info.last_seq:
                        raise _RunFailed(
                            info.id, StoreConflict(f"run {info.id}: its row changed under this writer")
                        )
            raw.execute("COMMIT")
        except BaseException:
            if raw.in_transaction:
                raw.execute("ROLLBACK")
            raise
        self._remember(updates)
        return failed

    def _read_sqlite(self, run_id: str) -> RunInfo | None:
        row = self._raw.execute(_SQLITE_SELECT, (run_id,)).fetchone()
        return RunInfo(*row) if row is not None else None

    def _write_core(
        self, groups: dict[str, tuple[list[Record], list[Row]]], use_cache: bool
    ) -> dict[str, Exception]:
        # Runs in a fixed order (by id) so that two processes' flushes lock rows in the same order.
        ordered = dict(sorted(groups.items()))
        conn = self._flush_conn
        if conn is None:  # the flush keeps one connection: no pool checkout, ping or reset a flush
            conn = self._flush_conn = self._db.engine.connect()
        try:
            with conn.begin():
                updates, failed = self._write_core_tx(conn, ordered, use_cache)
        except Exception as e:
            if not _is_conflict(e):  # the connection may be broken: take a fresh one next time
                self._flush_conn = None
                with contextlib.suppress(Exception):
                    conn.close()
            raise
        self._remember(updates)
        return failed

    def _write_core_tx(
        self, conn: sa.Connection, ordered: dict[str, tuple[list[Record], list[Row]]], use_cache: bool
    ) -> tuple[list[tuple[RunInfo, int]], dict[str, Exception]]:
        updates, failed = self._plan(ordered, use_cache, lambda run_id: read_info(conn, run_id))
        rows = [
            dict(zip(RECORD_COLUMNS, row, strict=True))
            for run_id, g in ordered.items()
            if run_id not in failed
            for row in g[1]
        ]
        if rows:
            conn.execute(records_table.insert(), rows)
        for info, prev in updates:
            result = conn.execute(
                runs_table.update()
                .where(runs_table.c.id == info.id, runs_table.c.last_seq == prev)
                .values(**update_values(info))
            )
            if result.rowcount != 1:
                raise _RunFailed(info.id, StoreConflict(f"run {info.id}: its row changed under this writer"))
        return updates, failed

    def close(self) -> None:
        """Stop writing (the caller synced first): the Postgres worker and its connection end."""
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self._flush_conn is not None:
            with self._db_lock, contextlib.suppress(Exception):
                self._flush_conn.close()
