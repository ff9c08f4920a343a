"""The runs service: the one API that Python, the CLI and (later) HTTP and the web page call.

It creates runs, advances them under a lease, answers pauses with compare-and-set decisions,
cancels, continues threads and resumes runs whose owner died. A run that stops for any reason
comes back as a `RunView` value with its pending items, never as an exception.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tether.adapters.importing import import_attr
from tether.adapters.process import start_ticks, this_host
from tether.domain.agents import AgentSnapshot
from tether.domain.answers import Abort, Answer
from tether.domain.breakpoints import Breakpoint, parse_breakpoint
from tether.domain.decisions import actions_for, check_action, decision_for
from tether.domain.errors import (
    AlreadyFinished,
    AlreadyResumed,
    ConfigError,
    InvalidRequest,
    LeaseLost,
    RunNotFound,
    StoreConflict,
    TetherError,
)
from tether.domain.events import Event
from tether.domain.fork import later_side_effects, reused_prefix
from tether.domain.ids import new_id
from tether.domain.leases import LeaseState, owner_is_gone, owner_of, owner_string
from tether.domain.messages import Message
from tether.domain.models import ModelResponse
from tether.domain.protocols import BatchStore, Model, Store
from tether.domain.records import (
    ACTIVE,
    TERMINAL,
    UNPAUSED,
    Action,
    BatchRef,
    Paused,
    PauseReason,
    Record,
    RunStarted,
    RunStatus,
    as_status,
)
from tether.domain.runs import RunInfo, shown_status
from tether.domain.state import RunState, fold
from tether.engine.executor import Executor
from tether.engine.governor import BudgetGovernor
from tether.services.agents import Agent, load_agent_file
from tether.services.answers import ANSWER_TYPES, breakpoint_warnings, fork_edit, make_answer
from tether.services.views import RunView, view_of

T = TypeVar("T")
# Told of a fork before it exists (parent run id, step, the parent's log); returns what to do once
# it does, or None.
ForkListener = Callable[[str, int, Sequence[Record]], Awaitable["Callable[[RunView], Awaitable[None]] | None"]]
log = logging.getLogger("tether.runs")
LEASE_TTL_S = 30.0
# How soon a cancel or breakpoints set by another process reach a run this one advances: one read
# for all of them, whatever their number (the lease itself is renewed every lease_ttl/3).
CONTROLS_POLL_S = 0.5


@dataclass(frozen=True, slots=True)
class _Heartbeat:
    """One event loop's heartbeat task, and the runs it keeps (those advanced in that loop)."""

    task: asyncio.Task[None]
    runs: dict[str, Executor]


@dataclass(frozen=True, slots=True)
class QueueState:
    queued: bool  # waits for a worker: no process advances it
    cancel_requested: bool  # a cancel was asked for, and the run is still active


