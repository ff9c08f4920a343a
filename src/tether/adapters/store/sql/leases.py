"""Leases on runs, kept in the run rows: who advances a run, until when, and which runs nobody does.

Each change is one guarded UPDATE (a compare-and-set on the owner or the expiry), so that of two
processes racing for a run, one wins.
"""

from __future__ import annotations

import time

import sqlalchemy as sa

from tether.adapters.store.sql.database import Call, Database
from tether.adapters.store.sql.schema import require_run, runs_table


class Leases:
    def __init__(self, db: Database, call: Call) -> None:
        self._db, self._call = db, call

    async def acquire_lease(self, run_id: str, owner: str, ttl_s: float) -> bool:
        c = runs_table.c

        def op(conn: sa.Connection) -> bool:
            now = time.time()
            with self._db.tx(conn, write=True):
                taken = conn.execute(
                    runs_table.update()
                    .where(
                        c.id == run_id,
                        sa.or_(c.lease_owner.is_(None), c.lease_owner == owner, c.lease_expires.is_(None),
                               c.lease_expires < now),
                    )
                    .values(lease_owner=owner, lease_expires=now + ttl_s)
                ).rowcount  # fmt: skip
                return taken == 1 or require_run(conn, run_id)

        return await self._call(op)

    async def take_over_lease(self, run_id: str, old_owner: str, owner: str, ttl_s: float) -> bool:
        c = runs_table.c

        def op(conn: sa.Connection) -> bool:
            with self._db.tx(conn, write=True):
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
            with self._db.tx(conn, write=True):
                renewed = conn.execute(
                    runs_table.update()
                    .where(c.id == run_id, c.lease_owner == owner)
                    .values(lease_expires=time.time() + ttl_s)
                ).rowcount
                return renewed == 1 or require_run(conn, run_id)

        return await self._call(op)

    async def release_lease(self, run_id: str, owner: str) -> None:
        c = runs_table.c

        def op(conn: sa.Connection) -> None:
            with self._db.tx(conn, write=True):
                released = conn.execute(
                    runs_table.update()
                    .where(c.id == run_id, c.lease_owner == owner)
                    .values(lease_owner=None, lease_expires=None, status=sa.case(
                        (c.status == "running", "queued"), else_=c.status))  # see released_status
                ).rowcount
                if released != 1:
                    require_run(conn, run_id)

        await self._call(op)

    async def expired_runs(self) -> list[str]:
        c = runs_table.c

        def op(conn: sa.Connection) -> list[str]:
            now = time.time()
            with self._db.tx(conn, write=False):
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
