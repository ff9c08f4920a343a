"""Batches in the SQL store: `batches`, `batch_cases` (the cases, stored at creation, with their current
attempt's run id) and `batch_runs` (every attempt's run), read with the runs' rows.

A page of cases is one query joining `runs`, plus one for the pages' step counts and one for their
runs' ends (`finished`, or the latest `paused` record): showing 10,000 cases never loads 10,000 logs.
Deleting runs (a batch's, or `runs prune`) lives here too: it is the one place runs are deleted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa

from tether.adapters.store.sql.database import Call, Database
from tether.adapters.store.sql.schema import (
    INFO_SELECT,
    batch_cases_table,
    batch_runs_table,
    batches_table,
    info_from_row,
    records_table,
    runs_table,
)
from tether.domain.batches import (
    BatchOptions,
    BatchRecord,
    BatchState,
    BatchTotals,
    Case,
    CaseRow,
    CaseStatus,
    StoredCase,
)
from tether.domain.codec import load_payload
from tether.domain.records import TERMINAL, Finished, Paused, RunStatus

CHUNK = 500  # ids a statement names at most (SQLite allows 32,766 bound values; stay well below)
_TODO = (RunStatus.QUEUED, RunStatus.RUNNING)
_RETRY = (RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.INCOMPLETE)
_CASE_COLUMNS = [batch_cases_table.c[n] for n in ("idx", "key", "input", "vars", "expected", "metadata",
                                                   "attempt", "run_id")]


def batch_values(b: BatchRecord) -> dict[str, Any]:
    return {"id": b.id, "tenant": b.tenant, "name": b.name, "state": b.state.value, "created_at": b.created_at,
            "agent": json.dumps(b.agent), "agent_ref": b.agent_ref, "options": json.dumps(b.options.to_dict()),
            "cases_hash": b.cases_hash, "source": b.source, "total": b.total, "background": None}


def batch_record(row: Any) -> BatchRecord:
    return BatchRecord(row.id, row.tenant, row.name, BatchState(row.state), row.created_at, json.loads(row.agent),
                       row.agent_ref, BatchOptions.from_dict(json.loads(row.options)), row.cases_hash, row.source,
                       row.total)


def case_values(batch_id: str, c: Case) -> dict[str, Any]:
    return {"batch_id": batch_id, "idx": c.index, "key": c.key, "input": c.input, "vars": json.dumps(c.vars),
            "expected": None if c.expected is None else json.dumps(c.expected),
            "metadata": json.dumps(c.metadata), "attempt": 1, "run_id": None}


def _stored_case(row: Sequence[Any]) -> StoredCase:
    idx, key, text, variables, expected, metadata, attempt, run_id = row[:8]
    case = Case(idx, key, text, json.loads(variables), None if expected is None else json.loads(expected),
                json.loads(metadata))
    return StoredCase(case, attempt, run_id)


def _case_row(row: Sequence[Any]) -> CaseRow:
    run = info_from_row(row[8:]) if row[8] is not None else None
    return CaseRow(_stored_case(row), run)


def _chunks(ids: Sequence[str]) -> Iterator[list[str]]:
    for i in range(0, len(ids), CHUNK):
        yield list(ids[i:i + CHUNK])


class Batches:
    def __init__(self, db: Database, call: Call, forget: Any = None) -> None:
        self._db, self._call = db, call
        self._forget = forget  # the writer's `forget`: a deleted run is no longer its business

    async def create_batch(self, batch: BatchRecord, cases: Sequence[Case]) -> None:
        rows = [case_values(batch.id, c) for c in cases]

        def op(conn: sa.Connection) -> None:
            with self._db.tx(conn, write=True):
                conn.execute(batches_table.insert(), batch_values(batch))
                if rows:
                    conn.execute(batch_cases_table.insert(), rows)  # executemany: one statement, many rows

        await self._call(op)

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        def op(conn: sa.Connection) -> Any:
            with self._db.tx(conn, write=False):
                return conn.execute(sa.select(batches_table).where(batches_table.c.id == batch_id)).first()

        row = await self._call(op)
        return None if row is None else batch_record(row)

    async def list_batches(self, *, tenant: str | None = None, limit: int = 50,
                           after: str | None = None) -> list[BatchRecord]:
        t = batches_table
        query = sa.select(t).order_by(t.c.id.desc()).limit(limit)
        if tenant is not None:
            query = query.where(t.c.tenant == tenant)
        if after is not None:
            query = query.where(t.c.id < after)

        def op(conn: sa.Connection) -> list[Any]:
            with self._db.tx(conn, write=False):
                return list(conn.execute(query))

        return [batch_record(row) for row in await self._call(op)]

    async def background_batches(self) -> list[BatchRecord]:
        t = batches_table
        query = sa.select(t).where(t.c.background.is_(True), t.c.state == BatchState.OPEN.value).order_by(t.c.id)

        def op(conn: sa.Connection) -> list[Any]:
            with self._db.tx(conn, write=False):
                return list(conn.execute(query))

        return [batch_record(row) for row in await self._call(op)]

    async def batch_totals(self, batch_id: str) -> BatchTotals:
        bc, r, br = batch_cases_table, runs_table, batch_runs_table
        counts_q = (sa.select(r.c.status, sa.func.count())
                    .select_from(bc.outerjoin(r, r.c.id == bc.c.run_id))
                    .where(bc.c.batch_id == batch_id).group_by(r.c.status))
        unknown = sa.func.sum(sa.case((sa.and_(r.c.cost_usd.is_(None), r.c.input_tokens + r.c.output_tokens > 0), 1),
                                      else_=0))
        spend_q = (sa.select(sa.func.sum(r.c.input_tokens), sa.func.sum(r.c.output_tokens), sa.func.sum(r.c.cost_usd),
                             unknown)
                   .select_from(br.join(r, r.c.id == br.c.run_id)).where(br.c.batch_id == batch_id))

        def op(conn: sa.Connection) -> tuple[list[Any], Any]:
            with self._db.tx(conn, write=False):
                return list(conn.execute(counts_q)), conn.execute(spend_q).first()

        counts, spend = await self._call(op)
        totals = BatchTotals({CaseStatus.PENDING if s is None else CaseStatus(s): int(n) for s, n in counts})
        if spend is not None:
            inp, out, cost, unknown_n = spend
            totals.input_tokens, totals.output_tokens = int(inp or 0), int(out or 0)
            totals.cost_usd = None if unknown_n or cost is None else float(cost)
        return totals

    def _page_query(self, batch_id: str, after: int | None, limit: int) -> sa.Select[Any]:
        bc, r = batch_cases_table, runs_table
        query = (sa.select(*_CASE_COLUMNS, *INFO_SELECT)
                 .select_from(bc.outerjoin(r, r.c.id == bc.c.run_id))
                 .where(bc.c.batch_id == batch_id).order_by(bc.c.idx).limit(limit))
        if after is not None:
            query = query.where(bc.c.idx > after)
        return query

    async def batch_cases(self, batch_id: str, *, status: CaseStatus | None = None, after: int | None = None,
                          limit: int = 100) -> list[CaseRow]:
        r = runs_table
        query = self._page_query(batch_id, after, limit)
        if status == CaseStatus.PENDING:
            query = query.where(r.c.id.is_(None))
        elif status is not None:
            query = query.where(r.c.status == status.value)

        def op(conn: sa.Connection) -> list[CaseRow]:
            with self._db.tx(conn, write=False):
                rows = [_case_row(row) for row in conn.execute(query)]
                _read_ends(conn, rows)
                return rows

        return await self._call(op)

    async def cases_to_run(self, batch_id: str, *, after: int = -1, limit: int = 500,
                           retry_failed: bool = False) -> list[CaseRow]:
        r = runs_table
        wanted = [*_TODO, *(_RETRY if retry_failed else ())]
        query = self._page_query(batch_id, after, limit).where(sa.or_(r.c.id.is_(None), r.c.status.in_(wanted)))

        def op(conn: sa.Connection) -> list[CaseRow]:
            with self._db.tx(conn, write=False):
                return [_case_row(row) for row in conn.execute(query)]

        return await self._call(op)

    async def start_cases(self, batch_id: str, starts: Sequence[tuple[int, int, str]]) -> None:
        """Record that each case (index, attempt, run id) is at that attempt, whose run is about to be
        created: one transaction for many cases, in driver SQL (a case start is on a batch's hot path).
        It runs without waiting for pending appends (it touches no run), so it does not break their
        grouped commit."""
        mark = "?" if self._db.sqlite else "%s"
        update = (f"UPDATE batch_cases SET attempt = {mark}, run_id = {mark} "
                  f"WHERE batch_id = {mark} AND idx = {mark}")
        insert = (f"INSERT INTO batch_runs (run_id, batch_id, idx, attempt) VALUES ({mark}, {mark}, {mark}, {mark}) "
                  "ON CONFLICT (run_id) DO NOTHING")
        updates = [(a, r, batch_id, i) for i, a, r in starts]
        inserts = [(r, batch_id, i, a) for i, a, r in starts]

        def op(conn: sa.Connection) -> None:
            with self._db.tx(conn, write=True):
                conn.exec_driver_sql(update, updates)  # type: ignore[arg-type]
                conn.exec_driver_sql(insert, inserts)  # type: ignore[arg-type]

        await self._db.execute(op)

    async def update_batch(self, batch_id: str, *, state: BatchState | None = None,
                           options: BatchOptions | None = None, background: bool | None = None) -> None:
        values: dict[str, Any] = {}
        if state is not None:
            values["state"] = state.value
        if options is not None:
            values["options"] = json.dumps(options.to_dict())
        if background is not None:
            values["background"] = True if background else None
        if not values:
            return

        def op(conn: sa.Connection) -> None:
            with self._db.tx(conn, write=True):
                conn.execute(batches_table.update().where(batches_table.c.id == batch_id).values(**values))

        await self._call(op)

    async def batch_run_ids(self, batch_id: str) -> list[str]:
        br = batch_runs_table

        def op(conn: sa.Connection) -> list[str]:
            with self._db.tx(conn, write=False):
                return [row[0] for row in conn.execute(sa.select(br.c.run_id).where(br.c.batch_id == batch_id)
                                                       .order_by(br.c.idx, br.c.attempt))]

        return await self._call(op)

    async def delete_batch(self, batch_id: str) -> None:
        def op(conn: sa.Connection) -> None:
            with self._db.tx(conn, write=True):
                conn.execute(batch_runs_table.delete().where(batch_runs_table.c.batch_id == batch_id))
                conn.execute(batch_cases_table.delete().where(batch_cases_table.c.batch_id == batch_id))
                conn.execute(batches_table.delete().where(batches_table.c.id == batch_id))

        await self._call(op)

    async def delete_runs(self, run_ids: Sequence[str]) -> int:
        def op(conn: sa.Connection) -> int:
            deleted = 0
            with self._db.tx(conn, write=True):
                for chunk in _chunks(run_ids):
                    conn.execute(records_table.delete().where(records_table.c.run_id.in_(chunk)))
                    conn.execute(batch_runs_table.delete().where(batch_runs_table.c.run_id.in_(chunk)))
                    deleted += int(conn.execute(runs_table.delete().where(runs_table.c.id.in_(chunk))).rowcount)
            return deleted

        deleted = await self._call(op)
        if self._forget is not None:
            for run_id in run_ids:
                self._forget(run_id)
        return deleted

    async def finished_runs_before(self, cutoff: float, *, limit: int = 1000,
                                   with_batch_runs: bool = False) -> list[str]:
        r, br = runs_table, batch_runs_table
        query = (sa.select(r.c.id).where(r.c.status.in_([s.value for s in TERMINAL]), r.c.updated_at < cutoff,
                                         r.c.thread_id.is_(None))
                 .order_by(r.c.updated_at).limit(limit))
        if not with_batch_runs:
            query = query.where(~sa.exists().where(br.c.run_id == r.c.id))

        def op(conn: sa.Connection) -> list[str]:
            with self._db.tx(conn, write=False):
                return [row[0] for row in conn.execute(query)]

        return await self._call(op)


def _read_ends(conn: sa.Connection, rows: list[CaseRow]) -> None:
    """Fill in the rows' step counts and their runs' ends (`finished`, or the latest `paused`)."""
    by_run = {row.run.id: row for row in rows if row.run is not None}
    if not by_run:
        return
    rec = records_table
    ids = list(by_run)
    ended = [i for i in ids if by_run[i].run.status in TERMINAL or by_run[i].run.status == RunStatus.PAUSED]  # type: ignore[union-attr]
    for chunk in _chunks(ids):
        for run_id, n in conn.execute(
                sa.select(rec.c.run_id, sa.func.count())
                .where(rec.c.run_id.in_(chunk), rec.c.kind.in_(["model_call", "tool_finished"]))
                .group_by(rec.c.run_id)):
            by_run[run_id].steps = int(n)
    for chunk in _chunks(ended):
        for run_id, payload, v in conn.execute(
                sa.select(rec.c.run_id, rec.c.payload, rec.c.v)
                .where(rec.c.run_id.in_(chunk), rec.c.kind.in_(["finished", "paused"]))
                .order_by(rec.c.run_id, rec.c.seq)):
            p = load_payload(payload, v)
            if isinstance(p, Finished):
                by_run[run_id].finished = p
            elif isinstance(p, Paused):
                by_run[run_id].paused = p
