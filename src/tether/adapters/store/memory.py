"""An in-memory store: the same contract as the SQL store, for tests and throwaway runs."""

from __future__ import annotations

import copy
import time
from collections.abc import Collection, Sequence
from typing import Any, Literal

from tether.adapters.store.paging import check_page
from tether.domain.batches import (
    BatchOptions,
    BatchRecord,
    BatchState,
    BatchTotals,
    Case,
    CaseRow,
    CaseStatus,
    StoredCase,
    case_status,
)
from tether.domain.errors import RunNotFound, StoreConflict
from tether.domain.governor import EPSILON_USD, BudgetState, ExhaustedPolicy, Spend, check_budget_limits
from tether.domain.leases import LeaseState
from tether.domain.objects import StoredObject
from tether.domain.records import (
    ACTIVE,
    TERMINAL,
    UNPAUSED,
    Finished,
    ModelCalled,
    Paused,
    Record,
    RunStatus,
    ToolFinished,
)
from tether.domain.runs import RunInfo, info_from_start, released_status, update_info


class MemoryStore:
    def __init__(self) -> None:
        self._logs: dict[str, list[Record]] = {}
        self._runs: dict[str, RunInfo] = {}
        self._breakpoints: dict[str, list[dict[str, Any]] | None] = {}
        self._cancels: dict[str, str] = {}
        self._objects: dict[str, StoredObject] = {}
        self._budgets: dict[str, BudgetState] = {}
        self._reservations: dict[str, list[tuple[str, str, float, int]]] = {}  # grant -> (budget, run, usd, tokens)
        self._batches: dict[str, BatchRecord] = {}
        self._background: set[str] = set()
        self._cases: dict[str, list[StoredCase]] = {}
        self._batch_runs: dict[str, tuple[str, int, int]] = {}  # run id -> (batch id, case index, attempt)

    async def create_run(self, record: Record, *, owner: str | None, lease_ttl_s: float = 30.0) -> None:
        info = info_from_start(record, time.time())
        if info.thread_id is not None:
            for other in self._runs.values():
                if other.thread_id == info.thread_id and other.status in ACTIVE:
                    raise StoreConflict(f"thread {info.thread_id} already has an active run ({other.id})")
        self._runs[record.run_id] = info
        self._logs[record.run_id] = []
        self._write(record)
        if owner is not None:
            info.lease_owner, info.lease_expires = owner, time.time() + lease_ttl_s

    def append(self, records: Sequence[Record], spend: Spend | None = None) -> None:
        for r in records:
            self._write(r)
        if spend is not None:
            self._spend(spend)

    def _write(self, r: Record) -> None:
        log = self._logs[r.run_id]
        if r.seq != len(log) + 1:
            raise StoreConflict(f"run {r.run_id}: record {r.seq} conflicts with the log (at {len(log)})")
        log.append(r)
        update_info(self._runs[r.run_id], r)

    async def sync(self) -> None:
        return None

    async def load(self, run_id: str, after: int = 0) -> list[Record]:
        return self._logs.get(run_id, [])[max(after, 0):]  # seq n is at index n - 1

    async def get_run(self, run_id: str) -> RunInfo | None:
        return self._runs.get(run_id)

    async def list_runs(
        self, *, limit: int = 50, status: str | None = None, thread_id: str | None = None
    ) -> list[RunInfo]:
        rows = [
            r
            for r in self._runs.values()
            if (status is None or r.status == status) and (thread_id is None or r.thread_id == thread_id)
        ]
        rows.sort(key=lambda r: r.id, reverse=True)
        return rows[:limit]

    async def acquire_lease(self, run_id: str, owner: str, ttl_s: float) -> bool:
        info = self._runs[run_id]
        now = time.time()
        if info.lease_owner in (None, owner) or (info.lease_expires or 0) < now:
            if info.lease_owner != owner:
                self._reap(lambda _b, run_id: run_id == info.id)  # an earlier holder's are stale now
            info.lease_owner, info.lease_expires = owner, now + ttl_s
            return True
        return False

    async def take_over_lease(self, run_id: str, old_owner: str, owner: str, ttl_s: float) -> bool:
        info = self._runs[run_id]
        if info.lease_owner != old_owner:
            return False
        self._reap(lambda _b, run_id: run_id == info.id)  # the old owner's are stale now
        info.lease_owner, info.lease_expires = owner, time.time() + ttl_s
        return True

    async def renew_lease(self, run_id: str, owner: str, ttl_s: float) -> bool:
        info = self._runs[run_id]
        if info.lease_owner != owner:
            return False
        info.lease_expires = time.time() + ttl_s
        return True

    async def renew_leases(self, owner: str, run_ids: Collection[str], ttl_s: float) -> list[LeaseState]:
        expires = time.time() + ttl_s
        renewed = []
        for run_id in run_ids:
            info = self._runs.get(run_id)
            if info is None or info.lease_owner != owner:
                continue
            info.lease_expires = expires
            bps = self._breakpoints.get(run_id)
            renewed.append(LeaseState(run_id, self._cancels.get(run_id), copy.deepcopy(bps)))
        return renewed

    async def controls(self, run_ids: Collection[str]) -> list[LeaseState]:
        return [LeaseState(run_id, self._cancels.get(run_id), copy.deepcopy(self._breakpoints.get(run_id)))
                for run_id in run_ids
                if self._cancels.get(run_id) is not None or self._breakpoints.get(run_id) is not None]

    async def release_lease(self, run_id: str, owner: str) -> None:
        info = self._runs[run_id]
        if info.lease_owner == owner:
            info.lease_owner, info.lease_expires = None, None
            info.status = released_status(info.status)

    async def decide(self, run_id: str, pause_id: str, decisions: Sequence[Record]) -> bool:
        info = self._runs[run_id]
        if info.status != RunStatus.PAUSED or info.pause_id != pause_id:
            return False
        self.append(decisions)
        return True

    async def expired_runs(self) -> list[str]:
        now = time.time()
        return [
            r.id
            for r in self._runs.values()
            if r.status in UNPAUSED and (r.lease_owner is None or (r.lease_expires or 0) < now)
        ]

    async def set_breakpoints(self, run_id: str, breakpoints: list[dict[str, Any]] | None) -> None:
        if run_id not in self._runs:
            raise RunNotFound(f"no run {run_id!r}")
        self._breakpoints[run_id] = breakpoints

    async def get_breakpoints(self, run_id: str) -> list[dict[str, Any]] | None:
        return self._breakpoints.get(run_id)

    async def request_cancel(self, run_id: str, reason: str) -> None:
        if run_id not in self._runs:
            raise RunNotFound(f"no run {run_id!r}")
        self._cancels[run_id] = reason

    async def cancel_requested(self, run_id: str) -> str | None:
        return self._cancels.get(run_id)

    # -- shared budgets -------------------------------------------------------------------------

    async def put_budget(self, budget_id: str, *, max_usd: float | None, max_tokens: int | None,
                         on_exhausted: ExhaustedPolicy = "pause") -> None:
        check_budget_limits(max_usd, max_tokens, on_exhausted)
        b = self._budgets.get(budget_id)
        if b is None:
            self._budgets[budget_id] = BudgetState(budget_id, max_usd, max_tokens, created_at=time.time(),
                                                   on_exhausted=on_exhausted)
        else:  # new limits warn again at 80 %
            b.max_usd, b.max_tokens, b.warned, b.on_exhausted = max_usd, max_tokens, False, on_exhausted

    async def get_budget(self, budget_id: str) -> BudgetState | None:
        b = self._budgets.get(budget_id)
        return copy.copy(b) if b is not None else None

    async def delete_budget(self, budget_id: str) -> None:
        self._budgets.pop(budget_id, None)
        for grant_id in list(self._reservations):
            rows = [r for r in self._reservations[grant_id] if r[0] != budget_id]
            if rows:
                self._reservations[grant_id] = rows
            else:
                del self._reservations[grant_id]

    async def reserve(self, run_id: str, grant_id: str, budget_ids: Sequence[str], usd: float | None,
                      tokens: int) -> str | None:
        refused = self._refusing(budget_ids, usd, tokens)
        if refused is not None:
            now = time.time()

            def stale(budget_id: str, holder: str) -> bool:
                info = self._runs.get(holder)
                return budget_id in budget_ids and (
                    info is None or info.lease_owner is None or (info.lease_expires or 0) < now)

            self._reap(stale)
            refused = self._refusing(budget_ids, usd, tokens)
            if refused is not None:
                return refused
        for budget_id in budget_ids:
            b = self._budgets[budget_id]
            b.reserved_usd += usd or 0.0
            b.reserved_tokens += tokens
        self._reservations[grant_id] = [(b, run_id, usd or 0.0, tokens) for b in budget_ids]
        return None

    def _refusing(self, budget_ids: Sequence[str], usd: float | None, tokens: int) -> str | None:
        for budget_id in budget_ids:
            b = self._budgets.get(budget_id)
            if b is None:
                return budget_id
            if b.max_usd is not None and (usd is None or b.spent_usd + b.reserved_usd + usd > b.max_usd + EPSILON_USD):
                return budget_id
            if b.max_tokens is not None and b.spent_tokens + b.reserved_tokens + tokens > b.max_tokens:
                return budget_id
        return None

    def _reap(self, stale: Any) -> None:
        """Take back the reservations `stale(budget_id, run_id)` says are stale."""
        for grant_id in list(self._reservations):
            rows = self._reservations[grant_id]
            keep = []
            for row in rows:
                if stale(row[0], row[1]):
                    self._unreserve(row)
                else:
                    keep.append(row)
            if keep:
                self._reservations[grant_id] = keep
            else:
                del self._reservations[grant_id]

    def _unreserve(self, row: tuple[str, str, float, int]) -> None:
        b = self._budgets.get(row[0])
        if b is not None:
            left = b.reserved_usd - row[2]
            b.reserved_usd = 0.0 if left < EPSILON_USD else left  # float drift: as the SQL store
            b.reserved_tokens -= row[3]

    async def release(self, grant_id: str) -> None:
        for row in self._reservations.pop(grant_id, []):
            self._unreserve(row)

    def _spend(self, spend: Spend) -> None:
        for row in self._reservations.pop(spend.grant_id, []):
            self._unreserve(row)
        for budget_id in spend.budgets:
            b = self._budgets.get(budget_id)
            if b is not None:
                b.spent_usd += spend.usd
                b.spent_tokens += spend.tokens

    async def warn_budgets(self, budget_ids: Sequence[str], share: float) -> list[BudgetState]:
        out = []
        for budget_id in budget_ids:
            b = self._budgets.get(budget_id)
            if b is not None and not b.warned and b.used_share() >= share:
                b.warned = True
                out.append(copy.copy(b))
        return out

    async def put_object(self, obj: StoredObject) -> None:
        self._objects[obj.id] = copy.deepcopy(obj)

    async def insert_object(self, obj: StoredObject) -> bool:
        if obj.id in self._objects:
            return False
        self._objects[obj.id] = copy.deepcopy(obj)
        return True

    async def replace_object(self, obj: StoredObject, old: StoredObject) -> bool:
        now = self._objects.get(old.id)
        if obj.id != old.id or now is None or (now.kind, now.data) != (old.kind, old.data):
            return False
        self._objects[obj.id] = copy.deepcopy(obj)
        return True

    async def get_object(self, object_id: str) -> StoredObject | None:
        obj = self._objects.get(object_id)
        return copy.deepcopy(obj) if obj is not None else None

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
        check_page(limit, order)
        forward = order == "asc"
        page = [o for _, o in sorted(self._objects.items(), reverse=not forward)
                if o.kind == kind and o.tenant == tenant and (parent_id is None or o.parent_id == parent_id)
                and (after is None or (o.id > after if forward else o.id < after))
                and (before is None or (o.id < before if forward else o.id > before))]  # fmt: skip
        if limit is not None:
            # With `before`, the page is the objects nearest to it (the end of the list), still in order.
            page = page[max(len(page) - limit, 0):] if before is not None else page[:limit]
        return [copy.deepcopy(o) for o in page]

    async def delete_object(self, object_id: str) -> bool:
        return self._objects.pop(object_id, None) is not None

    async def delete_children(self, parent_id: str, kinds: Sequence[str]) -> int:
        doomed = [o.id for o in self._objects.values() if o.parent_id == parent_id and o.kind in kinds]
        for object_id in doomed:
            del self._objects[object_id]
        return len(doomed)

    # -- batches, and deleting runs --------------------------------------------------------------

    async def create_batch(self, batch: BatchRecord, cases: Sequence[Case]) -> None:
        if batch.id in self._batches:
            raise StoreConflict(f"batch {batch.id} already exists")
        self._batches[batch.id] = copy.deepcopy(batch)
        self._cases[batch.id] = [StoredCase(copy.deepcopy(c)) for c in cases]

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        b = self._batches.get(batch_id)
        return copy.deepcopy(b) if b is not None else None

    async def list_batches(self, *, tenant: str | None = None, limit: int = 50,
                           after: str | None = None) -> list[BatchRecord]:
        found = [b for i, b in sorted(self._batches.items(), reverse=True)
                 if (tenant is None or b.tenant == tenant) and (after is None or i < after)]
        return copy.deepcopy(found[:limit])

    async def background_batches(self) -> list[BatchRecord]:
        return [copy.deepcopy(self._batches[i]) for i in sorted(self._background)
                if self._batches[i].state == BatchState.OPEN]

    def _row(self, stored: StoredCase, ends: bool) -> CaseRow:
        run = self._runs.get(stored.run_id) if stored.run_id else None
        row = CaseRow(copy.deepcopy(stored), copy.copy(run))
        if run is not None and ends:
            for r in self._logs[run.id]:
                p = r.payload
                if isinstance(p, ModelCalled | ToolFinished):
                    row.steps += 1
                elif isinstance(p, Finished):
                    row.finished = p
                elif isinstance(p, Paused):
                    row.paused = p
        return row

    async def batch_totals(self, batch_id: str) -> BatchTotals:
        totals = BatchTotals()
        for stored in self._cases.get(batch_id, []):
            status = case_status(self._runs.get(stored.run_id) if stored.run_id else None)
            totals.counts[status] = totals.counts.get(status, 0) + 1
        cost, unknown = None, False
        for run_id, (b, _, _) in self._batch_runs.items():
            info = self._runs.get(run_id)
            if b != batch_id or info is None:
                continue
            totals.input_tokens += info.input_tokens
            totals.output_tokens += info.output_tokens
            if info.cost_usd is not None:
                cost = (cost or 0.0) + info.cost_usd
            elif info.input_tokens + info.output_tokens > 0:
                unknown = True
        totals.cost_usd = None if unknown else cost
        return totals

    async def batch_cases(self, batch_id: str, *, status: CaseStatus | None = None, after: int | None = None,
                          limit: int = 100) -> list[CaseRow]:
        rows = []
        for stored in self._cases.get(batch_id, []):
            if after is not None and stored.case.index <= after:
                continue
            row = self._row(stored, ends=True)
            if status is None or case_status(row.run) == status:
                rows.append(row)
            if len(rows) >= limit:
                break
        return rows

    async def cases_to_run(self, batch_id: str, *, after: int = -1, limit: int = 500,
                           retry_failed: bool = False) -> list[CaseRow]:
        wanted = {RunStatus.QUEUED, RunStatus.RUNNING}
        if retry_failed:
            wanted |= {RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.INCOMPLETE}
        rows = []
        for stored in self._cases.get(batch_id, []):
            if stored.case.index <= after:
                continue
            row = self._row(stored, ends=False)
            if row.run is None or row.run.status in wanted:
                rows.append(row)
            if len(rows) >= limit:
                break
        return rows

    async def start_cases(self, batch_id: str, starts: Sequence[tuple[int, int, str]]) -> None:
        for index, attempt, run_id in starts:
            stored = self._cases[batch_id][index]
            stored.attempt, stored.run_id = attempt, run_id
            self._batch_runs.setdefault(run_id, (batch_id, index, attempt))

    async def update_batch(self, batch_id: str, *, state: BatchState | None = None,
                           options: BatchOptions | None = None, background: bool | None = None) -> None:
        b = self._batches.get(batch_id)
        if b is None:
            return
        if state is not None:
            b.state = state
        if options is not None:
            b.options = copy.deepcopy(options)
        if background is not None:
            (self._background.add if background else self._background.discard)(batch_id)

    async def batch_run_ids(self, batch_id: str) -> list[str]:
        return [r for r, (b, _, _) in sorted(self._batch_runs.items(), key=lambda kv: kv[1][1:])
                if b == batch_id]

    async def delete_batch(self, batch_id: str) -> None:
        self._batches.pop(batch_id, None)
        self._cases.pop(batch_id, None)
        self._background.discard(batch_id)
        for run_id in [r for r, (b, _, _) in self._batch_runs.items() if b == batch_id]:
            del self._batch_runs[run_id]

    async def delete_runs(self, run_ids: Sequence[str]) -> int:
        deleted = 0
        for run_id in run_ids:
            self._logs.pop(run_id, None)
            self._batch_runs.pop(run_id, None)
            self._breakpoints.pop(run_id, None)
            self._cancels.pop(run_id, None)
            deleted += self._runs.pop(run_id, None) is not None
        return deleted

    async def finished_runs_before(self, cutoff: float, *, limit: int = 1000,
                                   with_batch_runs: bool = False) -> list[str]:
        found = sorted((r for r in self._runs.values()
                        if r.status in TERMINAL and r.updated_at < cutoff and r.thread_id is None
                        and (with_batch_runs or r.id not in self._batch_runs)), key=lambda r: r.updated_at)
        return [r.id for r in found[:limit]]

    async def close(self) -> None:
        return None
