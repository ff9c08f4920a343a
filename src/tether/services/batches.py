"""The batches service: durable batches of runs over a set of cases (one agent), for every face.

A batch is stored whole when it is created (the agent snapshot, the options, every case); a case's
run is an ordinary run of the runs service, created when the case starts with an id derived from
(batch, case key, attempt) (`case_run_id`), so a resumed batch never repeats a finished case and
never makes a second run for one attempt: an interrupted case's run is resumed, not restarted.
At most `concurrency` cases are in flight: that many workers take case indexes from a queue fed a
page at a time, so memory stays O(concurrency) whatever the number of cases.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import copy
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tether.domain.agents import AgentSnapshot
from tether.domain.batches import (
    ENDED,
    RETRYABLE,
    BatchInfo,
    BatchOptions,
    BatchProgress,
    BatchRecord,
    BatchState,
    Case,
    CaseResult,
    CaseRow,
    CaseStatus,
    StoredCase,
    batch_info,
    case_budget_id,
    case_result,
    case_run_id,
    case_status,
    cases_hash,
    fill,
    progress_of,
    task_of,
)
from tether.domain.errors import (
    AlreadyFinished,
    AlreadyResumed,
    BatchInputChanged,
    BatchNotFound,
    ConfigError,
    InvalidRequest,
    StoreConflict,
    TetherError,
)
from tether.domain.ids import new_id
from tether.domain.protocols import BatchStore
from tether.domain.records import ACTIVE, TERMINAL, BatchRef, ModelCalled, PauseReason, RunStatus, ToolFinished
from tether.services.agents import Agent
from tether.services.batch_results import ResultsWriter, write_results
from tether.services.runs import RunsService
from tether.services.views import Run

log = logging.getLogger("tether.batches")
PROGRESS_EVERY_S = 0.2  # progress snapshots at most this often (and at every case end)
LAST_ERRORS = 5
CANCEL_POLL_S = 1.0  # how soon a batch running here sees a cancel made in another process
_CASE_STATUSES = [s.value for s in CaseStatus]


@dataclass(slots=True)
class _Session:
    """A run of a batch in this process: what its progress shows beyond the store's counts."""

    started: float = field(default_factory=time.monotonic)
    finished_here: int = 0
    last_errors: deque[tuple[str, str]] = field(default_factory=lambda: deque(maxlen=LAST_ERRORS))
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: bool = False
    answered: asyncio.Queue[CaseRow] = field(default_factory=asyncio.Queue)


