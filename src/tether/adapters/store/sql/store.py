"""`SqlStore`: the run store in SQLite (default) or Postgres, the one object the rest of Tether gets.

Same contract as `MemoryStore` (see "The run contract" in DESIGN.md). It is composed of one part a
concept, each in its own module, and only hands each call to its part:

- `database`: the connection(s), transactions, and where a statement runs;
- `writer`: the group-commit writer (`append`, `sync`), which every other statement waits for;
- `runs`: creating runs, reading their records and rows, `decide`;
- `leases`: who advances a run; `controls`: breakpoints and cancel requests set on a run;
- `objects`: the HTTP interface's documents;
- `budgets`: shared budgets and their reservations (the governor's).
- `batches`: batches and their cases, read with their runs' rows; deleting runs.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, Literal, Protocol

from tether.adapters.store.sql.batches import Batches
from tether.adapters.store.sql.budgets import Budgets
from tether.adapters.store.sql.controls import Controls
from tether.adapters.store.sql.database import Database
from tether.adapters.store.sql.leases import Leases
from tether.adapters.store.sql.objects import Objects
from tether.adapters.store.sql.runs import Runs
from tether.adapters.store.sql.writer import GroupCommitWriter
from tether.domain.batches import BatchOptions, BatchRecord, BatchState, BatchTotals, Case, CaseRow, CaseStatus
from tether.domain.governor import BudgetState, ExhaustedPolicy, Spend
from tether.domain.leases import LeaseState
from tether.domain.objects import StoredObject
from tether.domain.records import Record, RunStatus
from tether.domain.runs import RunInfo


class _Append(Protocol):
    def __call__(self, records: Sequence[Record], spend: Spend | None = None) -> None: ...


class SqlStore:
    """The run log, the run index and the documents in SQLite or Postgres. See the module docstring."""

    append: _Append
    """Queue records for commit: the writer's own method, so that the hot path takes no extra call."""

    def __init__(self, url: str, *, synchronous: Literal["NORMAL", "FULL"] = "NORMAL") -> None:
        self._db = Database(url, synchronous=synchronous)
        self.url = self._db.url  # safe to show: no password
        self.dialect = self._db.dialect
        self._writer = GroupCommitWriter(self._db)
        self.append = self._writer.append
        self._runs = Runs(self._db, self._writer)
        self._leases = Leases(self._db, self._writer.call)
        self._controls = Controls(self._db, self._writer.call)
        self._objects = Objects(self._db, self._writer.call)
        self._budgets = Budgets(self._db, self._writer.call, self._writer.submit)
        self._batches = Batches(self._db, self._writer.call, self._writer.forget)

    # -- the log: `append` (above), sync and reads -----------------------------------------------

    async def sync(self) -> None:
        await self._writer.sync()

    async def create_run(self, record: Record, *, owner: str | None, lease_ttl_s: float = 30.0) -> None:
        await self._runs.create_run(record, owner=owner, lease_ttl_s=lease_ttl_s)

    async def load(self, run_id: str, after: int = 0) -> list[Record]:
        return await self._runs.load(run_id, after)

    async def get_run(self, run_id: str) -> RunInfo | None:
        return await self._runs.get_run(run_id)

    async def list_runs(
        self, *, limit: int = 50, status: RunStatus | None = None, thread_id: str | None = None
    ) -> list[RunInfo]:
        return await self._runs.list_runs(limit=limit, status=status, thread_id=thread_id)

    async def decide(self, run_id: str, pause_id: str, decisions: Sequence[Record]) -> bool:
        return await self._runs.decide(run_id, pause_id, decisions)

    # -- leases ---------------------------------------------------------------------------------

    async def acquire_lease(self, run_id: str, owner: str, ttl_s: float) -> bool:
        return await self._leases.acquire_lease(run_id, owner, ttl_s)

    async def take_over_lease(self, run_id: str, old_owner: str, owner: str, ttl_s: float) -> bool:
        return await self._leases.take_over_lease(run_id, old_owner, owner, ttl_s)

    async def renew_lease(self, run_id: str, owner: str, ttl_s: float) -> bool:
        return await self._leases.renew_lease(run_id, owner, ttl_s)

    async def renew_leases(self, owner: str, run_ids: Collection[str], ttl_s: float) -> list[LeaseState]:
        return await self._leases.renew_leases(owner, run_ids, ttl_s)

    async def controls(self, run_ids: Collection[str]) -> list[LeaseState]:
        return await self._leases.controls(run_ids)

    async def release_lease(self, run_id: str, owner: str) -> None:
        await self._leases.release_lease(run_id, owner)

    async def expired_runs(self) -> list[str]:
        return await self._leases.expired_runs()

    # -- controls set on a run from outside -----------------------------------------------------

    async def set_breakpoints(self, run_id: str, breakpoints: list[dict[str, Any]] | None) -> None:
        await self._controls.set_breakpoints(run_id, breakpoints)

    async def get_breakpoints(self, run_id: str) -> list[dict[str, Any]] | None:
        return await self._controls.get_breakpoints(run_id)

    async def request_cancel(self, run_id: str, reason: str) -> None:
        await self._controls.request_cancel(run_id, reason)

    async def cancel_requested(self, run_id: str) -> str | None:
        return await self._controls.cancel_requested(run_id)

    # -- shared budgets (the governor's) ---------------------------------------------------------

    async def put_budget(self, budget_id: str, *, max_usd: float | None, max_tokens: int | None,
                         on_exhausted: ExhaustedPolicy = "pause") -> None:
        await self._budgets.put_budget(budget_id, max_usd=max_usd, max_tokens=max_tokens, on_exhausted=on_exhausted)

    async def get_budget(self, budget_id: str) -> BudgetState | None:
        return await self._budgets.get_budget(budget_id)

    async def delete_budget(self, budget_id: str) -> None:
        await self._budgets.delete_budget(budget_id)

    async def reserve(self, run_id: str, grant_id: str, budget_ids: Sequence[str], usd: float | None,
                      tokens: int) -> str | None:
        return await self._budgets.reserve(run_id, grant_id, budget_ids, usd, tokens)

    async def release(self, grant_id: str) -> None:
        await self._budgets.release(grant_id)

    async def warn_budgets(self, budget_ids: Sequence[str], share: float) -> list[BudgetState]:
        return await self._budgets.warn_budgets(budget_ids, share)

    # -- the HTTP interface's documents ----------------------------------------------------------

    async def put_object(self, obj: StoredObject) -> None:
        await self._objects.put_object(obj)

    async def insert_object(self, obj: StoredObject) -> bool:
        return await self._objects.insert_object(obj)

    async def replace_object(self, obj: StoredObject, old: StoredObject) -> bool:
        return await self._objects.replace_object(obj, old)

    async def get_object(self, object_id: str) -> StoredObject | None:
        return await self._objects.get_object(object_id)

    async def list_objects(
        self,
        kind: str,
        tenant: str,
        parent_id: str | None = None,
        *,
        after: str | None = None,
        before: str | None = None,
        limit: int | None = None,
        order: Literal["asc", "desc"] = "asc",
    ) -> list[StoredObject]:
        return await self._objects.list_objects(
            kind, tenant, parent_id, after=after, before=before, limit=limit, order=order
        )

    async def delete_object(self, object_id: str) -> bool:
        return await self._objects.delete_object(object_id)

    async def delete_children(self, parent_id: str, kinds: Sequence[str]) -> int:
        return await self._objects.delete_children(parent_id, kinds)

    # -- batches, and deleting runs --------------------------------------------------------------

    async def create_batch(self, batch: BatchRecord, cases: Sequence[Case]) -> None:
        await self._batches.create_batch(batch, cases)

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        return await self._batches.get_batch(batch_id)

    async def list_batches(self, *, tenant: str | None = None, limit: int = 50,
                           after: str | None = None) -> list[BatchRecord]:
        return await self._batches.list_batches(tenant=tenant, limit=limit, after=after)

    async def background_batches(self) -> list[BatchRecord]:
        return await self._batches.background_batches()

    async def batch_totals(self, batch_id: str) -> BatchTotals:
        return await self._batches.batch_totals(batch_id)

    async def batch_cases(self, batch_id: str, *, status: CaseStatus | None = None, after: int | None = None,
                          limit: int = 100) -> list[CaseRow]:
        return await self._batches.batch_cases(batch_id, status=status, after=after, limit=limit)

    async def cases_to_run(self, batch_id: str, *, after: int = -1, limit: int = 500,
                           retry_failed: bool = False) -> list[CaseRow]:
        return await self._batches.cases_to_run(batch_id, after=after, limit=limit, retry_failed=retry_failed)

    async def start_cases(self, batch_id: str, starts: Sequence[tuple[int, int, str]]) -> None:
        await self._batches.start_cases(batch_id, starts)

    async def update_batch(self, batch_id: str, *, state: BatchState | None = None,
                           options: BatchOptions | None = None, background: bool | None = None) -> None:
        await self._batches.update_batch(batch_id, state=state, options=options, background=background)

    async def batch_run_ids(self, batch_id: str) -> list[str]:
        return await self._batches.batch_run_ids(batch_id)

    async def delete_batch(self, batch_id: str) -> None:
        await self._batches.delete_batch(batch_id)

    async def delete_runs(self, run_ids: Sequence[str]) -> int:
        return await self._batches.delete_runs(run_ids)

    async def finished_runs_before(self, cutoff: float, *, limit: int = 1000,
                                   with_batch_runs: bool = False) -> list[str]:
        return await self._batches.finished_runs_before(cutoff, limit=limit, with_batch_runs=with_batch_runs)

    # -- closing --------------------------------------------------------------------------------

    async def close(self) -> None:
        if self._writer.closed:
            return
        try:
            await self._writer.sync()
        finally:
            self._writer.close()
            self._db.close()
