"""The runs service: the one API that Python, the CLI and (later) HTTP and the web page call.

It creates runs, advances them under a lease, answers pauses with compare-and-set decisions,
cancels, continues threads and resumes runs whose owner died. A run that stops for any reason
comes back as a `RunView` value with its pending items, never as an exception.
"""

from __future__ import annotations

import asyncio
import builtins
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tether.adapters.importing import import_attr
from tether.domain.agents import AgentSnapshot
from tether.domain.errors import AlreadyResumed, ConfigError, RunNotFound, StoreConflict, TetherError
from tether.domain.events import Event
from tether.domain.ids import new_id
from tether.domain.messages import Message
from tether.domain.protocols import Store
from tether.domain.records import TERMINAL, Action, Decision, PendingItem, Record, RunStarted
from tether.domain.runs import RunInfo
from tether.domain.state import RunState, fold
from tether.domain.steps import Step, steps_of
from tether.domain.usage import Usage
from tether.engine.executor import Executor
from tether.services.agents import Agent, load_agent_file

T = TypeVar("T")
LEASE_TTL_S = 30.0


@dataclass(slots=True)
class RunView:
    """A run as the user sees it: where it stands, its answer or its pending items."""

    id: str
    status: str
    output: str | None
    structured: Any
    error: str | None
    pending: list[PendingItem]
    pause_id: str | None
    usage: Usage
    cost_usd: float | None
    thread_id: str | None
    agent: AgentSnapshot | None
    messages: list[Message]
    records: list[Record] = field(default_factory=list)

    @property
    def steps(self) -> list[Step]:
        return steps_of(self.records)

    @property
    def paused(self) -> bool:
        return self.status == "paused"

    def __repr__(self) -> str:
        what = self.output if self.status == "completed" else (self.error or [i.reason for i in self.pending])
        return f"<Run {self.id} {self.status}: {what!r}>"


