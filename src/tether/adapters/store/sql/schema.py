"""The SQL store's tables as SQLAlchemy Core objects, and the conversions between rows and domain values.

The DDL itself, and its history, is in `tether.adapters.store.migrations`; these declarations only
build statements and must name the same columns. The tables: `records` (the log; its primary
key `(run_id, seq)` is the fence that makes two writers of one seq conflict), `runs` (the index
row a run, derived from the log with `tether.domain.runs.update_info`), `objects` (the HTTP
interface's documents), and `batches`, `batch_cases` and `batch_runs` (batches, their cases, and
every attempt's run).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from tether.domain.codec import dump_payload_text
from tether.domain.errors import RunNotFound
from tether.domain.objects import StoredObject
from tether.domain.records import ACTIVE, TERMINAL, Record, RunStatus
from tether.domain.runs import RunInfo

metadata = sa.MetaData()
runs_table = sa.Table(
    "runs",
    metadata,
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
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("v", sa.Integer, nullable=False),
    sa.Column("ts", sa.Double, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
)
objects_table = sa.Table(
    "objects",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("parent_id", sa.String(64)),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("data", sa.Text, nullable=False),
)
batches_table = sa.Table(
    "batches",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("name", sa.Text),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("agent", sa.Text, nullable=False),
    sa.Column("agent_ref", sa.Text),
    sa.Column("options", sa.Text, nullable=False),
    sa.Column("cases_hash", sa.String(64), nullable=False),
    sa.Column("source", sa.Text),
    sa.Column("total", sa.Integer, nullable=False),
    sa.Column("background", sa.Boolean),
)
batch_cases_table = sa.Table(
    "batch_cases",
    metadata,
    sa.Column("batch_id", sa.String(64), primary_key=True),
    sa.Column("idx", sa.Integer, primary_key=True),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("input", sa.Text, nullable=False),
    sa.Column("vars", sa.Text, nullable=False),
    sa.Column("expected", sa.Text),
    sa.Column("metadata", sa.Text, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("run_id", sa.String(64)),
)
batch_runs_table = sa.Table(
    "batch_runs",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("batch_id", sa.String(64), nullable=False),
    sa.Column("idx", sa.Integer, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
)

# The RunInfo fields, in RunInfo's order (a test checks they match the dataclass).
INFO_COLUMNS = (
    "id", "status", "agent_name", "model", "created_at", "updated_at", "thread_id", "parent_run_id",
    "pause_id", "lease_owner", "lease_expires", "last_seq", "input_tokens", "output_tokens", "cost_usd",
    "output",
)  # fmt: skip
RECORD_COLUMNS = ("run_id", "seq", "kind", "v", "ts", "payload")
INFO_SELECT = [runs_table.c[name] for name in INFO_COLUMNS]

Row = tuple[str, int, str, int, float, str]  # a records row, in RECORD_COLUMNS order


def record_row(r: Record) -> Row:
    p = r.payload
    return (r.run_id, r.seq, p.kind, r.v, r.ts, dump_payload_text(p))


def record_values(r: Record) -> dict[str, Any]:
    return dict(zip(RECORD_COLUMNS, record_row(r), strict=True))


def info_values(info: RunInfo) -> dict[str, Any]:
    """A new run row."""
    values = {name: getattr(info, name) for name in INFO_COLUMNS}
    values["active"] = True if info.status in ACTIVE else None
    return values


def update_values(info: RunInfo) -> dict[str, Any]:
    """What records change in a run row."""
    values = {
        "status": info.status, "updated_at": info.updated_at, "pause_id": info.pause_id,
        "last_seq": info.last_seq, "input_tokens": info.input_tokens, "output_tokens": info.output_tokens,
        "cost_usd": info.cost_usd, "output": info.output,
        "active": True if info.status in ACTIVE else None,
    }  # fmt: skip
    if releases_lease(info):
        values["lease_owner"] = values["lease_expires"] = None
    return values


def releases_lease(info: RunInfo) -> bool:
    """A pause or the end gives the lease back in the same commit: a paused run holds nothing."""
    return info.status == RunStatus.PAUSED or info.status in TERMINAL


def info_from_row(row: Sequence[Any]) -> RunInfo:
    """A run row (INFO_COLUMNS) as a RunInfo: its status, stored as text, becomes a RunStatus here."""
    return RunInfo(row[0], RunStatus(row[1]), *row[2:])


def read_info(conn: sa.Connection, run_id: str) -> RunInfo | None:
    row = conn.execute(sa.select(*INFO_SELECT).where(runs_table.c.id == run_id)).first()
    return info_from_row(row) if row is not None else None


def require_run(conn: sa.Connection, run_id: str) -> bool:
    """Raise RunNotFound when the run does not exist; else False (the condition was not met)."""
    if conn.execute(sa.select(runs_table.c.id).where(runs_table.c.id == run_id)).first() is None:
        raise RunNotFound(f"run {run_id} does not exist")
    return False


def stored_object(row: Any) -> StoredObject:
    return StoredObject(row.id, row.kind, row.tenant, row.created_at, json.loads(row.data), row.parent_id)


def object_values(obj: StoredObject) -> dict[str, Any]:
    return {"id": obj.id, "kind": obj.kind, "tenant": obj.tenant, "parent_id": obj.parent_id,
            "created_at": obj.created_at, "data": json.dumps(obj.data)}  # fmt: skip