class RunsService:
    def __init__(self, store: Store, *, owner: str | None = None, lease_ttl_s: float = LEASE_TTL_S,
                 governor: BudgetGovernor | None = None) -> None:
        self.store = store
        # Every model call of every run this service advances passes it: the run's own limits, and the
        # shared budgets in this store that a run's start names.
        self.governor = governor if governor is not None else BudgetGovernor(store)
        self.owner = owner or _owner_here()
        self.lease_ttl_s = lease_ttl_s
        self._agents: dict[str, Agent] = {}
        self._active: dict[str, Executor] = {}  # the runs this service advances now, under its lease
        # What keeps their leases while there are any: one heartbeat per event loop that advances runs
        # (one, unless runs are advanced from several threads at once, e.g. `run_sync` in threads).
        self._heartbeats: dict[asyncio.AbstractEventLoop, _Heartbeat] = {}
        # Agent refs "PREFIX:…" that an interface knows how to rebuild (e.g. the server's "api:RUN_ID").
        self.resolvers: dict[str, Callable[[AgentSnapshot], Awaitable[Agent]]] = {}
        # Documents that follow a fork, whichever face forks (e.g. the new thread of an API run's fork).
        self.fork_listeners: dict[str, ForkListener] = {}

    def advancing(self, run_id: str) -> bool:
        """Whether this process is advancing the run right now."""
        return run_id in self._active

    def register(self, agent: Agent) -> None:
        """Make an agent defined in code findable by runs that name it (by `ref`, else by name)."""
        self._agents[agent.ref or agent.name] = agent

    # -- create and advance ---------------------------------------------------------------------

    async def start(self, agent: Agent, task: str | Sequence[Message], *, thread_id: str | None = None,
                    metadata: dict[str, Any] | None = None, breakpoints: Sequence[str | Breakpoint] = (),
                    on_event: Callable[[Event], None] | None = None, register: bool = True,
                    history: Sequence[Message] | None = None, run_id: str | None = None,
                    drive: bool = True, budgets: Sequence[str] = (), batch: BatchRef | None = None) -> RunView:
        """Start a run and advance it until it pauses or finishes.

        `budgets`: ids of shared budgets in the store (`put_budget`) that cover every model call of
        the run besides its own limits; forks of it keep them.

        `breakpoints` (e.g. "before_tool:delete_*", "after_model if run.cost_usd > 0.2") join the
        agent's own for this run. On a thread, the run starts from `history` when given, else from
        the conversation of the thread's latest run. With `drive=False` the run is only created
        (queued, leased to this service): `resume(run_id)` advances it. `batch` names the batch case
        the run is an attempt of (recorded in its `run_started`).
        """
        model = agent.model  # resolve the model reference now: a bad one fails before a run exists
        await agent.open_tools()  # MCP servers: their tools are listed at run start
        snapshot = agent.snapshot()
        snapshot.breakpoints += [bp.to_dict() for bp in _parse_all(breakpoints, start=len(snapshot.breakpoints))]
        await self._check_budgets(agent.model_ref, model, snapshot.limits.max_cost_usd, budgets)
        if register:
            self.register(agent)
        new = [Message.user(task)] if isinstance(task, str) else list(task)
        if history is None:
            history = await self._thread_history(thread_id) if thread_id else []
        run_id = run_id or new_id("run")
        first = Record(run_id, 1, time.time(),
                       RunStarted(snapshot, [*history, *new], thread_id, None, dict(metadata or {}),
                                  list(dict.fromkeys(budgets)), batch=batch))
        await self.store.create_run(first, owner=self.owner, lease_ttl_s=self.lease_ttl_s)
        state = RunState(run_id)
        state.apply(first)
        _emit(on_event, Event(run_id, "record", first))
        if not drive:
            await agent.close_tools()
            return _queued(state, [first])
        return await self._drive(state, [first], agent, on_event, fresh=True)

    async def _check_budgets(self, model_ref: str, model: Model, max_cost_usd: float | None,
                             budgets: Sequence[str]) -> None:
        """Refuse a run whose budgets could never be checked: a dollar budget (its own max_cost_usd, or
        a shared one) on a model whose price is unknown, or a shared budget that does not exist."""
        priced = self.governor.knows_price(model)
        if max_cost_usd is not None and not priced:
            raise ConfigError(f"max_cost_usd is set, but the price of model {model_ref!r} is unknown here, "
                              "so the budget could never be checked; remove it, use a model with known prices, "
                              "or set its price in the operator configuration ([prices])")
        if isinstance(budgets, str):  # a string is a sequence too: of one-letter ids nobody meant
            raise InvalidRequest(f"budgets must be a list of budget ids, e.g. [{budgets!r}], not a string",
                                 param="budgets")
        for budget_id in budgets:
            budget = await self.store.get_budget(budget_id)
            if budget is None:
                raise ConfigError(f"no budget {budget_id!r}; create it first (put_budget)")
            if budget.max_usd is not None and not priced:
                raise ConfigError(f"budget {budget_id} has a dollar limit, but the price of model {model_ref!r} "
                                  "is unknown here, so the budget could never be checked; use a model with "
                                  "known prices, or set its price in the operator configuration ([prices])")

    async def continue_thread(self, thread_id: str, task: str | Sequence[Message], *,
                              agent: Agent | None = None, **options: Any) -> RunView:
        """Start the thread's next run; by default with the agent of its latest run."""
        if agent is None:
            runs = await self.store.list_runs(thread_id=thread_id, limit=1)
            if not runs:
                raise RunNotFound(f"thread {thread_id} has no runs; start one with an agent first")
            latest = fold(runs[0].id, await self.store.load(runs[0].id))
            assert latest.agent is not None
            agent = await self.agent_for(latest.agent)
        return await self.start(agent, task, thread_id=thread_id, **options)

    async def _thread_history(self, thread_id: str) -> list[Message]:
        runs = await self.store.list_runs(thread_id=thread_id, limit=1)
        if not runs:
            return []
        latest = runs[0]
        if latest.status not in TERMINAL:
            raise StoreConflict(f"thread {thread_id} already has an active run ({latest.id}, {latest.status}); "
                                "wait for it, answer its pause, or cancel it")
        return fold(latest.id, await self.store.load(latest.id)).messages

    async def _drive(self, state: RunState, records: list[Record], agent: Agent,
                     on_event: Callable[[Event], None] | None = None, *, fresh: bool = False) -> RunView:
        """Advance a leased run until it pauses or finishes, then give the lease back.

        `records` is the run's log so far; the executor extends it, so the view that comes back
        needs no re-read of the store.
        """
        executor = Executor(store=self.store, model=agent.model, tools=agent.tools, on_event=on_event,
                            log=records, breakpoints=await self._breakpoints_of(state, fresh=fresh),
                            governor=self.governor)
        self._hold(state.run_id, executor)
        lost = False
        try:
            if not fresh and (reason := await self.store.cancel_requested(state.run_id)) is not None:
                executor.cancel(reason)  # asked while no one held it (its owner had died)
            await executor.advance(state)
        except LeaseLost:
            lost = True  # another process advances the run now: give nothing back, write nothing
            raise
        finally:
            self._let_go(state.run_id, executor)
            await agent.close_tools()  # MCP sessions close when the run pauses or ends
            await self.store.sync()
            if not lost and state.status not in (RunStatus.PAUSED, *TERMINAL):  # a pause or the end released it
                await self.store.release_lease(state.run_id, self.owner)
        return view_of(state, records)

    async def _take_lease(self, run_id: str) -> bool:
        """Take the run's lease: free, expired, ours already, or held by a process of this machine
        that no longer exists (a killed `tether run`): that one is taken at once, not on expiry."""
        if await self.store.acquire_lease(run_id, self.owner, self.lease_ttl_s):
            return True
        info = await self.store.get_run(run_id)
        if info is None or info.lease_owner is None or not _gone(info.lease_owner):
            return False
        log.info("run %s: its lease owner %s is gone; taking the run over", run_id, info.lease_owner)
        # Compare-and-set on the dead owner: of two processes taking over at once, one wins.
        return await self.store.take_over_lease(run_id, info.lease_owner, self.owner, self.lease_ttl_s)

    def _hold(self, run_id: str, executor: Executor) -> None:
        """The executor advances the run now, under this service's lease: its loop's heartbeat keeps it.
        (A heartbeat in another thread's loop would stop with that loop, and could not be cancelled
        from here.)"""
        self._active[run_id] = executor
        loop = asyncio.get_running_loop()
        beat = self._heartbeats.get(loop)
        if beat is None or beat.task.done():
            runs = beat.runs if beat is not None else {}
            task = asyncio.create_task(self._heartbeat(runs), name=f"tether heartbeat {self.owner}")
            beat = self._heartbeats[loop] = _Heartbeat(task, runs)
        beat.runs[run_id] = executor

    def _let_go(self, run_id: str, executor: Executor) -> None:
        if self._active.get(run_id) is executor:  # not a newer executor of the run (resumed meanwhile)
            del self._active[run_id]
        loop = asyncio.get_running_loop()
        beat = self._heartbeats.get(loop)
        if beat is not None:
            if beat.runs.get(run_id) is executor:
                del beat.runs[run_id]
            if not beat.runs:
                beat.task.cancel()  # nothing left to keep in this loop: no task lingers
                del self._heartbeats[loop]

    async def _heartbeat(self, runs: dict[str, Executor]) -> None:
        """Keep the leases of every run this service advances in this loop (`runs`), in one statement
        every lease_ttl/3 however many there are, and hand each executor what was set on its run from
        outside: a cancel, changed breakpoints (between renewals, one read every CONTROLS_POLL_S takes
        those up sooner). A run whose lease another process took over (this one was suspended, or too
        busy, past its expiry) stops before its next write."""
        every = self.lease_ttl_s / 3
        due = time.monotonic() + every
        while runs:
            await asyncio.sleep(min(CONTROLS_POLL_S, every, max(0.0, due - time.monotonic())))
            held = dict(runs)
            renew = time.monotonic() >= due
            try:
                if renew:
                    due = time.monotonic() + every
                    leases = await self.store.renew_leases(self.owner, held.keys(), self.lease_ttl_s)
                else:
                    leases = await self.store.controls(held.keys())
            except Exception:  # a store that fails now may not later: the next beat tries again
                log.warning("the heartbeat of %d runs failed", len(held), exc_info=True)
                continue
            for lease in leases:
                executor = held.pop(lease.run_id, None)
                if executor is not None and runs.get(lease.run_id) is executor:
                    _hand_controls(executor, lease)
            if not renew:
                continue
            for run_id, executor in held.items():  # not renewed: it paused or ended, or its lease is gone
                if runs.get(run_id) is executor:  # (one that paused or ended writes nothing more anyway)
                    executor.lose_lease(
                        f"run {run_id}: this process did not renew its lease in time (every {self.lease_ttl_s:g} s; "
                        "it was suspended or too busy) and another process took the run over, so this one "
                        f"stopped advancing it and wrote nothing more; `tether runs show {run_id}` shows it now")

    # -- look ------------------------------------------------------------------------------------

    async def get(self, run_id: str) -> RunView:
        records = await self.store.load(run_id)
        if not records:
            raise RunNotFound(f"no run {run_id!r}; `tether runs list` shows the runs there are")
        state = fold(run_id, records)
        view = view_of(state, records)
        info = await self.store.get_run(run_id)
        view.status = shown_status(state.status, info.status if info is not None else None)  # as `list` says
        return view

    async def records_after(self, run_id: str, after: int) -> builtins.list[Record]:
        """The run's records with seq > `after`: what a follower has not seen yet."""
        return await self.store.load(run_id, after=after)

    async def list(self, *, limit: int = 50, status: RunStatus | str | None = None,
                   thread_id: str | None = None) -> builtins.list[RunInfo]:
        wanted = None if status is None else as_status(status)  # InvalidRequest for an unknown status
        return await self.store.list_runs(limit=limit, status=wanted, thread_id=thread_id)

    # -- answer a pause --------------------------------------------------------------------------

    async def decide(self, run_id: str, pause_id: str, answers: Mapping[str, tuple[Action, Any] | Answer], *,
                     by: str = "api", on_event: Callable[[Event], None] | None = None,
                     drive: bool = True) -> RunView:
        """Answer every pending item of pause `pause_id`, then continue the run.

        `answers` maps item id → (action, value), or → a typed answer (domain/answers.py); each is
        checked against its item before anything is written. Of two racing answers to the same
        pause, one wins; the other gets `AlreadyResumed`. With `drive=False` the answer is only
        recorded (the run is queued): `resume(run_id)` advances it.
        """
        records = await self.store.load(run_id)
        if not records:
            raise RunNotFound(f"no run {run_id!r}")
        state = fold(run_id, records)
        if state.pause is None or state.pause.pause_id != pause_id:
            raise AlreadyResumed(f"run {run_id} was already resumed from pause {pause_id} (it is "
                                 f"{state.status} now), or that pause never existed")
        items = {i.id: i for i in state.pause.items}
        missing, extra = set(items) - set(answers), set(answers) - set(items)
        if missing or extra:
            raise TetherError(f"pause {pause_id} of run {run_id} needs an answer for exactly these items: "
                              f"{sorted(items)} (missing {sorted(missing)}, unknown {sorted(extra)})")
        view = view_of(state, records)
        decisions = []
        for item_id, given in answers.items():
            action, value = (given.action, given) if isinstance(given, ANSWER_TYPES) else given
            answer = make_answer(items[item_id], action, value, view)
            decisions.append(decision_for(pause_id, items[item_id], answer, by))
        # Before deciding (fail, change nothing): the agent and its model, unless the answer ends the
        # run, which calls neither (so an abort works where the model cannot be reached).
        agent = None
        if not any(isinstance(d.answer, Abort) for d in decisions):
            agent = await self.agent_for(state.agent)  # type: ignore[arg-type]
            _ = agent.model
        seq = state.last_seq
        recs = [Record(run_id, seq + i + 1, time.time(), d) for i, d in enumerate(decisions)]
        if not await self.store.decide(run_id, pause_id, recs):
            raise AlreadyResumed(f"run {run_id} was already resumed from pause {pause_id} by another actor")
        for r in recs:
            state.apply(r)
            records.append(r)
            _emit(on_event, Event(run_id, "record", r))
        if not drive:
            return _queued(state, records)
        if not await self._take_lease(run_id):
            return await self.get(run_id)  # another worker picked it up already; it will advance it
        if agent is None:
            return await self._end(state, records, on_event=on_event)  # the "abort" answer ends it
        return await self._drive(state, records, agent, on_event)

    async def submit_tool_outputs(self, run_id: str, outputs: dict[str, str], *, pause_id: str | None = None,
                                  **options: Any) -> RunView:
        """Answer a `client_tool` pause: one output for each pending call id.

        Give the `pause_id` you saw, so that an answer racing another one is told `AlreadyResumed`.
        """
        if pause_id is None:
            view = await self.get(run_id)
            if not view.paused or any(i.reason != PauseReason.CLIENT_TOOL for i in view.pending):
                raise TetherError(f"run {run_id} is not waiting for tool outputs (it is {view.status})")
            pause_id = view.pause_id
        assert pause_id is not None
        return await self.decide(run_id, pause_id, {k: ("supply", v) for k, v in outputs.items()}, **options)

    async def resolve_uncertain(self, run_id: str, call_id: str, action: Action, result: str | None = None,
                                **options: Any) -> RunView:
        """Answer an `uncertain` call: "rerun" it, "supply" its result, or "abort" the run."""
        view = await self.get(run_id)
        item = next((i for i in view.pending if i.id == call_id), None)
        if view.pause_id is None or item is None:
            raise TetherError(f"run {run_id} has no uncertain call {call_id} pending (it is {view.status}); "
                              "if you answered it already, it was already resumed")
        if action in ("rerun", "supply") and not {"rerun", "supply"} & set(actions_for(item)):
            raise AlreadyResumed(f"run {run_id} was already resumed: call {call_id} now waits at {item.stop} "
                                 f"({item.reason}), not for an answer about whether it ran")
        answers = {i.id: (action, result) if i.id == call_id else ("continue", None) for i in view.pending}
        return await self.decide(run_id, view.pause_id, answers, **options)

    # -- stop and resume -------------------------------------------------------------------------

    async def cancel(self, run_id: str, *, by: str = "api", wait: bool = True) -> RunView:
        """Cancel a run: paused (answers its pause with abort), running here, or running in another
        process (which cancels it at its next transition: the view that comes back may still be
        running then). The request is recorded first, so whichever process advances the run acts on
        it; a race lost to another actor (the run moved on meanwhile) leaves the request standing.
        With `wait=False`, a run that is being advanced is only asked to stop, and the view comes
        back at once. One semantics for every interface (the CLI's `runs cancel`, HTTP's cancel)."""
        info = await self.store.get_run(run_id)
        if info is None:
            raise RunNotFound(f"no run {run_id!r}")
        if info.status in TERMINAL:
            raise AlreadyFinished(f"run {run_id} already finished ({info.status}); there is nothing to cancel")
        reason = f"cancelled by {by}"
        await self.store.request_cancel(run_id, reason)
        try:
            return await self._cancel(run_id, reason, wait)
        except (AlreadyResumed, AlreadyFinished, StoreConflict):
            return await self.get(run_id)  # it moved on meanwhile: its owner acts on the request

    async def _cancel(self, run_id: str, reason: str, wait: bool) -> RunView:
        executor = self._active.get(run_id)
        if executor is not None:
            executor.cancel(reason)
            while wait and run_id in self._active:
                await asyncio.sleep(0.005)
            return await self.get(run_id)
        info = await self.store.get_run(run_id)
        if info is None or info.status in TERMINAL:
            raise AlreadyFinished(f"run {run_id} already finished")
        by = reason.removeprefix("cancelled by ")
        if info.status == RunStatus.PAUSED:  # cancelling answers the pause: "abort" for every item
            view = await self.get(run_id)
            if view.pause_id is None:
                raise AlreadyResumed(f"run {run_id} is no longer paused")
            return await self.decide(run_id, view.pause_id, {i.id: ("abort", None) for i in view.pending}, by=by)
        if not await self._take_lease(run_id):
            # Another process advances it: it reads the request when a slow model or tool call returns,
            # else on its heartbeat, and cancels it at that transition (a tool call in flight finishes
            # first): like the Assistants API's "cancelling", the run may still show as running when
            # this returns.
            deadline = time.monotonic() + (self.lease_ttl_s / 3 + 1.0 if wait else 0.0)
            while (view := await self.get(run_id)).status in UNPAUSED and time.monotonic() < deadline:
                await asyncio.sleep(min(0.2, self.lease_ttl_s / 10))
            return view
        records = await self.store.load(run_id)
        return await self._end(fold(run_id, records), records, reason=reason)

    async def queue_state(self, run_id: str) -> QueueState:
        """Whether the run waits for a worker (queued, and no process advances it: neither this one
        nor another holding a live lease on it), and whether a cancel was asked for (still active)."""
        info = await self.store.get_run(run_id)
        if info is None:
            return QueueState(False, False)
        elsewhere = info.lease_owner not in (None, self.owner) and (info.lease_expires or 0) > time.time()
        queued = info.status == RunStatus.QUEUED and not self.advancing(run_id) and not elsewhere
        asked = info.status in ACTIVE and await self.store.cancel_requested(run_id) is not None
        return QueueState(queued, asked)

    async def info(self, run_id: str) -> RunInfo | None:
        """The run's entry in the runs index (None: no such run)."""
        return await self.store.get_run(run_id)

    async def _end(self, state: RunState, records: builtins.list[Record], *, reason: str | None = None,
                   on_event: Callable[[Event], None] | None = None) -> RunView:
        """End a leased run as cancelled: cancelled for `reason`, or aborted by an answer in its log.

        Ending a run calls no model and no tool, so it needs neither its agent nor a model backend:
        a run can be cancelled from anywhere, even where its model cannot be reached."""
        executor = Executor(store=self.store, model=_NOT_CALLED, tools={}, on_event=on_event, log=records)
        if reason is not None:
            executor.cancel(reason)
        self._hold(state.run_id, executor)
        try:
            await executor.advance(state)
        finally:
            self._let_go(state.run_id, executor)
            await self.store.release_lease(state.run_id, self.owner)
        return view_of(state, records)

    async def resume(self, run_id: str, *, on_event: Callable[[Event], None] | None = None) -> RunView:
        """Take over a run whose owner is gone (its lease expired) and advance it from its log."""
        if run_id in self._active:
            raise TetherError(f"run {run_id} is being advanced by this process already")
        records = await self._records(run_id)
        state = fold(run_id, records)
        assert state.agent is not None
        agent = await self.agent_for(state.agent)
        _ = agent.model  # a bad agent or model fails here, before the lease is taken
        if not await self._take_lease(run_id):
            info = await self.store.get_run(run_id)
            holder = owner_of(info.lease_owner).name if info and info.lease_owner else "?"
            raise TetherError(f"run {run_id} is leased by {holder}, a process that may still be advancing it; "
                              f"it can be resumed once that lease expires{_lease_left(info)}")
        records = await self.store.load(run_id)  # again, under the lease: the log may have grown
        state = fold(run_id, records)
        if state.status != RunStatus.RUNNING:
            await self.store.release_lease(run_id, self.owner)
            return view_of(state, records)
        return await self._drive(state, records, agent, on_event)

    async def orphaned_runs(self, *, dead_owners: bool = True) -> builtins.list[str]:
        """Active runs that nothing advances: their lease expired (or was never taken), or, with
        `dead_owners`, its owner is a process of this machine that no longer exists (a server killed
        and started again takes its runs back at once, not when their leases expire)."""
        ids = await self.store.expired_runs()
        if dead_owners:
            for status in (RunStatus.QUEUED, RunStatus.RUNNING):
                active = await self.store.list_runs(limit=100_000, status=status)
                ids += [r.id for r in active if r.id not in ids and r.lease_owner and _gone(r.lease_owner)]
        return ids

    async def resume_expired(self) -> builtins.list[RunView]:
        out = []
        for run_id in await self.orphaned_runs():
            try:
                out.append(await self.resume(run_id))
            except TetherError:
                continue  # another process took it first
        return out

    # -- the debugger: breakpoints, and answering a pause ----------------------------------------

    async def _breakpoints_of(self, state: RunState, *, fresh: bool = False) -> builtins.list[Breakpoint]:
        """The agent's breakpoints as changed on this run (a run just created has no changes yet)."""
        stored = None if fresh else await self.store.get_breakpoints(state.run_id)
        assert state.agent is not None
        return [Breakpoint.from_dict(d) for d in (state.agent.breakpoints if stored is None else stored)]

    async def breakpoints(self, run_id: str) -> builtins.list[Breakpoint]:
        """The run's breakpoints now (the agent's, as changed on this run), with their hit counts."""
        return [b for b in await self._all_breakpoints(run_id) if b.enabled]

    async def _all_breakpoints(self, run_id: str) -> builtins.list[Breakpoint]:
        state = fold(run_id, await self._records(run_id))
        bps = await self._breakpoints_of(state)
        for bp in bps:
            bp.hits = state.breakpoint_hits.get(bp.id, 0)
        return bps

    async def add_breakpoint(self, run_id: str, spec: str | Breakpoint, *, once: bool = False
                             ) -> tuple[Breakpoint, builtins.list[str]]:
        """Add a breakpoint to a run, running or paused; returns it and any warnings about it.

        A running run in this process picks it up at its next stop; in another process, when it
        next resumes.
        """
        state = fold(run_id, await self._records(run_id))
        if state.status in TERMINAL:
            raise TetherError(f"run {run_id} already finished ({state.status}), so a breakpoint on it could never "
                              f"stop anything; fork it to run it again from a step with breakpoints: "
                              f"`tether runs fork {run_id} STEP`, then `tether runs break NEW_RUN SPEC`")
        bps = await self._all_breakpoints(run_id)  # cleared ones too: a number is never used twice
        n = max([len(bps), *(int(b.id[3:]) for b in bps if b.id[3:].isdigit())]) + 1
        bp = spec if isinstance(spec, Breakpoint) else parse_breakpoint(spec, id=f"bp_{n}", once=once)
        assert state.agent is not None
        warnings = breakpoint_warnings(bp, (await self.agent_for(state.agent)).model)  # fails before writing
        await self._set_breakpoints(run_id, [*bps, bp])
        return bp, warnings

    async def remove_breakpoint(self, run_id: str, breakpoint_id: str) -> None:
        bps = await self._all_breakpoints(run_id)
        if breakpoint_id not in {b.id for b in bps if b.enabled}:
            raise TetherError(f"run {run_id} has no breakpoint {breakpoint_id!r}; it has "
                              f"{[b.id + ' ' + b.spec() for b in bps if b.enabled] or 'none'}")
        for b in bps:
            if b.id == breakpoint_id:
                b.enabled = False  # kept, disabled: its number is not given out again
        await self._set_breakpoints(run_id, bps)

    async def _set_breakpoints(self, run_id: str, bps: builtins.list[Breakpoint]) -> None:
        await self.store.set_breakpoints(run_id, [b.to_dict() for b in bps])
        executor = self._active.get(run_id)
        if executor is not None:
            executor.breakpoints = bps

    async def answer(self, run_id: str, answers: Mapping[str, tuple[Action, Any] | Answer] | None = None, *,
                     default: Action = "continue", value: Any = None, pause_id: str | None = None,
                     by: str = "api", on_event: Callable[[Event], None] | None = None,
                     drive: bool = True) -> RunView:
        """Answer the run's pause: `answers` for some items, `default` (with `value`) for the rest,
        then go on.

        Actions: continue, step (pause again at the very next stop), edit (payload: the new
        value), skip (payload: the result to use instead of calling the tool), approve (payload:
        None or {"arguments": ...}), deny (payload: the message the model sees), supply, rerun,
        abort. Which fit which item: `tether.domain.decisions.ANSWERS`. A `pause_id` that the run
        never had, or an item the pause does not have, is an `InvalidRequest` naming the field;
        a pause the run has left is `AlreadyResumed`.
        """
        view = await self.get(run_id)
        if pause_id is not None and view.pause_id != pause_id:
            where = f"it is paused at {view.pause_id}" if view.pause_id else f"it is {view.status}"
            if not any(isinstance(r.payload, Paused) and r.payload.pause_id == pause_id for r in view.records):
                raise InvalidRequest(f"Run {run_id} has no pause {pause_id!r} ({where}).", param="pause_id")
            raise AlreadyResumed(f"run {run_id} was already resumed from pause {pause_id} ({where} now)")
        if view.pause_id is None:
            raise TetherError(f"run {run_id} is not paused (it is {view.status}); there is nothing to answer")
        unknown = set(answers or {}) - {i.id for i in view.pending}
        if unknown:
            raise InvalidRequest(f"Pause {view.pause_id} has no items {sorted(unknown)}; its items are "
                                 f"{[i.id for i in view.pending]}", param="answers")
        typed: dict[str, Answer] = {}
        for item in view.pending:  # checked here too, to name the field a mistake is in
            own = item.id in (answers or {})
            given = (answers or {})[item.id] if own else (default, value)
            action, raw = (given.action, given) if isinstance(given, ANSWER_TYPES) else given
            where = f"answers.{item.id}." if own else ""
            try:
                check_action(item, action)
            except TetherError as e:
                raise InvalidRequest(str(e), param=where + "action") from None
            try:
                typed[item.id] = make_answer(item, action, raw, view)
            except TetherError as e:
                raise InvalidRequest(str(e), param=where + "payload") from None
        return await self.decide(run_id, view.pause_id, typed, by=by, on_event=on_event, drive=drive)

    async def fork(self, run_id: str, step: int, edits: dict[str, Any] | None = None, *,
                   on_event: Callable[[Event], None] | None = None, drive: bool = True) -> RunView:
        """A new run that reuses steps < `step` of `run_id` without calling anything, applies
        `edits` at `step`, and continues live.

        Edits at a model step: {"messages": [...]} (the conversation it is sent). At a tool step:
        {"arguments": {...}} (call it with these) or {"result": "..."} (use this, do not call).
        The new run's `metadata["fork_warnings"]` lists side effects the parent already made at
        or after `step`, which the fork may make again.
        """
        parent = await self._records(run_id)
        parent_state = fold(run_id, parent)
        if not 1 <= step <= parent_state.last_step + 1:
            raise InvalidRequest(f"run {run_id} has steps 1..{parent_state.last_step}; fork at one of them "
                                 f"(or at {parent_state.last_step + 1} to go on from its end)", "step")
        assert parent_state.agent is not None
        agent = await self.agent_for(parent_state.agent)
        _ = agent.model  # a model that cannot be reached fails here, before the fork exists
        followers = [f for listen in self.fork_listeners.values()
                     if (f := await listen(run_id, step, parent)) is not None]
        thread_id = new_id("thread") if parent_state.thread_id else None  # a fork of a thread's run: a new thread
        fork_id = new_id("run")
        records = reused_prefix(parent, step, fork_id, time.time(), thread_id)
        idempotent = {name for name, t in agent.tools.items() if t.policy.idempotent}
        warnings = later_side_effects(parent, step, idempotent)
        first = records[0].payload
        assert isinstance(first, RunStarted)
        first.metadata["fork_warnings"] = warnings
        state = fold(fork_id, records)
        if edits:
            records.append(Record(fork_id, state.last_seq + 1, time.time(), fork_edit(state, step, edits)))
            state.apply(records[-1])
        await self.store.create_run(records[0], owner=self.owner, lease_ttl_s=self.lease_ttl_s)
        self.store.append(records[1:])
        await self.store.sync()
        for follow in followers:
            await follow(view_of(state, records))
        for r in records:
            _emit(on_event, Event(fork_id, "record", r))
        if state.status != RunStatus.RUNNING:  # the parent's log ended paused or finished before `step`
            await self.store.release_lease(fork_id, self.owner)
            return view_of(state, records)
        if not drive:
            await agent.close_tools()
            return _queued(state, records)
        return await self._drive(state, records, agent, on_event)

    async def _records(self, run_id: str) -> builtins.list[Record]:
        records = await self.store.load(run_id)
        if not records:
            raise RunNotFound(f"no run {run_id!r}; `tether runs list` shows the runs there are")
        return records

    # -- replay ----------------------------------------------------------------------------------

    async def replay(self, run_id: str, *, full: bool = False, agent: Agent | None = None,
                     on_event: Callable[[Event], None] | None = None) -> RunView:
        """Run `run_id` again as a new run from its recorded model responses.

        With `full=True` tool results come from the log too, so nothing is called for real.
        A request that differs from the recording fails the new run with "diverged at step N".
        """
        from tether.adapters.models.replay import ReplayModel, from_records
        from tether.adapters.tools.recorded import RecordedTool, recorded_results

        records = await self.store.load(run_id)
        if not records:
            raise RunNotFound(f"no run {run_id!r}")
        state = fold(run_id, records)
        assert state.agent is not None
        agent = agent or await self.agent_for(state.agent)
        tools = None
        if full:
            results = recorded_results(records)
            tools = [RecordedTool(t.name, t.description, t.parameters, results) for t in agent.tools.values()]
        model = ReplayModel(from_records(records), ref=f"replay:{run_id}")
        return await self.start(agent.with_model(model, tools), state.messages[: state.input_count],
                                metadata={"replay_of": run_id, "replay": "full" if full else "model"},
                                on_event=on_event, register=False)

    # -- deleting -------------------------------------------------------------------------------

    async def prune(self, *, older_than_s: float, dry_run: bool = False, work_roots: Sequence[Path] = ()) -> int:
        """Delete the finished runs (completed, failed, cancelled, incomplete) last changed more than
        `older_than_s` seconds ago: their records, their rows and their working folders (the `python`
        tool's, under TETHER_HOME/work and under `work_roots`). Returns how many (with `dry_run`: how
        many would be). Runs that belong to a batch are left to the batch (`batch delete --with-runs`
        deletes them; once a batch is deleted without its runs, they are pruned like any other), and
        so are runs of an Assistants thread or a conversation (deleting the thread removes them)."""
        if not (isinstance(older_than_s, int | float) and 0 <= older_than_s < float("inf")):
            raise InvalidRequest(f"older_than_s must be a number of seconds of at least 0, not {older_than_s!r}",
                                 "older_than_s")
        store = self._deleting_store()
        cutoff = time.time() - older_than_s
        if dry_run:
            return len(await store.finished_runs_before(cutoff, limit=2**62))
        total = 0
        while ids := await store.finished_runs_before(cutoff, limit=1000):  # a thousand at a time
            total += await self.delete_runs(ids, work_roots=work_roots)
        return total

    async def delete_runs(self, run_ids: Sequence[str], *, work_roots: Sequence[Path] = ()) -> int:
        """Delete these runs (finished ones: a run advanced here is refused) and their working folders."""
        busy = [r for r in run_ids if r in self._active]
        if busy:
            raise TetherError(f"run {busy[0]} is being advanced by this process; cancel it before deleting it")
        deleted = await self._deleting_store().delete_runs(run_ids)
        from tether.adapters.store.sql import tether_home
        from tether.adapters.tools.sandbox.tool import run_folder_name

        for root in (tether_home() / "work", *work_roots):
            for run_id in run_ids:
                folder = Path(root) / run_folder_name(run_id)
                if folder.is_dir():
                    await asyncio.to_thread(shutil.rmtree, folder, True)
        return deleted

    def _deleting_store(self) -> BatchStore:
        if not hasattr(self.store, "delete_runs"):
            raise ConfigError("this store cannot delete runs")
        return self.store  # type: ignore[return-value]

    # -- finding an agent again ------------------------------------------------------------------

    async def agent_for(self, snapshot: AgentSnapshot) -> Agent:
        """The live agent for a recorded snapshot; its tools must match what the run recorded."""
        agent = self._agents.get(snapshot.agent_ref or snapshot.name)
        resolver = self.resolvers.get((snapshot.agent_ref or "").partition(":")[0])
        if agent is None and resolver is not None:
            agent = await resolver(snapshot)
        if agent is None and snapshot.agent_ref:
            ref = snapshot.agent_ref
            if ref.startswith("file:"):
                agent = load_agent_file(ref[5:])
            else:
                found = import_attr(ref)
                if not isinstance(found, Agent):
                    raise ConfigError(f"{ref} is not an Agent")
                agent = found
        if agent is None:
            raise ConfigError(
                f"cannot find agent {snapshot.name!r} again: it was defined in code without a ref. "
                "Give it ref='module:attr' (or use an agent file), or register it with service.register(agent)"
            )
        if snapshot.model != agent.model_ref and not snapshot.model.startswith("replay:"):
            agent = agent.with_model(snapshot.model)  # the run goes on with the model it started on
        await agent.open_tools()  # MCP servers list their tools again: a changed server shows below
        live = {s.name: s.schema_hash for s in agent.snapshot().tools}
        for spec in snapshot.tools:
            if spec.name not in live:
                raise ConfigError(f"tool {spec.name!r} that the run used is gone from agent {agent.name!r}")
            if live[spec.name] != spec.schema_hash:
                raise ConfigError(f"tool {spec.name!r} changed since the run started (schema {spec.schema_hash} "
                                  f"→ {live[spec.name]}); restore it, or fork the run with the new agent")
        return agent