class BatchesService:
    """Create, run (and resume), look at, answer, cancel and delete batches. See the module docstring."""

    def __init__(self, runs: RunsService) -> None:
        self.runs = runs
        self._sessions: dict[str, _Session] = {}
        self._spawned: dict[str, asyncio.Task[BatchInfo]] = {}
        self._spawn_stops: dict[str, asyncio.Event] = {}

    @property
    def store(self) -> BatchStore:
        store = self.runs.store
        if not hasattr(store, "create_batch"):
            raise ConfigError("this store keeps no batches; use the SQLite or Postgres store (or MemoryStore)")
        return store  # type: ignore[return-value]

    # -- create ----------------------------------------------------------------------------------

    async def create(self, agent: Agent, cases: Sequence[Case], options: BatchOptions, *,
                     tenant: str = "default", source: str | None = None) -> BatchInfo:
        """Store a new batch: the agent's snapshot, the options and every case, in one transaction."""
        if not cases:
            raise InvalidRequest("a batch needs at least one case; the input has none", param="cases")
        model = agent.model  # a bad model reference fails before the batch exists
        if (options.max_cost_usd is not None or options.per_case_max_cost_usd is not None) \
                and not self.runs.governor.knows_price(model):
            raise ConfigError(f"a dollar budget is set, but the price of model {agent.model_ref!r} is unknown here, "
                              "so it could never be checked; remove it, use a model with known prices, or set its "
                              "price in the operator configuration ([prices])")
        await agent.open_tools()
        try:
            snapshot = agent.snapshot()
        finally:
            await agent.close_tools()
        self.runs.register(agent)  # a code-defined agent: found again by this process's resumes
        record = BatchRecord(new_id("batch"), tenant, options.name, BatchState.OPEN, time.time(),
                             _snapshot_dict(snapshot), agent.ref, options, cases_hash(cases), source, len(cases))
        await self.store.create_batch(record, cases)
        await self._put_batch_budget(record)
        return await self.get(record.id)

    async def _put_batch_budget(self, record: BatchRecord, *, only_if_missing: bool = False) -> None:
        """The batch's shared budget (id: the batch's), which every case's run reserves in; a case's own
        (`per_case_max_cost_usd`) is made when the case starts (see `_Runner._start`)."""
        options = record.options
        if options.max_cost_usd is None and options.max_tokens is None:
            return
        if only_if_missing and await self.runs.store.get_budget(record.id) is not None:
            return
        await self.runs.store.put_budget(record.id, max_usd=options.max_cost_usd, max_tokens=options.max_tokens,
                                         on_exhausted=options.on_budget)

    # -- look ------------------------------------------------------------------------------------

    async def _record(self, batch_id: str, tenant: str | None = None) -> BatchRecord:
        record = await self.store.get_batch(batch_id)
        if record is None or (tenant is not None and record.tenant != tenant):
            raise BatchNotFound(batch_id)
        return record

    async def get(self, batch_id: str, *, tenant: str | None = None) -> BatchInfo:
        record = await self._record(batch_id, tenant)
        return batch_info(record, await self.store.batch_totals(batch_id))

    async def list(self, *, tenant: str | None = None, limit: int = 50,
                   after: str | None = None) -> builtins.list[BatchInfo]:
        records = await self.store.list_batches(tenant=tenant, limit=limit, after=after)
        return [batch_info(r, await self.store.batch_totals(r.id)) for r in records]

    async def cases(self, batch_id: str, *, status: CaseStatus | None = None, after: int | None = None,
                    limit: int = 100, tenant: str | None = None) -> builtins.list[CaseResult]:
        """A page of the batch's cases by index: those after index `after`, of one status if given."""
        await self._record(batch_id, tenant)
        if status is not None and status not in _CASE_STATUSES:
            raise InvalidRequest(f"unknown case status {status!r}; use one of {', '.join(_CASE_STATUSES)}",
                                 param="status")
        if status is not None:
            status = CaseStatus(status)
        rows = await self.store.batch_cases(batch_id, status=status, after=after, limit=limit)
        return [case_result(row) for row in rows]

    async def progress(self, batch_id: str, *, tenant: str | None = None) -> BatchProgress:
        record = await self._record(batch_id, tenant)
        totals = await self.store.batch_totals(batch_id)
        session = self._sessions.get(batch_id)
        elapsed = time.monotonic() - session.started if session else 0.0
        return progress_of(batch_id, totals.counts, total=record.total, cost_usd=totals.cost_usd,
                           tokens=totals.input_tokens + totals.output_tokens, options=record.options,
                           elapsed_s=elapsed, finished_here=session.finished_here if session else 0,
                           last_errors=list(session.last_errors) if session else [])

    # -- run -------------------------------------------------------------------------------------

    async def run(self, batch_id: str, *, concurrency: int | None = None, retry_failed: bool = False,
                  on_progress: Callable[[BatchProgress], None] | None = None,
                  on_case: Callable[[CaseResult], None] | None = None,
                  stop: asyncio.Event | None = None, cases_hash: str | None = None,
                  out: Path | str | None = None, tenant: str | None = None) -> BatchInfo:
        """Run (or resume) the batch until every case has ended or paused; see the module docstring.

        `retry_failed`: failed, cancelled and incomplete cases get a new attempt (a new run).
        `stop` set: no new case starts, cases in flight are interrupted and left resumable (queued),
        and this returns. `cases_hash` (of the input given again) must match the stored one.
        `out`: a results file (.jsonl or .csv), rewritten from the store first, then a line a case as
        cases end."""
        record = await self._record(batch_id, tenant)
        if cases_hash is not None and cases_hash != record.cases_hash:
            raise BatchInputChanged(f"batch {batch_id} was created from other input (its hash is {record.cases_hash}, "
                                    f"this input's is {cases_hash}); resume it without giving the input, or start "
                                    "a new batch for the changed input")
        if record.state == BatchState.CANCELLED:
            raise TetherError(f"batch {batch_id} was cancelled; there is nothing to run (start a new batch)")
        if concurrency is not None and not (isinstance(concurrency, int) and not isinstance(concurrency, bool)
                                            and concurrency >= 1):
            raise InvalidRequest(f"concurrency must be a whole number of at least 1, not {concurrency!r}",
                                 param="concurrency")
        if batch_id in self._sessions:
            raise TetherError(f"batch {batch_id} is being run by this process already")
        agent = await self._agent(record)
        await self._put_batch_budget(record, only_if_missing=True)
        n = concurrency or record.options.concurrency
        session = self._sessions[batch_id] = _Session(stop=stop or asyncio.Event())
        writer = None
        if out is not None:
            # The cases this session runs again are left out: the file holds each case once.
            await write_results(self, batch_id, Path(out), skip=RETRYABLE if retry_failed else frozenset())
            writer = ResultsWriter(Path(out))
        runner = _Runner(self, record, agent, session, n, retry_failed, on_progress, on_case, writer)
        try:
            await runner.run()
        finally:
            if writer is not None:
                writer.close()
            del self._sessions[batch_id]
        return await self.get(batch_id)

    async def _agent(self, record: BatchRecord) -> Agent:
        """The batch's agent, rebuilt from its stored snapshot (an agent file from its path; a code-defined
        agent only where it is registered or importable by its ref)."""
        snapshot = _snapshot_of(record.agent)
        try:
            agent = await self.runs.agent_for(snapshot)
            self.runs.register(agent)  # its cases' resumes find it here, not by reading its file again
            return agent
        except ConfigError as e:
            hint = ("" if "cannot find agent" not in str(e) else
                    ". A batch made from an agent defined in code resumes in a process where that agent is "
                    "registered (service.register(agent)) or has a ref='module:attr'; one made from an agent "
                    "file resumes anywhere")
            raise ConfigError(f"batch {record.id}: {e}{hint}") from None

    def spawn(self, batch_id: str, **run_options: Any) -> None:
        """Run the batch in the background of this event loop (the server's way); tracked, so that
        `close()` stops it cleanly and `resume_open()` takes it up again after a restart."""
        if batch_id in self._spawned and not self._spawned[batch_id].done():
            return
        stop = run_options.pop("stop", None) or asyncio.Event()

        async def go() -> BatchInfo:
            await self.store.update_batch(batch_id, background=True)
            try:
                info = await self.run(batch_id, stop=stop, **run_options)
            except TetherError:  # it cannot run here (its agent is gone, ...): not taken up at every start
                await self.store.update_batch(batch_id, background=False)
                raise
            if not stop.is_set():  # ended or paused by itself: nothing to take up again at a restart
                await self.store.update_batch(batch_id, background=False)
            return info

        task = asyncio.create_task(go(), name=f"batch {batch_id}")
        self._spawned[batch_id] = task
        self._spawn_stops[batch_id] = stop

        def done(t: asyncio.Task[BatchInfo]) -> None:
            _log_failure(batch_id, t)
            if self._spawned.get(batch_id) is t:  # a finished one is not kept
                del self._spawned[batch_id]
                del self._spawn_stops[batch_id]

        task.add_done_callback(done)

    def spawned(self, batch_id: str) -> asyncio.Task[BatchInfo] | None:
        """The task running the batch in the background here (`spawn`), while it runs."""
        return self._spawned.get(batch_id)

    def running(self, batch_id: str) -> bool:
        """Whether this process runs the batch now."""
        return batch_id in self._sessions

    async def resume_open(self) -> builtins.list[str]:
        """Spawn the open batches that a server ran in the background when its process ended."""
        ids = []
        for record in await self.store.background_batches():  # type: ignore[attr-defined]
            if record.id in self._sessions:
                continue
            try:
                await self._agent(record)
            except TetherError as e:
                log.warning("batch %s is not resumed here: %s", record.id, e)
                continue
            self.spawn(record.id)
            ids.append(record.id)
        return ids

    async def close(self) -> None:
        """Stop the batches spawned here: no new case starts, cases in flight are left resumable."""
        tasks = list(self._spawned.values())
        for stop in self._spawn_stops.values():
            stop.set()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- act -------------------------------------------------------------------------------------

    async def cancel(self, batch_id: str, *, tenant: str | None = None) -> BatchInfo:
        """No new case starts; cases running or paused are cancelled. Cases never started stay pending."""
        record = await self._record(batch_id, tenant)
        if record.state == BatchState.CANCELLED:
            raise AlreadyFinished(f"batch {batch_id} was cancelled already")
        await self.store.update_batch(batch_id, state=BatchState.CANCELLED, background=False)
        session = self._sessions.get(batch_id)
        if session is not None:
            session.cancelled = True
        for status in (CaseStatus.RUNNING, CaseStatus.QUEUED, CaseStatus.PAUSED):
            async for row in self._pages(batch_id, status):
                assert row.stored.run_id is not None
                with contextlib.suppress(AlreadyFinished, AlreadyResumed, StoreConflict):
                    await self.runs.cancel(row.stored.run_id, by=f"batch cancel {batch_id}", wait=False)
        return await self.get(batch_id)

    async def _pages(self, batch_id: str, status: CaseStatus | None, size: int = 200) -> Any:
        after = -1
        while True:
            rows = await self.store.batch_cases(batch_id, status=status, after=after, limit=size)
            for row in rows:
                yield row
            if len(rows) < size:
                return
            after = rows[-1].stored.case.index

    async def answer(self, batch_id: str, *, action: Literal["approve", "continue", "rerun", "abort"],
                     max_cost_usd: float | None = None, max_tokens: int | None = None,
                     reason: str | None = None, tenant: str | None = None) -> int:
        """Answer the pauses of every paused case at once; returns how many were answered.

        `approve`: the cases waiting for approvals (their approvals approved, other items continued);
        `continue`: the cases whose every pending item can continue (budgets, breakpoints), after
        raising the batch's budget to `max_cost_usd` / `max_tokens` when given; `rerun`: the cases whose
        every pending item is a call left uncertain by an interruption (run again: for a tool that
        deduplicates by `ToolContext.idempotency_key`, which is stable for such a call); `abort`: every
        paused case. The answered runs are advanced by the batch's next `run` (at once when it runs here)."""
        if action not in ("approve", "continue", "rerun", "abort"):
            raise InvalidRequest(f"action must be approve, continue, rerun or abort, not {action!r}", param="action")
        record = await self._record(batch_id, tenant)
        if max_cost_usd is not None or max_tokens is not None:
            options = copy.copy(record.options)
            if max_cost_usd is not None:
                options.max_cost_usd = max_cost_usd
            if max_tokens is not None:
                options.max_tokens = max_tokens
            try:
                options.__post_init__()
            except ValueError as e:
                raise InvalidRequest(str(e), param="max_cost_usd" if "cost" in str(e) else "max_tokens") from None
            await self.store.update_batch(batch_id, options=options)
            record.options = options
            await self._put_batch_budget(record)  # the pauses answered below then reserve in the raised budget
        by = reason or f"batch answer {batch_id}"
        answered = 0
        session = self._sessions.get(batch_id)
        async for row in self._pages(batch_id, CaseStatus.PAUSED):
            run_id = row.stored.run_id
            assert run_id is not None
            view = await self.runs.get(run_id)
            if view.pause_id is None:
                continue
            answers = _answers_for(view, action)
            if answers is None:
                continue
            try:
                # An abort ends the run now (it calls nothing); other answers leave it queued for `run`.
                await self.runs.decide(run_id, view.pause_id, answers, by=by, drive=action == "abort")
            except (AlreadyResumed, TetherError) as e:
                log.info("batch %s: case %s not answered: %s", batch_id, row.stored.case.key, e)
                continue
            answered += 1
            if session is not None and action != "abort":
                session.answered.put_nowait(row)
        return answered

    async def delete(self, batch_id: str, *, with_runs: bool = False, tenant: str | None = None) -> None:
        """Delete the batch and its cases; with `with_runs`, every attempt's run too (an active one is
        cancelled first). Without, the runs stay as ordinary runs (`runs prune` may delete them)."""
        record = await self._record(batch_id, tenant)
        if batch_id in self._sessions:
            raise TetherError(f"batch {batch_id} is running in this process; cancel or stop it first")
        run_ids = await self.store.batch_run_ids(batch_id)
        infos = [info for run_id in run_ids if (info := await self.runs.info(run_id)) is not None]
        now = time.time()
        for info in infos:  # a runner elsewhere would lose its batch under it: refuse, say what to do
            if info.status in ACTIVE and info.lease_owner is not None and (info.lease_expires or 0) > now:
                raise TetherError(f"batch {batch_id} is running in another process (its run {info.id} is leased); "
                                  f"stop it there, or cancel it (tether batch cancel {batch_id}), then delete it")
        budgets = [batch_id] if record.options.max_cost_usd is not None or record.options.max_tokens is not None else []
        if record.options.per_case_max_cost_usd is not None:
            budgets += [case_budget_id(batch_id, row.stored.case.key) async for row in self._pages(batch_id, None)]
        if with_runs:
            for info in infos:
                if info.status not in TERMINAL:
                    with contextlib.suppress(AlreadyFinished, AlreadyResumed, StoreConflict):
                        await self.runs.cancel(info.id, by=f"batch delete {batch_id}")
        await self.store.delete_batch(batch_id)
        for budget_id in budgets:  # what grows can be pruned: the batch's budgets go with it
            await self.runs.store.delete_budget(budget_id)
        if with_runs:
            await self.runs.delete_runs(run_ids)

    async def batch(self, batch_id: str) -> Batch:
        """The batch with every case's result (the Python API's `Batch`)."""
        return await _batch_of(self, batch_id)

    async def results_file(self, batch_id: str, path: Path | str, *, tenant: str | None = None) -> None:
        """Write the batch's ended cases to `path`: JSONL, or CSV when it ends in .csv (atomically)."""
        await self._record(batch_id, tenant)
        await write_results(self, batch_id, Path(path))


