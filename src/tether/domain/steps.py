"""The run's steps (model calls and tool calls, numbered 1..N), derived from its records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tether.domain.decisions import Effects, apply_answer
from tether.domain.messages import ToolCall
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
    edited: bool = False  # a decision edited its result (supplied_by says who)
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
        elif isinstance(p, Decision):
            apply_answer(p, _StepsEffects(steps, by_call, r.ts))
    return [steps[n] for n in sorted(steps)]


class _StepsEffects(Effects):
    """What an answer shows in the steps: a supplied, denied or edited result, edited arguments,
    an edited response (its tool calls replace the old ones), an edited answer."""

    def __init__(self, steps: dict[int, Step], by_call: dict[str, Step], ts: float) -> None:
        self.steps, self.by_call, self.ts = steps, by_call, ts

    def set_result(self, call_id: str, result: str, by: str, *, edited: bool = False) -> None:
        s = self.by_call.get(call_id)
        if s is not None:
            s.status, s.result, s.error, s.supplied_by, s.edited = "completed", result, None, by, edited
            if not edited:
                s.finished_at = self.ts

    def set_error(self, call_id: str, error: str, by: str) -> None:
        s = self.by_call.get(call_id)
        if s is not None:
            s.status, s.error, s.supplied_by, s.finished_at = "failed", error, by, self.ts

    def set_arguments(self, call_id: str, arguments: str) -> None:
        s = self.by_call.get(call_id)
        if s is not None:
            s.arguments = arguments

    def set_response(self, step: int | None, text: str | None, calls: list[ToolCall]) -> None:
        model = self.steps.get(step) if step is not None else None
        if model is None:
            return
        for old_id, _, _ in model.tool_calls:
            old = self.by_call.pop(old_id, None)
            if old is not None:
                self.steps.pop(old.number, None)
        model.text = text
        model.tool_calls = [(c.id, c.name, c.arguments) for c in calls]
        for i, c in enumerate(calls):
            t = Step(model.number + 1 + i, "tool", "pending", call_id=c.id, name=c.name, arguments=c.arguments,
                     started_at=self.ts)
            self.steps[t.number] = self.by_call[c.id] = t

    def set_output(self, text: str) -> None:
        if self.steps:
            self.steps[max(self.steps)].text = text
