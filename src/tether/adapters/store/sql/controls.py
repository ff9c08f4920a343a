"""Controls set on a run from outside, beside its row: breakpoints set after it started, and a cancel
asked for by a process that does not hold the run (its owner's heartbeat acts on it)."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from tether.adapters.store.sql.database import Call, Database
from tether.domain.errors import RunNotFound

_CONTROL_COLUMNS = ("breakpoints", "cancel_requested")  # columns other processes set on a run


class Controls:
    def __init__(self, db: Database, call: Call) -> None:
        self._db, self._call = db, call

    async def set_breakpoints(self, run_id: str, breakpoints: list[dict[str, Any]] | None) -> None:
        await self._set(run_id, "breakpoints", None if breakpoints is None else json.dumps(breakpoints))

    async def get_breakpoints(self, run_id: str) -> list[dict[str, Any]] | None:
        data = await self._get(run_id, "breakpoints")
        return None if data is None else json.loads(data)  # type: ignore[no-any-return]

    async def request_cancel(self, run_id: str, reason: str) -> None:
        await self._set(run_id, "cancel_requested", reason)

    async def cancel_requested(self, run_id: str) -> str | None:
        return await self._get(run_id, "cancel_requested")

    async def _set(self, run_id: str, column: str, value: str | None) -> None:
        assert column in _CONTROL_COLUMNS  # a fixed name, never user input, spliced into the SQL

        def op(conn: sa.Connection) -> None:
            with self._db.tx(conn, write=True):
                done = conn.execute(sa.text(f"UPDATE runs SET {column} = :v WHERE id = :id"),
                                    {"v": value, "id": run_id}).rowcount  # fmt: skip
                if done != 1:
                    raise RunNotFound(f"no run {run_id!r}")

        await self._call(op)

    async def _get(self, run_id: str, column: str) -> str | None:
        """One column of the run's row, read without letting pending appends commit first: other
        processes set these columns, never the writer."""
        assert column in _CONTROL_COLUMNS

        def op(conn: sa.Connection) -> Any:
            with self._db.tx(conn, write=False):
                return conn.execute(sa.text(f"SELECT {column} FROM runs WHERE id = :id"), {"id": run_id}).scalar()

        return await self._db.execute(op)  # type: ignore[no-any-return]
