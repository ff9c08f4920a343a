"""The run's steps (model calls and tool calls, numbered 1..N), derived from its records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tether.domain.records import Decision, ModelCalled, Record, ToolFinished, ToolStarted
from tether.domain.usage import Usage


@dataclass(slots=True)
class Step:
    number: int
    type: Literal["model", "tool"]
    status: Literal["in_progress", "completed", "failed", "pending"] = "completed"
    # model steps
    text: str | None = None
    tool_calls: list[tuple[str, str, str]] = field(default_factory=list)  # (call id, name, arguments)
    usage: Usage | None = None
    cost_usd: float | None = None
    # tool steps
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    result: str | None = None
    error: str | None = None
    attempts: int = 0
    supplied_by: str | None = None  # a decision supplied this result instead of a live call
    duration_s: float = 0.0
    reused: bool = False
    started_at: float = 0.0
    finished_at: float | None = None


def steps_of(records: list[Record]) -> list[Step]:
    steps: dict[int, Step] = {}
    by_call: dict[str, Step] = {}
    for r in records:
        p = r.payload
        if isinstance(p, ModelCalled):
            resp = p.response
            steps[p.step] = Step(p.step, "model", text=resp.text,
                                 tool_calls=[(c.id, c.name, c.arguments) for c in resp.tool_calls],
                                 usage=resp.usage, cost_usd=p.cost_usd, duration_s=p.duration_s,
                                 reused=p.reused, started_at=r.ts - p.duration_s, finished_at=r.ts)
            for i, c in enumerate(resp.tool_calls):
                s = Step(p.step + 1 + i, "tool", "pending", call_id=c.id, name=c.name, arguments=c.arguments,
                         started_at=r.ts)
                steps[s.number] = by_call[c.id] = s
        elif isinstance(p, ToolStarted):
            s = by_call[p.call_id]
            s.status, s.attempts, s.started_at = "in_progress", p.attempt, r.ts
        elif isinstance(p, ToolFinished):
            s = by_call[p.call_id]
            s.status = "failed" if p.error is not None else "completed"
            s.result, s.error, s.duration_s, s.reused, s.finished_at = (
                p.result, p.error, p.duration_s, p.reused, r.ts)
        elif isinstance(p, Decision) and p.action in ("supply", "skip") and p.item_id in by_call:
            s = by_call[p.item_id]
            s.status, s.result, s.supplied_by, s.finished_at = "completed", str(p.payload), p.by, r.ts
    return [steps[n] for n in sorted(steps)]
