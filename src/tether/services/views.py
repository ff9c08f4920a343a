"""A run as the user sees it: `Run`, what `Agent.run` and every `RunsService` operation return."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tether.domain.agents import AgentSnapshot
from tether.domain.messages import Message
from tether.domain.records import PendingItem, Record, RunStarted
from tether.domain.state import RunState
from tether.domain.steps import Step, steps_of
from tether.domain.usage import Usage


@dataclass(slots=True)
class Run:
    """A run as the user sees it: where it stands, its answer or its pending items.

    `status` is one of queued, running, paused, completed, failed, cancelled, incomplete; `output`
    is the answer of a completed run (and `structured` its parsed value when the agent has an
    output schema), `error` says why a run failed, `pending` holds what a paused run waits for.
    """

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

    @property
    def fork_warnings(self) -> list[str]:
        """For a fork: the parent's non-idempotent calls at or after the fork step (done already)."""
        first = self.records[0].payload if self.records else None
        return list(first.metadata.get("fork_warnings", [])) if isinstance(first, RunStarted) else []

    def __repr__(self) -> str:
        what = self.output if self.status == "completed" else (self.error or [i.reason for i in self.pending])
        return f"<Run {self.id} {self.status}: {what!r}>"


RunView = Run  # its name before 0.2; kept so code written for it still works


def view_of(s: RunState, records: list[Record]) -> Run:
    pending = list(s.pause.items) if s.pause else []
    return Run(s.run_id, s.status, s.output, s.structured, s.error, pending,
                   s.pause.pause_id if s.pause else None, s.usage, s.cost_usd, s.thread_id, s.agent,
                   s.messages, records)
