"""The database under the SQL store: one SQLite file in WAL mode, or Postgres, through SQLAlchemy 2 Core.

`Database` opens it (creating the SQLite file's folder, migrating the schema), begins transactions
the same way on both, and runs a statement: inline under a lock on SQLite, where the store keeps one
connection (a thread hop costs more than the statement); in a thread with a pooled connection on
Postgres. It knows nothing of runs: the parts of the store (`runs`, `leases`, `controls`,
`objects`, the group-commit `writer`) bring their statements.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from tether.adapters.store.migrations import LATEST, check_version, current_version, migrate
from tether.adapters.store.sql.location import normalise_url
from tether.domain.errors import ConfigError, TetherError

BUSY_TIMEOUT_MS = 5000
PING_AFTER_IDLE_S = 1.0  # Postgres: a pooled connection idle longer than this is pinged before use

T = TypeVar("T")


class StoreError(TetherError):
    """The database could not be written or read (not a conflict: the disk, the server, ...)."""


class Call(Protocol):
    """Runs `fn(conn)` as one statement of the store, and returns its result."""

    async def __call__(self, fn: Callable[[sa.Connection], T]) -> T: ...


class Database:
    """An open SQLite or Postgres database with Tether's schema. See the module docstring."""

    def __init__(self, url: str, *, synchronous: Literal["NORMAL", "FULL"] = "NORMAL") -> None:
        mode = str(synchronous).upper()
        if mode not in ("NORMAL", "FULL"):
            raise ConfigError(f"synchronous must be 'NORMAL' or 'FULL', not {synchronous!r}")
        url = normalise_url(url)
        try:
            parsed = sa.make_url(url)
        except sa_exc.ArgumentError as e:
            raise ConfigError(
                f"{url!r} is not a database URL; use sqlite:///PATH or postgresql+psycopg://USER@HOST/DB"
            ) from e
        self.url = parsed.render_as_string(hide_password=True)  # safe to show
        self.dialect = parsed.get_backend_name()
        self.sqlite = self.dialect == "sqlite"
        if self.dialect not in ("sqlite", "postgresql"):
            raise ConfigError(f"unsupported database {self.url}: Tether stores runs in SQLite or Postgres")
        # One statement or batch at a time; on SQLite, the lock of the one connection.
        self.lock = threading.RLock()

        if self.sqlite:
            self.engine = self._sqlite_engine(parsed, mode)
            try:
                self.conn: sa.Connection = self.engine.connect()
            except sa_exc.DBAPIError as e:
                raise StoreError(f"cannot open {self.url}: {e.orig}") from e
            # The raw driver connection, for the group-commit writer's hot path.
            self.raw: sqlite3.Connection = self.conn.connection.dbapi_connection  # type: ignore[assignment]
            self._migrate(self.conn)
        else:
            try:
                self.engine = self._postgres_engine(url)
                with self.engine.connect() as conn:
                    self._migrate(conn)
            except (ImportError, sa_exc.NoSuchModuleError) as e:
                raise ConfigError("Postgres needs the psycopg driver: pip install 'tether[postgres]'") from e
            except sa_exc.DBAPIError as e:
                raise StoreError(f"cannot connect to {self.url}: {e.orig}") from e

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

    @staticmethod
    def _postgres_engine(url: str) -> sa.Engine:
        engine = sa.create_engine(url)

        # A pooled connection is pinged before use only if it sat idle for a while (a server restart
        # leaves idle connections dead): SQLAlchemy's pre-ping of every checkout cost a round trip
        # a statement, more than the statement itself on a local server.
        @sa.event.listens_for(engine, "checkin")
        def _idle(_dbapi_conn: Any, record: Any) -> None:
            record.info["idle_since"] = time.monotonic()

        @sa.event.listens_for(engine, "checkout")
        def _ping(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
            idle_since = record.info.get("idle_since")
            if idle_since is not None and time.monotonic() - idle_since > PING_AFTER_IDLE_S:
                try:
                    alive = engine.dialect.do_ping(dbapi_conn)
                except Exception:
                    alive = False
                if not alive:  # the pool drops it and takes (or opens) another
                    raise sa_exc.DisconnectionError("a pooled connection to the database is gone")

        return engine

    def _migrate(self, conn: sa.Connection) -> None:
        try:
            try:
                version = current_version(conn)
                conn.rollback()
                check_version(version, self.url)
                if version < LATEST:
                    with self.tx(conn, write=True):
                        migrate(conn, self.url)
            except sa_exc.DBAPIError as e:
                raise StoreError(f"cannot prepare the database {self.url}: {e.orig}") from e
        except TetherError:
            conn.close()
            self.engine.dispose()
            raise

    # -- statements -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def tx(self, conn: sa.Connection, *, write: bool) -> Iterator[sa.Connection]:
        """A transaction on `conn`. On SQLite, a write takes the write lock up front (BEGIN IMMEDIATE);
        a read runs without BEGIN (each statement is consistent on its own)."""
        if self.sqlite and write:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.rollback()
            raise
        else:
            conn.commit()

    async def execute(self, fn: Callable[[sa.Connection], T]) -> T:
        """`fn(conn)`: inline on SQLite, in a thread on Postgres."""
        if self.sqlite:
            with self.lock:
                return self._guard(fn, self.conn)
        return await asyncio.to_thread(self._execute_pooled, fn)

    def _execute_pooled(self, fn: Callable[[sa.Connection], T]) -> T:
        with self.engine.connect() as conn:
            return self._guard(fn, conn)

    def _guard(self, fn: Callable[[sa.Connection], T], conn: sa.Connection) -> T:
        try:
            return fn(conn)
        except sa_exc.OperationalError as e:
            raise StoreError(f"the run store at {self.url} failed: {e.orig}") from e

    def close(self) -> None:
        if self.sqlite:
            with self.lock:
                self.conn.close()
        self.engine.dispose()