class _Runner:
    """One run of a batch: `n` workers over a queue of the cases to do, fed a page at a time."""

    def __init__(self, service: BatchesService, record: BatchRecord, agent: Agent, session: _Session, n: int,
                 retry_failed: bool, on_progress: Callable[[BatchProgress], None] | None,
                 on_case: Callable[[CaseResult], None] | None, writer: ResultsWriter | None) -> None:
        self.service, self.record, self.agent, self.session = service, record, agent, session
        self.store = service.store
        self.n, self.retry_failed = n, retry_failed
        self.on_progress, self.on_case, self.writer = on_progress, on_case, writer
        self.queue: asyncio.Queue[CaseRow | None] = asyncio.Queue(maxsize=n)
        self.counts: dict[CaseStatus, int] = {}
        self.cost_usd: float | None = None
        self.tokens = 0
        self.last_progress = 0.0
        self.agents: dict[str, Agent] = {}  # instructions filled with a case's vars → the agent for them
        self._starts: tuple[builtins.list[tuple[int, int, str]], asyncio.Future[None]] | None = None
        self._flushes: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        totals = await self.store.batch_totals(self.record.id)
        self.counts = {s: totals.counts.get(s, 0) for s in CaseStatus}
        self.cost_usd, self.tokens = totals.cost_usd, totals.input_tokens + totals.output_tokens
        self._progress(force=True)
        feeder = asyncio.create_task(self._feed(), name=f"batch {self.record.id} feeder")
        workers = [asyncio.create_task(self._work(), name=f"batch {self.record.id} worker {i}")
                   for i in range(self.n)]
        stopper = asyncio.create_task(self.session.stop.wait())
        ticker = asyncio.create_task(self._tick())  # elapsed time and ETA move between case ends too
        try:
            pending: set[asyncio.Task[Any]] = {*workers, stopper}
            while pending - {stopper}:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if stopper in done:  # stop: the cases in flight are interrupted, left queued (resumable)
                    break
                for w in done:
                    w.result()  # a worker's own failure (not a case's) is the batch's
        finally:
            for t in (feeder, stopper, ticker, *workers):
                t.cancel()
            await asyncio.gather(feeder, stopper, ticker, *workers, *self._flushes, return_exceptions=True)
        self._progress(force=True)

    async def _feed(self) -> None:
        """Put the cases to do on the queue, a page at a time (then an end mark for each worker)."""
        after = -1
        page = max(100, 2 * self.n)
        while not self._stopping():
            rows = await self.store.cases_to_run(self.record.id, after=after, limit=page,
                                                 retry_failed=self.retry_failed)
            for row in rows:
                await self.queue.put(row)
            if len(rows) < page:
                break
            after = rows[-1].stored.case.index
        for _ in range(self.n):
            await self.queue.put(None)

    def _stopping(self) -> bool:
        return self.session.stop.is_set() or self.session.cancelled

    async def _next(self) -> CaseRow | None:
        """The next case: one answered meanwhile (`answer`), else the next from the queue."""
        if not self.session.answered.empty():
            return self.session.answered.get_nowait()
        return await self.queue.get()

    async def _work(self) -> None:
        while True:
            row = await self._next()
            if row is None:
                # The queue is done; answers given while the other workers finish still run here.
                while not self.session.answered.empty() and not self._stopping():
                    await self._case(self.session.answered.get_nowait())
                return
            if self._stopping():
                continue
            await self._case(row)

    async def _case(self, row: CaseRow) -> None:
        case = row.stored.case
        origin = case_status(row.run)
        self._shift(origin, CaseStatus.RUNNING)
        try:
            view = await self._advance(row)
        except asyncio.CancelledError:
            raise
        except TetherError as e:
            view = None
            log.info("batch %s: case %s not advanced here: %s", self.record.id, case.key, e)
            self.session.last_errors.append((case.key, str(e)))
        except Exception as e:  # one case's failure is not the batch's
            view = None
            log.exception("batch %s: case %s failed", self.record.id, case.key)
            self.session.last_errors.append((case.key, f"{type(e).__name__}: {e}"))
        if view is None:  # not advanced here (another process has it, or it failed to start)
            self._shift(CaseStatus.RUNNING, origin)
            self._progress()
            return
        result = _result_of(row.stored, view)
        if result.status == CaseStatus.CANCELLED:  # perhaps the batch was cancelled elsewhere: no new case then
            await self._check_cancelled()
        self._shift(CaseStatus.RUNNING, result.status)
        resumed = row.run is not None and row.run.id == view.id  # the same run, gone on with: count only its news
        self.tokens += result.input_tokens + result.output_tokens
        if resumed:
            assert row.run is not None
            self.tokens -= row.run.input_tokens + row.run.output_tokens
        if result.cost_usd is not None:
            self.cost_usd = (self.cost_usd or 0.0) + result.cost_usd - (
                (row.run.cost_usd or 0.0) if resumed and row.run is not None else 0.0)
        if result.status in ENDED:
            self.session.finished_here += 1
            if result.error and result.status != CaseStatus.COMPLETED:
                self.session.last_errors.append((case.key, result.error))
            if self.writer is not None:
                self.writer.write(result)
        if self.on_case is not None:
            _call(self.on_case, result)
        self._progress(force=True)

    async def _advance(self, row: CaseRow) -> Run | None:
        """Start the case's run, or go on with it; None when another process advances it."""
        stored, run = row.stored, row.run
        case = stored.case
        if run is not None and run.status in TERMINAL:  # retry_failed: a new attempt, a new run
            return await self._start(stored, stored.attempt + 1)
        if run is None:
            return await self._start(stored, stored.attempt)
        if run.status == RunStatus.PAUSED:  # answered meanwhile? then it is queued now
            info = await self.service.runs.info(run.id)
            if info is None or info.status == RunStatus.PAUSED:
                return None
        if self.service.runs.advancing(run.id):  # e.g. a server's dispatcher took it up
            return None
        try:
            return await self.service.runs.resume(run.id)
        except TetherError as e:
            if "leased by" in str(e):  # running elsewhere: that process finishes it
                log.info("batch %s: case %s runs in another process", self.record.id, case.key)
                return None
            raise

    async def _start(self, stored: StoredCase, attempt: int) -> Run | None:
        case = stored.case
        batch_id = self.record.id
        run_id = case_run_id(batch_id, case.key, attempt)
        if stored.run_id != run_id:
            await self._record_start(case.index, attempt, run_id)
            stored.attempt, stored.run_id = attempt, run_id
        agent = self._agent_for(case)
        options = self.record.options
        if options.per_case_max_cost_usd is not None:  # the case's own budget: all its attempts spend it
            await self.service.runs.store.put_budget(case_budget_id(batch_id, case.key),
                                                     max_usd=options.per_case_max_cost_usd, max_tokens=None,
                                                     on_exhausted=options.on_budget)
        try:
            return await self.service.runs.start(
                agent, task_of(case, options.task_template), run_id=run_id, register=False,
                batch=BatchRef(batch_id, case.key, attempt), budgets=_budgets(self.record, case),
                metadata={"batch_id": batch_id, "case_key": case.key, "attempt": attempt})
        except StoreConflict:
            if await self.service.runs.info(run_id) is not None:  # another process started it first
                return None
            raise
        except asyncio.CancelledError:
            # Stopped while the run was being created: if it was, give its lease back (as an interrupted
            # run's is), so that a resume from another service takes it at once, not when it expires.
            with contextlib.suppress(Exception):
                await self.service.runs.store.release_lease(run_id, self.service.runs.owner)
            raise

    async def _record_start(self, index: int, attempt: int, run_id: str) -> None:
        """Store the case's new attempt and run id before its run exists; the cases starting in one
        loop iteration are stored in one transaction."""
        if self._starts is None:
            self._starts = ([], asyncio.get_running_loop().create_future())
            self._flushes.add(task := asyncio.create_task(self._flush_starts()))
            task.add_done_callback(self._flushes.discard)
        starts, done = self._starts
        starts.append((index, attempt, run_id))
        await asyncio.shield(done)  # a cancelled case leaves the others' write alone

    async def _flush_starts(self) -> None:
        assert self._starts is not None
        starts, done = self._starts
        self._starts = None
        try:
            await self.store.start_cases(self.record.id, starts)
        except BaseException as e:
            done.set_exception(e)
            if not isinstance(e, Exception):
                raise
        else:
            done.set_result(None)

    def _agent_for(self, case: Case) -> Agent:
        """The agent with the case's vars filled into its instructions (itself when nothing changes)."""
        instructions = fill(self.agent.instructions, case.vars)
        if instructions == self.agent.instructions:
            return self.agent
        agent = self.agents.get(instructions)
        if agent is None:
            if len(self.agents) > 4 * self.n:  # a few kept for cases that share vars: memory stays bounded
                self.agents.clear()
            agent = copy.copy(self.agent)
            agent.instructions = instructions
            self.agents[instructions] = agent
        return agent

    # -- progress --------------------------------------------------------------------------------

    def _shift(self, source: CaseStatus, to: CaseStatus) -> None:
        """One case moves from `source` to `to` in the counts this run shows."""
        if source != to and self.counts.get(source, 0) > 0:
            self.counts[source] -= 1
            self.counts[to] = self.counts.get(to, 0) + 1

    async def _tick(self) -> None:
        """Progress between case ends; and a cancel from another process stops new cases here too."""
        checked = time.monotonic()
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S)
            self._progress()
            if time.monotonic() - checked >= CANCEL_POLL_S:
                checked = time.monotonic()
                await self._check_cancelled()

    async def _check_cancelled(self) -> None:
        if self.session.cancelled:
            return
        with contextlib.suppress(Exception):
            record = await self.store.get_batch(self.record.id)
            if record is None or record.state == BatchState.CANCELLED:
                self.session.cancelled = True

    def _progress(self, *, force: bool = False) -> None:
        if self.on_progress is None:
            return
        now = time.monotonic()
        if not force and now - self.last_progress < PROGRESS_EVERY_S:
            return
        self.last_progress = now
        snapshot = progress_of(self.record.id, self.counts, total=self.record.total, cost_usd=self.cost_usd,
                               tokens=self.tokens, options=self.record.options,
                               elapsed_s=now - self.session.started, finished_here=self.session.finished_here,
                               last_errors=list(self.session.last_errors))
        _call(self.on_progress, snapshot)