class _NotCalled:
    """The model of a run that is only being ended (cancelled or aborted): never called."""

    ref = "none"

    async def complete(self, request: Any, on_delta: Any = None) -> ModelResponse:
        raise AssertionError("a run being ended calls no model")

    def cost_usd(self, response: ModelResponse) -> float | None:
        return None


_NOT_CALLED = _NotCalled()


def _emit(on_event: Callable[[Event], None] | None, event: Event) -> None:
    """Tell a listener; its failure is logged, never the run's (as in the executor)."""
    if on_event is not None:
        try:
            on_event(event)
        except Exception:
            log.exception("an event listener failed on %s of run %s", event.type, event.run_id)


def _queued(state: RunState, records: list[Record]) -> RunView:
    """The view of a run made or answered without advancing it: queued until `resume` takes it."""
    view = view_of(state, records)
    view.status = RunStatus.QUEUED
    return view


def _parse_all(specs: Sequence[str | Breakpoint], start: int) -> list[Breakpoint]:
    return [b if isinstance(b, Breakpoint) else parse_breakpoint(b, id=f"bp_{start + i + 1}")
            for i, b in enumerate(specs)]


def _owner_here() -> str:
    """This process's lease owner string: readable, and precise enough to be known dead later."""
    name = f"{socket.gethostname()}:{os.getpid()}:{new_id('w')[2:]}"
    try:
        ticks = start_ticks(os.getpid())
    except PermissionError:
        ticks = None
    return owner_string(name, this_host(), os.getpid(), ticks)


