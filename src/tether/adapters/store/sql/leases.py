"""Leases on runs, kept in the run rows: who advances a run, until when, and which runs nobody does.

Each change is one guarded UPDATE (a compare-and-set on the owner or the expiry), so that of two
processes racing for a run, one wins.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Collection, Sequence
from typing import Any

import sqlalchemy as sa

from tether.adapters.store.sql.budgets import reap_run
from tether.adapters.store.sql.database import Call, Database
from tether.adapters.store.sql.schema import require_run, runs_table
from tether.domain.leases import LeaseState
from tether.domain.records import RunStatus

_RETURNING = sqlite3.sqlite_version_info >= (3, 35)  # UPDATE ... RETURNING, on SQLite (Postgres has it)
_CONTROLS = "id, cancel_requested, breakpoints"  # what a renewal hands back (see controls.py)


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
                if taken == 1:
                    reap_run(conn, run_id)  # reservations of an earlier holder: its calls are gone
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
                if taken == 1:
                    reap_run(conn, run_id)  # the old owner's reservations: its calls are gone
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

    async def renew_leases(self, owner: str, run_ids: Collection[str], ttl_s: float) -> list[LeaseState]:
        """One UPDATE for every run the owner advances (its heartbeat), however many: the ids go in as one
        JSON array, and the renewed rows come back with their controls (RETURNING, or a SELECT in the same
        transaction on an SQLite older than 3.35)."""
        if not run_ids:
            return []
        held = f"lease_owner = :owner AND id IN ({self._ids})"
        params = {"owner": owner, "ids": json.dumps(list(run_ids))}
        returning = _RETURNING or not self._db.sqlite

        def op(conn: sa.Connection) -> list[LeaseState]:
            with self._db.tx(conn, write=True):
                renew = f"UPDATE runs SET lease_expires = :expires WHERE {held}"
                values = {**params, "expires": time.time() + ttl_s}
                if returning:
                    rows = conn.execute(sa.text(f"{renew} RETURNING {_CONTROLS}"), values).all()
                else:
                    conn.execute(sa.text(renew), values)
                    rows = conn.execute(sa.text(f"SELECT {_CONTROLS} FROM runs WHERE {held}"), params).all()
            return _lease_states(rows)

        return await self._call(op)

    async def controls(self, run_ids: Collection[str]) -> list[LeaseState]:
        """The runs among these with a cancel asked for or breakpoints set from outside: one read."""
        if not run_ids:
            return []
        query = sa.text(f"SELECT {_CONTROLS} FROM runs WHERE id IN ({self._ids}) "
                        "AND (cancel_requested IS NOT NULL OR breakpoints IS NOT NULL)")
        params = {"ids": json.dumps(list(run_ids))}

        def op(conn: sa.Connection) -> list[LeaseState]:
            with self._db.tx(conn, write=False):
                return _lease_states(conn.execute(query, params).all())

        return await self._call(op)

    @property
    def _ids(self) -> str:
        """The run ids of a JSON array parameter `:ids`, as a subquery (one parameter, however many)."""
        if self._db.sqlite:
            return "SELECT value FROM json_each(:ids)"
        return "SELECT json_array_elements_text(CAST(:ids AS json))"

    async def release_lease(self, run_id: str, owner: str) -> None:
        c = runs_table.c

        def op(conn: sa.Connection) -> None:
            with self._db.tx(conn, write=True):
                released = conn.execute(
                    runs_table.update()
                    .where(c.id == run_id, c.lease_owner == owner)
                    .values(lease_owner=None, lease_expires=None, status=sa.case(
                        (c.status == RunStatus.RUNNING, RunStatus.QUEUED), else_=c.status))  # see released_status
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
                            c.status.in_((RunStatus.QUEUED, RunStatus.RUNNING)),
                            sa.or_(c.lease_owner.is_(None), c.lease_expires.is_(None), c.lease_expires < now),
                        )
                        .order_by(c.id)
                    ).scalars()
                )

        return await self._call(op)


def _lease_states(rows: Sequence[Any]) -> list[LeaseState]:
    """Rows of `_CONTROLS` as LeaseStates (breakpoints stored as JSON text)."""
    return [LeaseState(run_id, cancel, None if bps is None else json.loads(bps)) for run_id, cancel, bps in rows]