def _result_of(stored: StoredCase, view: Run) -> CaseResult:
    """A case's result from its run's view as the run stopped (no read of the store)."""
    status = CaseStatus(RunStatus(view.status).value)
    steps = sum(1 for r in view.records if isinstance(r.payload, ModelCalled | ToolFinished))
    latency = view.records[-1].ts - view.records[0].ts if status in ENDED and view.records else None
    pause_reason = None
    if view.pending:
        reasons = sorted({str(i.reason) for i in view.pending})
        details = "; ".join(i.detail for i in view.pending if i.detail)
        pause_reason = ", ".join(reasons) + (f": {details}" if details else "")
    ended = status in ENDED
    case = stored.case
    return CaseResult(case.index, case.key, status, stored.attempt, view.id, view.output if ended else None,
                      view.structured if ended else None, view.error if ended else None,
                      view.usage.input_tokens, view.usage.output_tokens, view.cost_usd,
                      latency, steps, pause_reason, case.expected, dict(case.metadata))


def _answers_for(view: Run, action: str) -> dict[str, tuple[Any, Any]] | None:
    """The answers `batch answer ACTION` gives this pause, or None when it does not concern it."""
    from tether.domain.decisions import actions_for

    items = view.pending
    if action == "abort":
        return {i.id: ("abort", None) for i in items}
    if action == "rerun":
        if not items or any(i.reason != PauseReason.UNCERTAIN for i in items):
            return None
        return {i.id: ("rerun", None) for i in items}
    if action == "approve":
        if not any(i.reason == PauseReason.APPROVAL for i in items):
            return None
        out: dict[str, tuple[Any, Any]] = {}
        for i in items:
            if i.reason == PauseReason.APPROVAL:
                out[i.id] = ("approve", None)
            elif "continue" in actions_for(i):
                out[i.id] = ("continue", None)
            else:
                return None
        return out
    if all("continue" in actions_for(i) for i in items) and not any(i.reason == PauseReason.APPROVAL for i in items):
        return {i.id: ("continue", None) for i in items}
    return None