def _hand_controls(executor: Executor, lease: LeaseState) -> None:
    """Give the executor what another process set on its run: breakpoints that differ from its own
    replace them; a cancel stops it at its next transition."""
    if lease.breakpoints is not None and lease.breakpoints != [b.to_dict() for b in executor.breakpoints]:
        try:
            executor.breakpoints = [Breakpoint.from_dict(d) for d in lease.breakpoints]
        except TetherError as e:
            log.warning("run %s: its stored breakpoints are not valid, so they were not taken up: %s",
                        lease.run_id, e)
    if lease.cancel_requested is not None:
        executor.cancel(lease.cancel_requested)


def _gone(lease_owner: str) -> bool:
    """Whether the lease's owner is a process of this machine that no longer exists."""
    owner = owner_of(lease_owner)
    if owner.pid is None:
        return False
    try:
        ticks = start_ticks(owner.pid)
    except PermissionError:
        return False  # it exists; whether it is the owner, we cannot tell
    return owner_is_gone(owner, this_host(), ticks)


def _lease_left(info: RunInfo | None) -> str:
    if info is None or info.lease_expires is None:
        return ""
    return f" (in {max(0.0, info.lease_expires - time.time()):.0f} s, unless its owner renews it)"


_default: RunsService | None = None


def open_service(url: str | None = None, *, lease_ttl_s: float = LEASE_TTL_S) -> RunsService:
    """A service on the store at `url` (default: the operator configuration's, else TETHER_DATABASE_URL,
    else the SQLite file in TETHER_HOME), built by the composition root like every face's."""
    from tether.services.compose import open_services

    return open_services(lease_ttl_s=lease_ttl_s, database_url=url).runs


async def default_service() -> RunsService:
    """The process-wide service on the default store, opened on first use."""
    global _default
    if _default is None:
        _default = open_service()
    return _default


def run_blocking(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, even if this thread already runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    result: list[Any] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as e:  # re-raised in the caller's thread
            result.append(e)

    t = threading.Thread(target=target, name="tether-run")
    t.start()
    t.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]  # type: ignore[no-any-return]


async def iter_events(agent: Agent, task: str, **options: Any) -> AsyncIterator[Event]:
    queue: asyncio.Queue[Event | None] = asyncio.Queue()
    service = options.pop("service", None) or await default_service()

    async def go() -> RunView:
        try:
            return await service.start(agent, task, on_event=queue.put_nowait, **options)
        finally:
            queue.put_nowait(None)

    task_ = asyncio.create_task(go())
    while (event := await queue.get()) is not None:
        yield event
    await task_
