"""The SQL store: one SQLite file in WAL mode by default, or Postgres, through SQLAlchemy 2 Core.

Same contract as `MemoryStore` (see "The run contract" in DESIGN.md). Two tables hold it: `records`
(the log; its primary key `(run_id, seq)` is the fence that makes two writers of one seq conflict)
and `runs` (the index row a run, derived from the log with `tether.domain.runs.update_info`).

The hot path is `append` + `sync`. `append` only queues records (already serialised) and, once per
event-loop iteration, schedules a flush with `loop.call_soon`; a flush writes every queued record of
every run in one transaction (a grouped commit): one insert of all records and one guarded
`UPDATE runs ... WHERE id = ? AND last_seq = ?` a touched run, computed from a cached `RunInfo`.
On SQLite the flush runs inline on the event-loop thread with raw `sqlite3` calls (a thread hop
costs more than the commit); on Postgres it runs in one worker thread, one flush at a time, and
records queued meanwhile go in the next. When a grouped flush fails on a conflict, each run is
retried in its own transaction so that only the conflicting run loses its records; that run is
then "broken" in this store until it is loaded again, and `append` to it raises at once.

Every other method first lets pending appends commit (so order is kept), then runs its statement:
inline on SQLite, in a thread on Postgres.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from tether.adapters.store.memory import MemoryStore, check_page
from tether.adapters.store.migrations import LATEST, check_version, current_version, migrate
from tether.domain.codec import dump_payload, load_payload
from tether.domain.errors import ConfigError, RunNotFound, StoreConflict, TetherError
from tether.domain.objects import StoredObject
from tether.domain.records import ACTIVE, TERMINAL, Record
from tether.domain.runs import RunInfo, info_from_start, update_info

__all__ = ["SqlStore", "StoreError", "default_url", "open_store", "tether_home"]

BUSY_TIMEOUT_MS = 5000
_CACHE_LIMIT = 10_000

T = TypeVar("T")


class StoreError(TetherError):
    """The database could not be written or read (not a conflict: the disk, the server, ...)."""


# -- where the database is ----------------------------------------------------------------------


def tether_home() -> Path:
    """`$TETHER_HOME`, else `$XDG_DATA_HOME/tether`, else `~/.local/share/tether` (not created here)."""
    home = os.environ.get("TETHER_HOME")
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "tether"


def default_url() -> str:
    """`$TETHER_DATABASE_URL`, else the SQLite file `tether.db` in `tether_home()`."""
    url = os.environ.get("TETHER_DATABASE_URL")
    if url:
        return url
    return f"sqlite:///{tether_home() / 'tether.db'}"


def open_store(url: str | None = None) -> SqlStore | MemoryStore:
    """The store at `url` (default: `default_url()`); `memory://` gives a `MemoryStore`.

    `TETHER_SQLITE_SYNCHRONOUS=FULL` makes SQLite commits survive power loss, not only a killed
    process (the default, NORMAL).
    """
    url = url or default_url()
    if url.startswith("memory://"):
        return MemoryStore()
    mode = os.environ.get("TETHER_SQLITE_SYNCHRONOUS", "NORMAL")
    if mode.upper() not in ("NORMAL", "FULL"):
        raise ConfigError(f"TETHER_SQLITE_SYNCHRONOUS must be NORMAL or FULL, not {mode!r}")
    return SqlStore(url, synchronous=mode.upper())  # type: ignore[arg-type]


def _normalise_url(url: str) -> str:
    # Plain `postgresql://` would make SQLAlchemy look for psycopg2; Tether uses psycopg 3.
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


# -- schema, for Core statements (the DDL itself is in migrations.py) ----------------------------

_metadata = sa.MetaData()
runs_table = sa.Table(
    "runs",
    _metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("agent_name", sa.Text, nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.Column("thread_id", sa.String(64)),
    sa.Column("parent_run_id", sa.String(64)),
    sa.Column("pause_id", sa.String(64)),
    sa.Column("lease_owner", sa.Text),
    sa.Column("lease_expires", sa.Double),
    sa.Column("last_seq", sa.Integer, nullable=False),
    sa.Column("input_tokens", sa.BigInteger, nullable=False),
    sa.Column("output_tokens", sa.BigInteger, nullable=False),
    sa.Column("cost_usd", sa.Double),
    sa.Column("output", sa.Text),
    sa.Column("active", sa.Boolean),
)
records_table = sa.Table(
    "records",
    _metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("v", sa.Integer, nullable=False),
    sa.Column("ts", sa.Double, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
)

objects_table = sa.Table(
    "objects",
    _metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("parent_id", sa.String(64)),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("data", sa.Text, nullable=False),
)

# The RunInfo fields, in RunInfo's order (a test checks they match the dataclass).
INFO_COLUMNS = (
    "id", "status", "agent_name", "model", "created_at", "updated_at", "thread_id", "parent_run_id",
    "pause_id", "lease_owner", "lease_expires", "last_seq", "input_tokens", "output_tokens", "cost_usd",
    "output",
)  # fmt: skip
RECORD_COLUMNS = ("run_id", "seq", "kind", "v", "ts", "payload")
_INFO_SELECT = [runs_table.c[name] for name in INFO_COLUMNS]

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

_CONTROL_COLUMNS = ("breakpoints", "cancel_requested")  # columns other processes set on a run

Row = tuple[str, int, str, int, float, str]  # a records row, in RECORD_COLUMNS order


def _row(r: Record) -> Row:
    p = r.payload
    return (r.run_id, r.seq, p.kind, r.v, r.ts, dump_payload(p).decode())


def _info_values(info: RunInfo) -> dict[str, Any]:
    values = {name: getattr(info, name) for name in INFO_COLUMNS}
    values["active"] = True if info.status in ACTIVE else None
    return values


def _update_values(info: RunInfo) -> dict[str, Any]:
    values = {
        "status": info.status, "updated_at": info.updated_at, "pause_id": info.pause_id,
        "last_seq": info.last_seq, "input_tokens": info.input_tokens, "output_tokens": info.output_tokens,
        "cost_usd": info.cost_usd, "output": info.output,
        "active": True if info.status in ACTIVE else None,
    }  # fmt: skip
    if _releases_lease(info):
        values["lease_owner"] = values["lease_expires"] = None
    return values


def _releases_lease(info: RunInfo) -> bool:
    return info.status == "paused" or info.status in TERMINAL


# -- flush bookkeeping -----------------------------------------------------------------------------


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


class SqlStore:
    """The run log and run index in SQLite (default) or Postgres. See the module docstring."""

    def __init__(self, url: str, *, synchronous: Literal["NORMAL", "FULL"] = "NORMAL") -> None:
        mode = str(synchronous).upper()
        if mode not in ("NORMAL", "FULL"):
            raise ConfigError(f"synchronous must be 'NORMAL' or 'FULL', not {synchronous!r}")
        url = _normalise_url(url)
        try:
            parsed = sa.make_url(url)
        except sa_exc.ArgumentError as e:
            raise ConfigError(
                f"{url!r} is not a database URL; use sqlite:///PATH or postgresql+psycopg://USER@HOST/DB"
            ) from e
        self.url = parsed.render_as_string(hide_password=True)  # safe to show
        self.dialect = parsed.get_backend_name()
        self._sqlite = self.dialect == "sqlite"
        if self.dialect not in ("sqlite", "postgresql"):
            raise ConfigError(f"unsupported database {self.url}: Tether stores runs in SQLite or Postgres")

        self._lock = threading.Lock()  # the queue: _open, _inflight, _draining, _broken, _unreported
        self._db_lock = threading.RLock()  # one batch written at a time; on SQLite, the connection
        self._open: _Batch | None = None  # queued, not yet being written
        self._inflight: _Batch | None = None  # being written (Postgres worker)
        self._draining = False  # a Postgres worker is writing batches
        self._tick_loop: asyncio.AbstractEventLoop | None = None  # loop with a flush scheduled
        self._unreported: list[Exception] = []  # errors of flushes no sync() waited on
        self._broken: dict[str, Exception] = {}  # runs whose records failed; cleared by load()
        self._infos: dict[str, RunInfo] = {}  # run rows as this store last wrote them
        self._closed = False
        self._pool: ThreadPoolExecutor | None = None
        self._flush_conn: sa.Connection | None = None  # Postgres: the flush's own connection

        if self._sqlite:
            self._engine = self._sqlite_engine(parsed, mode)
            try:
                self._conn: sa.Connection = self._engine.connect()
            except sa_exc.DBAPIError as e:
                raise StoreError(f"cannot open {self.url}: {e.orig}") from e
            self._raw: sqlite3.Connection = self._conn.connection.dbapi_connection  # type: ignore[assignment]
            self._migrate(self._conn)
        else:
            try:
                self._engine = sa.create_engine(url, pool_pre_ping=True)
                with self._engine.connect() as conn:
                    self._migrate(conn)
            except (ImportError, sa_exc.NoSuchModuleError) as e:
                raise ConfigError("Postgres needs the psycopg driver: pip install 'tether[postgres]'") from e
            except sa_exc.DBAPIError as e:
                raise StoreError(f"cannot connect to {self.url}: {e.orig}") from e
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="tether-store-flush")

    # -- opening --------------------------------------------------------------------------------

    @staticmethod
    def _sqlite_engine(parsed: sa.URL, mode: str) -> sa.Engine:
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            folder = Path(database).expanduser().parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(
                    f"cannot create the folder {folder} for the run store: {e.strerror}; "
                    "set TETHER_HOME or TETHER_DATABASE_URL to a writable place"
                ) from e
        engine = sa.create_engine(parsed, connect_args={"check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _configure(dbapi_conn: Any, _record: Any) -> None:
            # Autocommit at the driver: transactions are begun explicitly (BEGIN IMMEDIATE for writes,
            # so that two processes racing for the write lock wait for each other instead of failing).
            dbapi_conn.isolation_level = None
            dbapi_conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            dbapi_conn.execute("PRAGMA journal_mode = WAL")
            dbapi_conn.execute(f"PRAGMA synchronous = {mode}")

        return engine

    def _migrate(self, conn: sa.Connection) -> None:
        try:
            try:
                version = current_version(conn)
                conn.rollback()
                check_version(version, self.url)
                if version < LATEST:
                    with self._tx(conn, write=True):
                        migrate(conn, self.url)
            except sa_exc.DBAPIError as e:
                raise StoreError(f"cannot prepare the database {self.url}: {e.orig}") from e
        except TetherError:
            conn.close()
            self._engine.dispose()
            raise

    @contextlib.contextmanager
    def _tx(self, conn: sa.Connection, *, write: bool) -> Iterator[sa.Connection]:
        """A transaction on `conn`. On SQLite, a write takes the write lock up front (BEGIN IMMEDIATE);
        a read runs without BEGIN (each statement is consistent on its own)."""
        if self._sqlite and write:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.rollback()
            raise
        else:
            conn.commit()

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
        rows = [_row(r) for r in records]  # serialise first: a bad payload queues nothing
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

    async def _drain(self) -> None:
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
        return StoreError(f"could not write to {self.url}: {detail}")

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
                 _releases_lease(info), _releases_lease(info), info.id, prev)
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
            conn = self._flush_conn = self._engine.connect()
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
        updates, failed = self._plan(ordered, use_cache, lambda run_id: _read_core(conn, run_id))
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
                .values(**_update_values(info))
            )
            if result.rowcount != 1:
                raise _RunFailed(info.id, StoreConflict(f"run {info.id}: its row changed under this writer"))
        return updates, failed

    # -- everything else ------------------------------------------------------------------------

    async def _call(self, fn: Callable[[sa.Connection], T]) -> T:
        """Run `fn(conn)` after pending appends: inline on SQLite, in a thread on Postgres."""
        await self._drain()
        if self._sqlite:
            with self._db_lock:
                return self._guard(fn, self._conn)
        return await asyncio.to_thread(self._call_pooled, fn)

    def _call_pooled(self, fn: Callable[[sa.Connection], T]) -> T:
        with self._engine.connect() as conn:
            return self._guard(fn, conn)

    def _guard(self, fn: Callable[[sa.Connection], T], conn: sa.Connection) -> T:
        try:
            return fn(conn)
        except sa_exc.OperationalError as e:
            raise StoreError(f"the run store at {self.url} failed: {e.orig}") from e

    async def create_run(self, record: Record, *, owner: str | None, lease_ttl_s: float = 30.0) -> None:
        now = time.time()
        info = info_from_start(record, now)
        update_info(info, record)
        if owner is not None:
            info.lease_owner, info.lease_expires = owner, now + lease_ttl_s
        row = dict(zip(RECORD_COLUMNS, _row(record), strict=True))

        def op(conn: sa.Connection) -> None:
            try:
                with self._tx(conn, write=True):
                    conn.execute(runs_table.insert(), _info_values(info))  # no .values(): compiled once
                    conn.execute(records_table.insert(), row)
            except sa_exc.IntegrityError as e:
                raise self._create_conflict(conn, info) from e

        await self._call(op)
        self._broken.pop(info.id, None)
        self._infos[info.id] = info

    def _create_conflict(self, conn: sa.Connection, info: RunInfo) -> StoreConflict:
        with self._tx(conn, write=False):
            other = None
            if info.thread_id is not None:
                other = conn.execute(
                    sa.select(runs_table.c.id).where(
                        runs_table.c.thread_id == info.thread_id, runs_table.c.active.is_(True)
                    )
                ).scalar()
            exists = conn.execute(sa.select(runs_table.c.id).where(runs_table.c.id == info.id)).scalar()
        if exists is not None:
            return StoreConflict(f"run {info.id} already exists; a new run needs a new id")
        if other is not None:
            return StoreConflict(
                f"thread {info.thread_id} already has an active run ({other}); "
                "wait for it, answer its pause, or cancel it before starting another"
            )
        return StoreConflict(f"run {info.id} could not be created: it conflicts with a stored run")

    async def load(self, run_id: str, after: int = 0) -> list[Record]:
        def op(conn: sa.Connection) -> list[Any]:
            with self._tx(conn, write=False):
                return list(
                    conn.execute(
                        sa.select(records_table.c.seq, records_table.c.ts, records_table.c.payload,
                                  records_table.c.v)
                        .where(records_table.c.run_id == run_id, records_table.c.seq > after)
                        .order_by(records_table.c.seq)
                    )
                )  # fmt: skip

        rows = await self._call(op)  # pending appends commit first, so they are read like the rest
        if after <= 0:
            # Whoever loads a whole run starts from the log: forget what this store remembered about
            # it. Reading only newer records (an event stream) does not: it is not the run's writer.
            self._broken.pop(run_id, None)
            self._infos.pop(run_id, None)
        return [Record(run_id, seq, ts, load_payload(payload), v) for seq, ts, payload, v in rows]

    async def get_run(self, run_id: str) -> RunInfo | None:
        def op(conn: sa.Connection) -> RunInfo | None:
            with self._tx(conn, write=False):
                return _read_core(conn, run_id)

        return await self._call(op)

    async def list_runs(
        self, *, limit: int = 50, status: str | None = None, thread_id: str | None = None
    ) -> list[RunInfo]:
        query = sa.select(*_INFO_SELECT).order_by(runs_table.c.id.desc()).limit(limit)
        if status is not None:
            query = query.where(runs_table.c.status == status)
        if thread_id is not None:
            query = query.where(runs_table.c.thread_id == thread_id)

        def op(conn: sa.Connection) -> list[RunInfo]:
            with self._tx(conn, write=False):
                return [RunInfo(*row) for row in conn.execute(query)]

        return await self._call(op)

    # -- controls set on a run from outside: breakpoints, a cancel request -----------------------

    async def set_breakpoints(self, run_id: str, breakpoints: list[dict[str, Any]] | None) -> None:
        await self._set_control(run_id, "breakpoints", None if breakpoints is None else json.dumps(breakpoints))

    async def get_breakpoints(self, run_id: str) -> list[dict[str, Any]] | None:
        data = await self._get_control(run_id, "breakpoints")
        return None if data is None else json.loads(data)  # type: ignore[no-any-return]

    async def request_cancel(self, run_id: str, reason: str) -> None:
        await self._set_control(run_id, "cancel_requested", reason)

    async def cancel_requested(self, run_id: str) -> str | None:
        return await self._get_control(run_id, "cancel_requested")

    async def _set_control(self, run_id: str, column: str, value: str | None) -> None:
        assert column in _CONTROL_COLUMNS  # a fixed name, never user input, spliced into the SQL

        def op(conn: sa.Connection) -> None:
            with self._tx(conn, write=True):
                done = conn.execute(sa.text(f"UPDATE runs SET {column} = :v WHERE id = :id"),
                                    {"v": value, "id": run_id}).rowcount
                if done != 1:
                    raise RunNotFound(f"no run {run_id!r}")

        await self._call(op)

    async def _get_control(self, run_id: str, column: str) -> str | None:
        assert column in _CONTROL_COLUMNS

        def op(conn: sa.Connection) -> Any:
            with self._tx(conn, write=False):
                return conn.execute(sa.text(f"SELECT {column} FROM runs WHERE id = :id"), {"id": run_id}).scalar()

        return await self._call(op)  # type: ignore[no-any-return]

    # -- leases ---------------------------------------------------------------------------------

    async def acquire_lease(self, run_id: str, owner: str, ttl_s: float) -> bool:
        c = runs_table.c

        def op(conn: sa.Connection) -> bool:
            now = time.time()
            with self._tx(conn, write=True):
                taken = conn.execute(
                    runs_table.update()
                    .where(
                        c.id == run_id,
                        sa.or_(c.lease_owner.is_(None), c.lease_owner == owner, c.lease_expires.is_(None),
                               c.lease_expires < now),
                    )
                    .values(lease_owner=owner, lease_expires=now + ttl_s)
                ).rowcount  # fmt: skip
                return taken == 1 or _missing(conn, run_id)

        return await self._call(op)

    async def take_over_lease(self, run_id: str, old_owner: str, owner: str, ttl_s: float) -> bool:
        c = runs_table.c

        def op(conn: sa.Connection) -> bool:
            with self._tx(conn, write=True):
                taken = conn.execute(
                    runs_table.update()
                    .where(c.id == run_id, c.lease_owner == old_owner)
                    .values(lease_owner=owner, lease_expires=time.time() + ttl_s)
                ).rowcount
                return taken == 1

        return await self._call(op)

    async def renew_lease(self, run_id: str, owner: str, ttl_s: float) -> bool:
        c = runs_table.c

        def op(conn: sa.Connection) -> bool:
            with self._tx(conn, write=True):
                renewed = conn.execute(
                    runs_table.update()
                    .where(c.id == run_id, c.lease_owner == owner)
                    .values(lease_expires=time.time() + ttl_s)
                ).rowcount
                return renewed == 1 or _missing(conn, run_id)

        return await self._call(op)

    async def release_lease(self, run_id: str, owner: str) -> None:
        c = runs_table.c

        def op(conn: sa.Connection) -> None:
            with self._tx(conn, write=True):
                released = conn.execute(
                    runs_table.update()
                    .where(c.id == run_id, c.lease_owner == owner)
                    .values(lease_owner=None, lease_expires=None, status=sa.case(
                        (c.status == "running", "queued"), else_=c.status))  # see released_status
                ).rowcount
                if released != 1:
                    _missing(conn, run_id)

        await self._call(op)

    async def expired_runs(self) -> list[str]:
        c = runs_table.c

        def op(conn: sa.Connection) -> list[str]:
            now = time.time()
            with self._tx(conn, write=False):
                return list(
                    conn.execute(
                        sa.select(c.id)
                        .where(
                            c.status.in_(("queued", "running")),
                            sa.or_(c.lease_owner.is_(None), c.lease_expires.is_(None), c.lease_expires < now),
                        )
                        .order_by(c.id)
                    ).scalars()
                )

        return await self._call(op)

    # -- decisions ------------------------------------------------------------------------------

    async def decide(self, run_id: str, pause_id: str, decisions: Sequence[Record]) -> bool:
        c = runs_table.c
        decisions = list(decisions)
        rows = [dict(zip(RECORD_COLUMNS, _row(r), strict=True)) for r in decisions]

        def op(conn: sa.Connection) -> RunInfo | None:
            with self._tx(conn, write=True):  # SQLite: BEGIN IMMEDIATE, so racing processes serialise
                if not decisions:  # nothing to write: only say whether the pause is still open
                    info = _read_core(conn, run_id)
                    if info is None:
                        _missing(conn, run_id)
                    return info if info and info.status == "paused" and info.pause_id == pause_id else None
                won = conn.execute(
                    runs_table.update()
                    .where(c.id == run_id, c.status == "paused", c.pause_id == pause_id)
                    .values(status="queued", pause_id=None)
                ).rowcount
                if won != 1:
                    _missing(conn, run_id)
                    return None
                info = _read_core(conn, run_id)
                assert info is not None
                prev = info.last_seq
                for r in decisions:
                    if r.run_id != run_id or r.seq != info.last_seq + 1:
                        raise StoreConflict(
                            f"run {run_id}: decision record {r.seq} does not follow the log "
                            f"(at {info.last_seq}); load the run again"
                        )
                    update_info(info, r)
                try:
                    conn.execute(records_table.insert(), rows)
                except sa_exc.IntegrityError as e:
                    raise StoreConflict(
                        f"run {run_id}: decision records conflict with records already in its log"
                    ) from e
                conn.execute(
                    runs_table.update()
                    .where(c.id == run_id, c.last_seq == prev)
                    .values(**_update_values(info))
                )
                return info

        info = await self._call(op)
        if info is None:
            return False
        if decisions:
            self._broken.pop(run_id, None)
            self._infos[run_id] = info
        return True

    # -- the HTTP interface's documents ----------------------------------------------------------

    async def put_object(self, obj: StoredObject) -> None:
        """Insert the object, or replace the one with its id."""
        values = {"id": obj.id, "kind": obj.kind, "tenant": obj.tenant, "parent_id": obj.parent_id,
                  "created_at": obj.created_at, "data": json.dumps(obj.data)}
        t = objects_table

        def op(conn: sa.Connection) -> None:
            with self._tx(conn, write=True):
                if conn.execute(t.update().where(t.c.id == obj.id).values(**values)).rowcount != 1:
                    conn.execute(t.insert(), values)

        await self._call(op)

    async def get_object(self, object_id: str) -> StoredObject | None:
        def op(conn: sa.Connection) -> Any:
            with self._tx(conn, write=False):
                return conn.execute(sa.select(objects_table).where(objects_table.c.id == object_id)).first()

        row = await self._call(op)
        return None if row is None else _object(row)

    async def list_objects(
        self,
        kind: str,
        tenant: str,
        parent_id: str | None = None,
        *,
        after: str | None = None,
        before: str | None = None,
        limit: int | None = None,
        order: Literal["asc", "desc"] = "asc",
    ) -> list[StoredObject]:
        """A page of the objects of a kind (of one parent, if given), by id: see `ObjectStore`.
        The index `objects_list` (tenant, kind, parent_id, id) serves it."""
        check_page(limit, order)
        t = objects_table
        query = sa.select(t).where(t.c.tenant == tenant, t.c.kind == kind)
        if parent_id is not None:
            query = query.where(t.c.parent_id == parent_id)
        forward = order == "asc"
        if after is not None:
            query = query.where(t.c.id > after if forward else t.c.id < after)
        if before is not None:
            query = query.where(t.c.id < before if forward else t.c.id > before)
        # With `before`, the page is the rows nearest to it: read away from it, then turn them round.
        backwards = before is not None
        query = query.order_by(t.c.id if forward != backwards else t.c.id.desc())
        if limit is not None:
            query = query.limit(limit)

        def op(conn: sa.Connection) -> list[Any]:
            with self._tx(conn, write=False):
                return list(conn.execute(query))

        rows = await self._call(op)
        if backwards:
            rows.reverse()
        return [_object(row) for row in rows]

    async def delete_object(self, object_id: str) -> bool:
        def op(conn: sa.Connection) -> bool:
            with self._tx(conn, write=True):
                return bool(conn.execute(objects_table.delete().where(objects_table.c.id == object_id)).rowcount)

        return await self._call(op)

    # -- closing --------------------------------------------------------------------------------

    async def close(self) -> None:
        if self._closed:
            return
        try:
            await self.sync()
        finally:
            self._closed = True
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            if self._flush_conn is not None:
                with self._db_lock, contextlib.suppress(Exception):
                    self._flush_conn.close()
            if self._sqlite:
                with self._db_lock:
                    self._conn.close()
            self._engine.dispose()


def _object(row: Any) -> StoredObject:
    return StoredObject(row.id, row.kind, row.tenant, row.created_at, json.loads(row.data), row.parent_id)


def _read_core(conn: sa.Connection, run_id: str) -> RunInfo | None:
    row = conn.execute(sa.select(*_INFO_SELECT).where(runs_table.c.id == run_id)).first()
    return RunInfo(*row) if row is not None else None


def _missing(conn: sa.Connection, run_id: str) -> bool:
    """Raise RunNotFound when the run does not exist; else False (the condition was not met)."""
    if conn.execute(sa.select(runs_table.c.id).where(runs_table.c.id == run_id)).first() is None:
        raise RunNotFound(f"run {run_id} does not exist")
    return False