def _budgets(record: BatchRecord, case: Case) -> builtins.list[str]:
    """The shared budgets a case's run reserves in: the batch's and the case's own."""
    ids = []
    if record.options.max_cost_usd is not None or record.options.max_tokens is not None:
        ids.append(record.id)
    if record.options.per_case_max_cost_usd is not None:
        ids.append(case_budget_id(record.id, case.key))
    return ids


def _call(fn: Callable[[Any], None], value: Any) -> None:
    """Tell a listener; its failure is logged, never the batch's."""
    try:
        fn(value)
    except Exception:
        log.exception("a batch listener failed")


def _log_failure(batch_id: str, task: asyncio.Task[Any]) -> None:
    if task.cancelled():
        return
    e = task.exception()
    if e is not None:
        log.error("batch %s stopped: %s", batch_id, e, exc_info=e if not isinstance(e, TetherError) else None)


@functools.cache
def _snapshots() -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(AgentSnapshot)


def _snapshot_dict(snapshot: AgentSnapshot) -> dict[str, Any]:
    return _snapshots().dump_python(snapshot, mode="json")  # type: ignore[no-any-return]


def _snapshot_of(data: dict[str, Any]) -> AgentSnapshot:
    return _snapshots().validate_python(data)  # type: ignore[no-any-return]


