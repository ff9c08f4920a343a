"""Shared budgets and their reservations (the governor's), in the `budgets` and `reservations` tables.

Reservations, releases and warnings are submitted to the group-commit writer: those of every run
due in one loop iteration share one transaction. A reservation is one conditional UPDATE per
budget (`... WHERE spent + reserved + :x <= max`), all in one transaction with the reservation
rows: atomic on SQLite (one writer at a time) and on Postgres (a concurrent UPDATE waits for the
row lock, then checks its WHERE again on the row as the other left it). A reservation updates its
budgets in id order; two processes' grouped transactions that still lock budgets crosswise (a
deadlock Postgres breaks) are run again one reservation a transaction (writer.py).

A reservation counts only while its run holds a live lease: a refused reservation first takes back
(reaps) the budgets' reservations whose run's lease expired or was given back, then tries once more;
a run's own are taken back when another owner takes its lease (leases.py). So a killed process
leaks nothing. A settled call's spend is written by the group-commit writer with the call's record
(`apply_spends`, on the raw driver's cursor), so that a crash can neither lose nor double it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from tether.adapters.store.sql.database import Call, Database
from tether.domain.governor import EPSILON_USD, BudgetState, ExhaustedPolicy, Spend, check_budget_limits

_COLUMNS = ("id, max_usd, max_tokens, spent_usd, spent_tokens, reserved_usd, reserved_tokens, warned, "
            "created_at, on_exhausted")
_FITS_TOKENS = "(max_tokens IS NULL OR spent_tokens + reserved_tokens + :tokens <= max_tokens)"
_RESERVE = sa.text(
    "UPDATE budgets SET reserved_usd = reserved_usd + :usd, reserved_tokens = reserved_tokens + :tokens "
    f"WHERE id = :id AND (max_usd IS NULL OR spent_usd + reserved_usd + :usd <= max_usd + {EPSILON_USD}) "
    f"AND {_FITS_TOKENS}"
)
# A call whose price is unknown fits no dollar budget.
_RESERVE_UNPRICED = sa.text(
    "UPDATE budgets SET reserved_tokens = reserved_tokens + :tokens "
    f"WHERE id = :id AND max_usd IS NULL AND {_FITS_TOKENS}"
)
# Sums and differences of float costs drift: what is left reserved below EPSILON_USD is nothing.
_LESS_USD = f"CASE WHEN reserved_usd - {{x}} < {EPSILON_USD} THEN 0 ELSE reserved_usd - {{x}} END"
_UNRESERVE = sa.text(
    f"UPDATE budgets SET reserved_usd = {_LESS_USD.format(x=':usd')}, reserved_tokens = reserved_tokens - :tokens "
    "WHERE id = :id"
)
_INSERT = sa.text(
    "INSERT INTO reservations (id, budget_id, run_id, usd, tokens, created_at) "
    "VALUES (:id, :budget_id, :run_id, :usd, :tokens, :now)"
)
# Reservations whose run no longer holds a live lease (or no longer exists).
_STALE = (
    "SELECT r.id, r.budget_id, r.usd, r.tokens FROM reservations r LEFT JOIN runs u ON u.id = r.run_id "
    "WHERE r.budget_id = :budget AND (u.id IS NULL OR u.lease_owner IS NULL OR u.lease_expires IS NULL "
    "OR u.lease_expires < :now) ORDER BY r.id"
)


class Budgets:
    """`call` runs a statement of its own; `submit` one of the next grouped flush's (see writer.py):
    reservations, releases and warnings, which every model call of a budgeted run makes."""

    def __init__(self, db: Database, call: Call, submit: Call) -> None:
        self._db, self._call, self._submit = db, call, submit

    async def put_budget(self, budget_id: str, *, max_usd: float | None, max_tokens: int | None,
                         on_exhausted: ExhaustedPolicy = "pause") -> None:
        check_budget_limits(max_usd, max_tokens, on_exhausted)
        def op(conn: sa.Connection) -> None:
            with self._db.tx(conn, write=True):
                changed = conn.execute(
                    # New limits warn again at 80 % of themselves.
                    sa.text("UPDATE budgets SET max_usd = :max_usd, max_tokens = :max_tokens, warned = :no, "
                            "on_exhausted = :policy WHERE id = :id"),
                    {"id": budget_id, "max_usd": max_usd, "max_tokens": max_tokens, "no": False,
                     "policy": on_exhausted},
                ).rowcount
                if not changed:
                    conn.execute(
                        sa.text("INSERT INTO budgets (id, max_usd, max_tokens, created_at, on_exhausted) "
                                "VALUES (:id, :max_usd, :max_tokens, :now, :policy)"),
                        {"id": budget_id, "max_usd": max_usd, "max_tokens": max_tokens, "now": time.time(),
                         "policy": on_exhausted},
                    )

        await self._call(op)

    async def get_budget(self, budget_id: str) -> BudgetState | None:
        def op(conn: sa.Connection) -> BudgetState | None:
            with self._db.tx(conn, write=False):
                row = conn.execute(sa.text(f"SELECT {_COLUMNS} FROM budgets WHERE id = :id"),
                                   {"id": budget_id}).first()
            return None if row is None else _state(row)

        return await self._call(op)

    async def delete_budget(self, budget_id: str) -> None:
        def op(conn: sa.Connection) -> None:
            with self._db.tx(conn, write=True):
                conn.execute(sa.text("DELETE FROM reservations WHERE budget_id = :id"), {"id": budget_id})
                conn.execute(sa.text("DELETE FROM budgets WHERE id = :id"), {"id": budget_id})

        await self._call(op)

    async def reserve(self, run_id: str, grant_id: str, budget_ids: Sequence[str], usd: float | None,
                      tokens: int) -> str | None:
        ordered = sorted(set(budget_ids))

        def op(conn: sa.Connection) -> str | None:  # in the flush's transaction
            refused = _try_reserve(conn, ordered, usd, tokens)
            if refused is not None:
                now = time.time()
                for budget_id in ordered:
                    reap(conn, sa.text(_STALE), {"budget": budget_id, "now": now})
                refused = _try_reserve(conn, ordered, usd, tokens)
                if refused is not None:
                    return refused
            now = time.time()
            for budget_id in ordered:
                conn.execute(_INSERT, {"id": grant_id, "budget_id": budget_id, "run_id": run_id,
                                       "usd": usd or 0.0, "tokens": tokens, "now": now})
            return None

        return await self._submit(op)

    async def release(self, grant_id: str) -> None:
        def op(conn: sa.Connection) -> None:  # in the flush's transaction
            reap(conn, sa.text("SELECT id, budget_id, usd, tokens FROM reservations WHERE id = :id "
                               "ORDER BY budget_id"), {"id": grant_id})

        await self._submit(op)

    async def warn_budgets(self, budget_ids: Sequence[str], share: float) -> list[BudgetState]:
        ordered = sorted(set(budget_ids))

        def op(conn: sa.Connection) -> list[BudgetState]:  # in the flush's transaction
            out = []
            for budget_id in ordered:
                changed = conn.execute(sa.text(
                    "UPDATE budgets SET warned = :yes WHERE id = :id AND warned = :no AND ("
                    "(max_usd > 0 AND spent_usd + reserved_usd >= :share * max_usd) OR "
                    "(max_tokens > 0 AND spent_tokens + reserved_tokens >= :share * max_tokens))"),
                    {"id": budget_id, "share": share, "yes": True, "no": False}).rowcount
                if changed:
                    row = conn.execute(sa.text(f"SELECT {_COLUMNS} FROM budgets WHERE id = :id"),
                                       {"id": budget_id}).first()
                    if row is not None:
                        out.append(_state(row))
            return out

        return await self._submit(op)


def _try_reserve(conn: sa.Connection, ordered: list[str], usd: float | None, tokens: int) -> str | None:
    """Reserve in every budget, or in none: the id of the first that refused (the ones before it are
    given back in the same transaction)."""
    done: list[str] = []
    for budget_id in ordered:
        if usd is None:
            fits = conn.execute(_RESERVE_UNPRICED, {"id": budget_id, "tokens": tokens}).rowcount
        else:
            fits = conn.execute(_RESERVE, {"id": budget_id, "usd": usd, "tokens": tokens}).rowcount
        if not fits:
            for earlier in done:
                conn.execute(_UNRESERVE, {"id": earlier, "usd": usd or 0.0, "tokens": tokens})
            return budget_id
        done.append(budget_id)
    return None


def reap(conn: sa.Connection, select: Any, params: dict[str, Any]) -> None:
    """Take back the reservations `select` finds (id, budget_id, usd, tokens): subtract, delete."""
    for grant_id, budget_id, usd, tokens in conn.execute(select, params).all():
        conn.execute(_UNRESERVE, {"id": budget_id, "usd": usd, "tokens": tokens})
        conn.execute(sa.text("DELETE FROM reservations WHERE id = :id AND budget_id = :b"),
                     {"id": grant_id, "b": budget_id})


def reap_run(conn: sa.Connection, run_id: str) -> None:
    """Take back a run's reservations (another owner took its lease: the old owner's calls are gone)."""
    reap(conn, sa.text("SELECT id, budget_id, usd, tokens FROM reservations WHERE run_id = :run "
                       "ORDER BY budget_id"), {"run": run_id})


def apply_spends(cur: Any, spends: Sequence[Spend], postgres: bool) -> None:
    """Write settled calls' spends on the writer's raw cursor, inside the transaction of their records:
    each budget's spend grows by the real cost and tokens, its reservation is taken back."""
    q = "%s" if postgres else "?"
    for spend in spends:
        rows = cur.execute(f"SELECT budget_id, usd, tokens FROM reservations WHERE id = {q} ORDER BY budget_id",
                           (spend.grant_id,))
        # (a sqlite3 connection's execute returns its cursor; a psycopg cursor's returns itself)
        reserved = {budget_id: (usd, tokens) for budget_id, usd, tokens in (rows or cur).fetchall()}
        for budget_id in sorted(set(spend.budgets)):
            r_usd, r_tokens = reserved.get(budget_id, (0.0, 0))  # reaped meanwhile: nothing to take back
            cur.execute(
                f"UPDATE budgets SET spent_usd = spent_usd + {q}, spent_tokens = spent_tokens + {q}, "
                f"reserved_usd = {_LESS_USD.format(x=q)}, reserved_tokens = reserved_tokens - {q} WHERE id = {q}",
                (spend.usd, spend.tokens, r_usd, r_usd, r_tokens, budget_id),
            )
        if reserved:
            cur.execute(f"DELETE FROM reservations WHERE id = {q}", (spend.grant_id,))


def _state(row: Any) -> BudgetState:
    (budget_id, max_usd, max_tokens, spent_usd, spent_tokens, reserved_usd, reserved_tokens, warned,
     created_at, on_exhausted) = row
    return BudgetState(budget_id, None if max_usd is None else float(max_usd),
                       None if max_tokens is None else int(max_tokens), float(spent_usd), int(spent_tokens),
                       float(reserved_usd), int(reserved_tokens), bool(warned), float(created_at),
                       "fail" if on_exhausted == "fail" else "pause")
