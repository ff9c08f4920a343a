"""The SQL store's schema, as a tiny list of versioned migrations (no Alembic).

Each migration is a version number and its DDL statements, written once and never edited: a
later schema change is a new entry at the end. `migrate` applies the missing ones in order, in
one transaction, and records each in `schema_version`. The statements run unchanged on SQLite
and on Postgres.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from tether.domain.errors import TetherError

if TYPE_CHECKING:
    from sqlalchemy import Connection

MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            """CREATE TABLE runs (
                id VARCHAR(64) PRIMARY KEY,
                status VARCHAR(16) NOT NULL,
                agent_name TEXT NOT NULL,
                model TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL,
                thread_id VARCHAR(64),
                parent_run_id VARCHAR(64),
                pause_id VARCHAR(64),
                lease_owner TEXT,
                lease_expires DOUBLE PRECISION,
                last_seq INTEGER NOT NULL DEFAULT 0,
                input_tokens BIGINT NOT NULL DEFAULT 0,
                output_tokens BIGINT NOT NULL DEFAULT 0,
                cost_usd DOUBLE PRECISION,
                output TEXT,
                active BOOLEAN
            )""",
            # At most one active (queued, running, paused) run a thread: `active` is true for
            # those and NULL otherwise.
            "CREATE UNIQUE INDEX runs_one_active_per_thread ON runs (thread_id) WHERE active",
            "CREATE INDEX runs_thread ON runs (thread_id)",
            "CREATE INDEX runs_status ON runs (status)",
            # The primary key is also the fence: two writers of the same seq conflict.
            """CREATE TABLE records (
                run_id VARCHAR(64) NOT NULL,
                seq INTEGER NOT NULL,
                kind VARCHAR(32) NOT NULL,
                v INTEGER NOT NULL,
                ts DOUBLE PRECISION NOT NULL,
                payload TEXT NOT NULL,
                PRIMARY KEY (run_id, seq)
            )""",
        ],
    ),
    (
        2,
        [
            # Breakpoints set on a run after it started (a JSON list); NULL means the agent's.
            "ALTER TABLE runs ADD COLUMN breakpoints TEXT",
        ],
    ),
    (
        3,
        [
            # A cancel asked for by a process that does not hold the run: its owner's heartbeat acts on it.
            "ALTER TABLE runs ADD COLUMN cancel_requested TEXT",
        ],
    ),
    (
        4,
        [
            # The HTTP interface's documents (assistants, threads, messages, run settings), by tenant.
            """CREATE TABLE objects (
                id VARCHAR(64) PRIMARY KEY,
                kind VARCHAR(16) NOT NULL,
                tenant VARCHAR(64) NOT NULL,
                parent_id VARCHAR(64),
                created_at DOUBLE PRECISION NOT NULL,
                data TEXT NOT NULL
            )""",
            "CREATE INDEX objects_list ON objects (tenant, kind, parent_id, id)",
        ],
    ),
    (
        5,
        [
            # Shared budgets (the governor's): limits (NULL: none), what was spent, what is reserved now,
            # and what a run that cannot reserve does (`pause` or `fail`: the budget's owner decides).
            """CREATE TABLE budgets (
                id VARCHAR(64) PRIMARY KEY,
                max_usd DOUBLE PRECISION,
                max_tokens BIGINT,
                spent_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
                spent_tokens BIGINT NOT NULL DEFAULT 0,
                reserved_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
                reserved_tokens BIGINT NOT NULL DEFAULT 0,
                warned BOOLEAN NOT NULL DEFAULT FALSE,
                created_at DOUBLE PRECISION NOT NULL,
                on_exhausted VARCHAR(8) NOT NULL DEFAULT 'pause'
            )""",
            # A model call's reservation in each budget covering it, held by its run's lease.
            """CREATE TABLE reservations (
                id VARCHAR(64) NOT NULL,
                budget_id VARCHAR(64) NOT NULL,
                run_id VARCHAR(64) NOT NULL,
                usd DOUBLE PRECISION NOT NULL,
                tokens BIGINT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (id, budget_id)
            )""",
            "CREATE INDEX reservations_budget ON reservations (budget_id)",
            "CREATE INDEX reservations_run ON reservations (run_id)",
        ],
    ),
    (
        6,
        [
            # A batch: its spec as created (the agent snapshot and the options, as JSON) and its state.
            # `background`: set while a server runs it in the background (resumed at the server's start).
            """CREATE TABLE batches (
                id VARCHAR(64) PRIMARY KEY,
                tenant VARCHAR(64) NOT NULL,
                name TEXT,
                state VARCHAR(16) NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                agent TEXT NOT NULL,
                agent_ref TEXT,
                options TEXT NOT NULL,
                cases_hash VARCHAR(64) NOT NULL,
                source TEXT,
                total INTEGER NOT NULL,
                background BOOLEAN
            )""",
            "CREATE INDEX batches_tenant ON batches (tenant, id)",
            # Its cases, stored at creation; `attempt` and `run_id` name the case's current run (set
            # just before that run is created, so a resume finds it by id, never making a second).
            """CREATE TABLE batch_cases (
                batch_id VARCHAR(64) NOT NULL,
                idx INTEGER NOT NULL,
                key TEXT NOT NULL,
                input TEXT NOT NULL,
                vars TEXT NOT NULL,
                expected TEXT,
                metadata TEXT NOT NULL,
                attempt INTEGER NOT NULL DEFAULT 1,
                run_id VARCHAR(64),
                PRIMARY KEY (batch_id, idx),
                UNIQUE (batch_id, key)
            )""",
            # Every attempt's run (a retried case's earlier runs too): what the batch spent, what
            # `batch delete --with-runs` deletes, and what `runs prune` leaves to the batch.
            """CREATE TABLE batch_runs (
                run_id VARCHAR(64) PRIMARY KEY,
                batch_id VARCHAR(64) NOT NULL,
                idx INTEGER NOT NULL,
                attempt INTEGER NOT NULL
            )""",
            "CREATE INDEX batch_runs_batch ON batch_runs (batch_id)",
        ],
    ),
]

LATEST = MIGRATIONS[-1][0]

_BOOTSTRAP = (
    "CREATE TABLE IF NOT EXISTS schema_version ("
    "version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
)
_PG_LOCK_KEY = 0x7E7E_0001  # pg_advisory_xact_lock key: one migrating process at a time


class SchemaError(TetherError):
    """The database's schema cannot be used by this version of Tether."""


