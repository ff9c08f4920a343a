"""The run log and run index beyond appends: creating a run, reading its records and rows, and
`decide`, the compare-and-set that answers a pause.

Appends go through the group-commit writer; what is written here outside it (a new run, decision
records) is told to the writer (`known`), and a whole load makes it start afresh (`forget`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from tether.adapters.store.sql.database import Database
from tether.adapters.store.sql.schema import (
    INFO_SELECT,
    info_values,
    read_info,
    record_values,
    records_table,
    require_run,
    runs_table,
    update_values,
)
from tether.adapters.store.sql.writer import GroupCommitWriter
from tether.domain.codec import load_payload
from tether.domain.errors import StoreConflict
from tether.domain.records import Record
from tether.domain.runs import RunInfo, info_from_start, update_info


class Runs:
    def __init__(self, db: Database, writer: GroupCommitWriter) -> None:
        self._db, self._writer, self._call = db, writer, writer.call

    async def create_run(self, record: Record, *, owner: str | None, lease_ttl_s: float = 30.0) -> None:
        now = time.time()
        info = info_from_start(record, now)
        update_info(info, record)
        if owner is not None:
            info.lease_owner, info.lease_expires = owner, now + lease_ttl_s
        row = record_values(record)

        def op(conn: sa.Connection) -> None:
            try:
                with self._db.tx(conn, write=True):
                    conn.execute(runs_table.insert(), info_values(info))  # no .values(): compiled once
                    conn.execute(records_table.insert(), row)
            except sa_exc.IntegrityError as e:
                raise self._create_conflict(conn, info) from e

        await self._call(op)
        self._writer.known(info)

    def _create_conflict(self, conn: sa.Connection, info: RunInfo) -> StoreConflict:
        with self._db.tx(conn, write=False):
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
            with self._db.tx(conn, write=False):
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
            # Reading only newer records (an event stream) does not reset the writer: the reader is
            # not the run's writer.
            self._writer.forget(run_id)
        return [Record(run_id, seq, ts, load_payload(payload, v), v) for seq, ts, payload, v in rows]

    async def get_run(self, run_id: str) -> RunInfo | None:
        def op(conn: sa.Connection) -> RunInfo | None:
            with self._db.tx(conn, write=False):
                return read_info(conn, run_id)

        return await self._call(op)

    async def list_runs(
        self, *, limit: int = 50, status: str | None = None, thread_id: str | None = None
    ) -> list[RunInfo]:
        query = sa.select(*INFO_SELECT).order_by(runs_table.c.id.desc()).limit(limit)
        if status is not None:
            query = query.where(runs_table.c.status == status)
        if thread_id is not None:
            query = query.where(runs_table.c.thread_id == thread_id)

        def op(conn: sa.Connection) -> list[RunInfo]:
            with self._db.tx(conn, write=False):
                return [RunInfo(*row) for row in conn.execute(query)]

        return await self._call(op)

    async def decide(self, run_id: str, pause_id: str, decisions: Sequence[Record]) -> bool:
        c = runs_table.c
        decisions = list(decisions)
        rows = [record_values(r) for r in decisions]

        def op(conn: sa.Connection) -> RunInfo | None:
            with self._db.tx(conn, write=True):  # SQLite: BEGIN IMMEDIATE, so racing processes serialise
                if not decisions:  # nothing to write: only say whether the pause is still open
                    info = read_info(conn, run_id)
                    if info is None:
                        require_run(conn, run_id)
                    return info if info and info.status == "paused" and info.pause_id == pause_id else None
                won = conn.execute(
                    runs_table.update()
                    .where(c.id == run_id, c.status == "paused", c.pause_id == pause_id)
                    .values(status="queued", pause_id=None)
                ).rowcount
                if won != 1:
                    require_run(conn, run_id)
                    return None
                info = read_info(conn, run_id)
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
                    .values(**update_values(info))
                )
                return info

        info = await self._call(op)
        if info is None:
            return False
        if decisions:
            self._writer.known(info)
        return True