class RunsService:
    def __init__(self, store: Store, *, owner: str | None = None, lease_ttl_s: float = LEASE_TTL_S) -> None:
        self.store = store
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{new_id('w')[2:]}"
        self.lease_ttl_s = lease_ttl_s
        self._agents: dict[str, Agent] = {}
        self._active: dict[str, Executor] = {}

    def register(self, agent: Agent) -> None:
        """Make an agent defined in code findable by runs that name it (by `ref`, else by name)."""
        self._agents[agent.ref or agent.name] = agent

    # -- create and advance ---------------------------------------------------------------------

    async def start(self, agent: Agent, task: str | Sequence[Message], *, thread_id: str | None = None,
                    metadata: dict[str, Any] | None = None,
                    on_event: Callable[[Event], None] | None = None, register: bool = True) -> RunView:
        _ = agent.model  # resolve the model reference now: a bad one fails before a run exists
        if register:
            self.register(agent)
        new = [Message.user(task)] if isinstance(task, str) else list(task)
        history = await self._thread_history(thread_id) if thread_id else []
        run_id = new_id("run")
        first = Record(run_id, 1, time.time(),
                       RunStarted(agent.snapshot(), history + new, thread_id, None, dict(metadata or {})))
        await self.store.create_run(first, owner=self.owner, lease_ttl_s=self.lease_ttl_s)
        state = RunState(run_id)
        state.apply(first)
        if on_event is not None:
            on_event(Event(run_id, "record", first))
        return await self._drive(state, [first], agent, on_event)

    async def continue_thread(self, thread_id: str, task: str | Sequence[Message], *,
                              agent: Agent | None = None, **options: Any) -> RunView:
        """Start the thread's next run; by default with the agent of its latest run."""
        if agent is None:
            runs = await self.store.list_runs(thread_id=thread_id, limit=1)
            if not runs:
                raise RunNotFound(f"thread {thread_id} has no runs; start one with an agent first")
            latest = fold(runs[0].id, await self.store.load(runs[0].id))
            assert latest.agent is not None
            agent = self.agent_for(latest.agent)
        return await self.start(agent, task, thread_id=thread_id, **options)

    async def _thread_history(self, thread_id: str) -> list[Message]:
        runs = await self.store.list_runs(thread_id=thread_id, limit=1)
        if not runs:
            return []
        latest = runs[0]
        if latest.status not in ("completed", "failed", "cancelled", "incomplete"):
            raise StoreConflict(f"thread {thread_id} already has an active run ({latest.id}, {latest.status}); "
                                "wait for it, answer its pause, or cancel it")
        return fold(latest.id, await self.store.load(latest.id)).messages

    async def _drive(self, state: RunState, records: list[Record], agent: Agent,
                     on_event: Callable[[Event], None] | None = None) -> RunView:
        """Advance a leased run until it pauses or finishes, then give the lease back.

        `records` is the run's log so far; the executor extends it, so the view that comes back
        needs no re-read of the store.
        """
        executor = Executor(store=self.store, model=agent.model, tools=agent.tools, on_event=on_event,
                            log=records)
        self._active[state.run_id] = executor
        heartbeat = asyncio.create_task(self._heartbeat(state.run_id))
        try:
            await executor.advance(state)
        finally:
            heartbeat.cancel()
            self._active.pop(state.run_id, None)
            await self.store.sync()
            if state.status not in ("paused", *TERMINAL):  # a pause or the end released it already
                await self.store.release_lease(state.run_id, self.owner)
        return _view(state, records)

    async def _heartbeat(self, run_id: str) -> None:
        while True:
            await asyncio.sleep(self.lease_ttl_s / 3)
            await self.store.renew_lease(run_id, self.owner, self.lease_ttl_s)

    # -- look ------------------------------------------------------------------------------------

    async def get(self, run_id: str) -> RunView:
        records = await self.store.load(run_id)
        if not records:
            raise RunNotFound(f"no run {run_id!r}; `tether runs list` shows the runs there are")
        return _view(fold(run_id, records), records)

    async def list(self, *, limit: int = 50, status: str | None = None,
                   thread_id: str | None = None) -> builtins.list[RunInfo]:
        return await self.store.list_runs(limit=limit, status=status, thread_id=thread_id)

    # -- answer a pause --------------------------------------------------------------------------

    async def decide(self, run_id: str, pause_id: str, answers: dict[str, tuple[Action, Any]], *,
                     by: str = "api", on_event: Callable[[Event], None] | None = None) -> RunView:
        """Answer every pending item of pause `pause_id`, then continue the run.

        `answers` maps item id → (action, payload). Of two racing answers to the same pause, one
        wins; the other gets `AlreadyResumed`.
        """
        records = await self.store.load(run_id)
        if not records:
            raise RunNotFound(f"no run {run_id!r}")
        state = fold(run_id, records)
        if state.pause is None or state.pause.pause_id != pause_id:
            raise AlreadyResumed(f"run {run_id} is not paused at {pause_id} (it is {state.status}); "
                                 "someone else answered that pause, or it never existed")
        items = {i.id: i for i in state.pause.items}
        missing, extra = set(items) - set(answers), set(answers) - set(items)
        if missing or extra:
            raise TetherError(f"pause {pause_id} of run {run_id} needs an answer for exactly these items: "
                              f"{sorted(items)} (missing {sorted(missing)}, unknown {sorted(extra)})")
        agent = self.agent_for(state.agent)  # type: ignore[arg-type]  # before deciding: fail, change nothing
        decisions = []
        for item_id, (action, payload) in answers.items():
            _check_action(items[item_id], action, payload)
            decisions.append(Decision(pause_id, item_id, action, payload, by))
        seq = state.last_seq
        recs = [Record(run_id, seq + i + 1, time.time(), d) for i, d in enumerate(decisions)]
        if not await self.store.decide(run_id, pause_id, recs):
            raise AlreadyResumed(f"run {run_id} was already resumed from pause {pause_id} by another actor")
        for r in recs:
            state.apply(r)
            records.append(r)
            if on_event is not None:
                on_event(Event(run_id, "record", r))
        if not await self.store.acquire_lease(run_id, self.owner, self.lease_ttl_s):
            return await self.get(run_id)  # another worker picked it up already; it will advance it
        if any(d.action == "abort" for d in decisions):
            return await self._abort(state, agent, "aborted by " + by)
        return await self._drive(state, records, agent, on_event)

    async def submit_tool_outputs(self, run_id: str, outputs: dict[str, str], *, pause_id: str | None = None,
                                  **options: Any) -> RunView:
        """Answer a `client_tool` pause: one output for each pending call id.

        Give the `pause_id` you saw, so that an answer racing another one is told `AlreadyResumed`.
        """
        if pause_id is None:
            view = await self.get(run_id)
            if not view.paused or any(i.reason != "client_tool" for i in view.pending):
                raise TetherError(f"run {run_id} is not waiting for tool outputs (it is {view.status})")
            pause_id = view.pause_id
        assert pause_id is not None
        return await self.decide(run_id, pause_id, {k: ("supply", v) for k, v in outputs.items()}, **options)

    async def resolve_uncertain(self, run_id: str, call_id: str, action: Action, result: str | None = None,
                                **options: Any) -> RunView:
        """Answer an `uncertain` call: "rerun" it, "supply" its result, or "abort" the run."""
        view = await self.get(run_id)
        if view.pause_id is None or call_id not in {i.id for i in view.pending}:
            raise TetherError(f"run {run_id} has no uncertain call {call_id} pending")
        answers = {i.id: (action, result) if i.id == call_id else ("continue", None) for i in view.pending}
        return await self.decide(run_id, view.pause_id, answers, **options)

    # -- stop and resume -------------------------------------------------------------------------

    async def cancel(self, run_id: str, *, by: str = "api") -> RunView:
        executor = self._active.get(run_id)
        if executor is not None:
            executor.cancel(f"cancelled by {by}")
            while run_id in self._active:
                await asyncio.sleep(0.005)
            return await self.get(run_id)
        info = await self.store.get_run(run_id)
        if info is None:
            raise RunNotFound(f"no run {run_id!r}")
        if info.status in ("completed", "failed", "cancelled", "incomplete"):
            raise TetherError(f"run {run_id} already finished ({info.status}); there is nothing to cancel")
        if info.status == "paused":  # cancelling answers the pause: "abort" for every item
            view = await self.get(run_id)
            assert view.pause_id is not None
            return await self.decide(run_id, view.pause_id, {i.id: ("abort", None) for i in view.pending}, by=by)
        if not await self.store.acquire_lease(run_id, self.owner, self.lease_ttl_s):
            raise TetherError(f"run {run_id} is being advanced by {info.lease_owner}; cancel it there, or "
                              "wait for its lease to expire")
        state = fold(run_id, await self.store.load(run_id))
        return await self._abort(state, self.agent_for(state.agent), f"cancelled by {by}")  # type: ignore[arg-type]

    async def _abort(self, state: RunState, agent: Agent, reason: str) -> RunView:
        executor = Executor(store=self.store, model=agent.model, tools=agent.tools)
        executor.cancel(reason)
        try:
            await executor.advance(state)
        finally:
            await self.store.release_lease(state.run_id, self.owner)
        return await self.get(state.run_id)

    async def resume(self, run_id: str, *, on_event: Callable[[Event], None] | None = None) -> RunView:
        """Take over a run whose owner is gone (its lease expired) and advance it from its log."""
        if not await self.store.acquire_lease(run_id, self.owner, self.lease_ttl_s):
            info = await self.store.get_run(run_id)
            raise TetherError(f"run {run_id} is leased by {info.lease_owner if info else '?'}; it can be "
                              "resumed once that lease expires")
        records = await self.store.load(run_id)
        state = fold(run_id, records)
        if state.status != "running":
            await self.store.release_lease(run_id, self.owner)
            return _view(state, records)
        return await self._drive(state, records, self.agent_for(state.agent), on_event)  # type: ignore[arg-type]

    async def resume_expired(self) -> builtins.list[RunView]:
        out = []
        for run_id in await self.store.expired_runs():
            try:
                out.append(await self.resume(run_id))
            except TetherError:
                continue  # another process took it first
        return out

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
        agent = agent or self.agent_for(state.agent)
        tools = None
        if full:
            results = recorded_results(records)
            tools = [RecordedTool(t.name, t.description, t.parameters, results) for t in agent.tools.values()]
        model = ReplayModel(from_records(records), ref=f"replay:{run_id}")
        return await self.start(agent.with_model(model, tools), state.messages[: state.input_count],
                                metadata={"replay_of": run_id, "replay": "full" if full else "model"},
                                on_event=on_event, register=False)

    # -- finding an agent again ------------------------------------------------------------------

    def agent_for(self, snapshot: AgentSnapshot) -> Agent:
        """The live agent for a recorded snapshot; its tools must match what the run recorded."""
        agent = self._agents.get(snapshot.agent_ref or snapshot.name)
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
        live = {s.name: s.schema_hash for s in agent.snapshot().tools}
        for spec in snapshot.tools:
            if spec.name not in live:
                raise ConfigError(f"tool {spec.name!r} that the run used is gone from agent {agent.name!r}")
            if live[spec.name] != spec.schema_hash:
                raise ConfigError(f"tool {spec.name!r} changed since the run started (schema {spec.schema_hash} "
                                  f"→ {live[spec.name]}); restore it, or fork the run with the new agent")
        return agent


def _view(s: RunState, records: list[Record]) -> RunView:
    pending = list(s.pause.items) if s.pause else []
    return RunView(s.run_id, s.status, s.output, s.structured, s.error, pending,
                   s.pause.pause_id if s.pause else None, s.usage, s.cost_usd, s.thread_id, s.agent,
                   s.messages, records)


def _check_action(item: PendingItem, action: Action, payload: Any) -> None:
    allowed: dict[str, set[str]] = {
        "client_tool": {"supply", "abort"},
        "uncertain": {"rerun", "supply", "abort", "continue"},
    }
    ok = allowed.get(item.reason, {"continue", "abort"})
    if action not in ok:
        raise TetherError(f"{action!r} does not answer a {item.reason} item; use one of {sorted(ok)}")
    if action == "supply" and payload is None:
        raise TetherError(f"'supply' needs the result to give {item.name or item.id}")


# -- the default service, and running without an event loop ------------------------------------

_default: RunsService | None = None


def open_service(url: str | None = None) -> RunsService:
    """A service on the store at `url` (default: TETHER_DATABASE_URL, else the SQLite file in TETHER_HOME)."""
    from tether.adapters.store.sql import open_store

    return RunsService(open_store(url))


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