@dataclass(slots=True)
class Batch:
    """A batch as the Python API returns it (`agent.batch(...)`): its info and every case's result."""

    id: str
    info: BatchInfo
    results: builtins.list[CaseResult]
    service: BatchesService | None = field(default=None, repr=False)

    def __iter__(self) -> Any:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    @property
    def completed(self) -> builtins.list[CaseResult]:
        return [r for r in self.results if r.status == CaseStatus.COMPLETED]

    @property
    def failed(self) -> builtins.list[CaseResult]:
        """Cases that failed, were cancelled or ended incomplete (what `retry_failed` runs again)."""
        return [r for r in self.results if r.status in RETRYABLE]

    @property
    def paused(self) -> builtins.list[CaseResult]:
        return [r for r in self.results if r.status == CaseStatus.PAUSED]

    async def resume(self, *, retry_failed: bool = False, **run_options: Any) -> Batch:
        """Run the batch again: cases not ended go on; with `retry_failed`, failed ones get a new attempt."""
        assert self.service is not None, "a Batch made by agent.batch() knows its service"
        await self.service.run(self.id, retry_failed=retry_failed, **run_options)
        return await self.service.batch(self.id)


async def _batch_of(service: BatchesService, batch_id: str) -> Batch:
    info = await service.get(batch_id)
    results: builtins.list[CaseResult] = []
    after = -1
    while page := await service.cases(batch_id, after=after, limit=500):
        results += page
        after = page[-1].index
    return Batch(batch_id, info, results, service)


def read_cases(path: Path | str, *, input_column: str = "input") -> tuple[builtins.list[Case], builtins.list[Any]]:
    """The cases of a JSONL or CSV file (by its suffix), and its bad lines."""
    from tether.adapters.config_files import read_text
    from tether.domain.batches import parse_csv, parse_jsonl

    p = Path(path)
    text = read_text(p, "tasks file")
    if p.suffix.lower() == ".csv":
        try:
            return parse_csv(text, input_column)
        except ValueError as e:
            raise InvalidRequest(f"{p}: {e}", param="input_column") from None
    return parse_jsonl(text)
