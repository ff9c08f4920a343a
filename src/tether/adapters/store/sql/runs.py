"""The run log and run index beyond appends: creating a run, reading its records and rows, and
`decide`, the compare-and-set that answers a pause.

Appends and new runs go through the group-commit writer; what is written here outside it (decision
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
    info_from_row,
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
from tether.domain.records import Record, RunStatus
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
        # In the writer's next grouped commit: runs started together are created in one transaction.
        await self._writer.create(record, info)

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
        self, *, limit: int = 50, status: RunStatus | None = None, thread_id: str | None = None
    ) -> list[RunInfo]:
        query = sa.select(*INFO_SELECT).order_by(runs_table.c.id.desc()).limit(limit)
        if status is not None:
            query = query.where(runs_table.c.status == status)
        if thread_id is not None:
            query = query.where(runs_table.c.thread_id == thread_id)

        def op(conn: sa.Connection) -> list[RunInfo]:
            with self._db.tx(conn, write=False):
                return [info_from_row(row) for row in conn.execute(query)]

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
                    return info if info and info.status == RunStatus.PAUSED and info.pause_id == pause_id else None
                won = conn.execute(
                    runs_table.update()
                    .where(c.id == run_id, c.status == RunStatus.PAUSED, c.pause_id == pause_id)
                    .values(status=RunStatus.QUEUED, pause_id=None)
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
