"""The run index: one row a run, kept by the store beside the log."""

from __future__ import annotations

from dataclasses import dataclass

from tether.domain.records import UNPAUSED, Decision, Finished, ModelCalled, Paused, Record, RunStarted, RunStatus


@dataclass(slots=True)
class RunInfo:
    id: str
    status: RunStatus
    agent_name: str
    model: str
    created_at: float
    updated_at: float
    thread_id: str | None = None
    parent_run_id: str | None = None
    pause_id: str | None = None
    lease_owner: str | None = None
    lease_expires: float | None = None
    last_seq: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    output: str | None = None  # the final answer (or error), once finished


def released_status(status: RunStatus) -> RunStatus:
    """A run's status once its owner gives the lease back without pausing or finishing it (it was
    interrupted): nothing advances it, so it waits, queued, for `resume`."""
    return RunStatus.QUEUED if status == RunStatus.RUNNING else status


def shown_status(logged: RunStatus, row: RunStatus | None) -> RunStatus:
    """The status every view of a run shows (show, list, the API), from its log and its row.

    The log says whether a run is paused or over. Whether an active run is `running` (an actor
    recorded progress since it started, was answered or taken over) or `queued` (waiting for
    one: new, answered, or interrupted) only the row says; the fold of the log calls both running.
    """
    if logged in UNPAUSED and row in UNPAUSED:
        return row
    return logged


def info_from_start(record: Record, now: float) -> RunInfo:
    p = record.payload
    assert isinstance(p, RunStarted), "a run begins with its run_started record"
    return RunInfo(
        id=record.run_id,
        status=RunStatus.QUEUED,
        agent_name=p.agent.name,
        model=p.agent.model,
        created_at=record.ts,
        updated_at=now,
        thread_id=p.thread_id,
        parent_run_id=p.fork.parent_run_id if p.fork else None,
    )


def update_info(info: RunInfo, record: Record) -> None:
    """How a record changes the run's index row (one implementation for every store)."""
    p = record.payload
    info.last_seq = record.seq
    info.updated_at = record.ts
    if isinstance(p, ModelCalled):
        info.input_tokens += p.response.usage.input_tokens
        info.output_tokens += p.response.usage.output_tokens
        if p.cost_usd is not None:
            info.cost_usd = (info.cost_usd or 0.0) + p.cost_usd
        if info.status != RunStatus.RUNNING:
            info.status = RunStatus.RUNNING
    elif isinstance(p, Paused):
        info.status, info.pause_id = RunStatus.PAUSED, p.pause_id
        info.lease_owner = info.lease_expires = None  # a paused run holds no lease
    elif isinstance(p, Decision):
        info.status, info.pause_id = RunStatus.QUEUED, None
    elif isinstance(p, Finished):
        info.status, info.pause_id = p.status, None
        info.lease_owner = info.lease_expires = None
        info.output = p.output if p.output is not None else p.error
        info.cost_usd = p.cost_usd