def current_version(conn: Connection) -> int:
    """The highest applied migration, 0 for an empty database."""
    from sqlalchemy import inspect, text

    if not inspect(conn).has_table("schema_version"):
        return 0
    return int(conn.execute(text("SELECT COALESCE(MAX(version), 0) FROM schema_version")).scalar_one())


def check_version(version: int, where: str) -> None:
    if version > LATEST:
        raise SchemaError(
            f"the database {where} has schema version {version}, newer than this Tether understands "
            f"({LATEST}); upgrade Tether (pip install -U tether), or point TETHER_DATABASE_URL at "
            "another database"
        )


def migrate(conn: Connection, where: str) -> int:
    """Bring the schema up to `LATEST`. `conn` must be inside a transaction that takes the write lock
    (SQLite: BEGIN IMMEDIATE); the caller commits. Returns the version the database is at."""
    from sqlalchemy import text

    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
    conn.execute(text(_BOOTSTRAP))
    version = current_version(conn)
    check_version(version, where)
    for number, statements in MIGRATIONS:
        if number <= version:
            continue
        for ddl in statements:
            conn.execute(text(ddl))
        conn.execute(
            text("INSERT INTO schema_version (version, applied_at) VALUES (:v, :t)"),
            {"v": number, "t": time.time()},
        )
        version = number
    return version
