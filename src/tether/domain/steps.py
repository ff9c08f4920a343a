"""The run's steps (model calls and tool calls, numbered 1..N), derived from its records."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

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
        elif isinstance(p, Decision):
            _apply_decision(p, r.ts, steps, by_call)
    return [steps[n] for n in sorted(steps)]


def _apply_decision(d: Decision, ts: float, steps: dict[int, Step], by_call: dict[str, Step]) -> None:
    """Show what an answer changed: a supplied or edited result, edited arguments, an edited response."""
    payload = d.payload if isinstance(d.payload, dict) else {}
    s = by_call.get(d.item_id)
    if d.action in ("supply", "skip") and s is not None:
        s.status, s.result, s.error, s.supplied_by, s.finished_at = "completed", _text(d.payload), None, d.by, ts
    elif d.action == "deny" and s is not None:
        s.status, s.error, s.supplied_by, s.finished_at = "failed", f"denied: {d.payload}", d.by, ts
    elif "arguments" in payload and s is not None:
        s.arguments = payload["arguments"]
    elif d.action == "edit" and "result" in payload and s is not None:
        s.status, s.result, s.error, s.supplied_by = "completed", _text(payload["result"]), None, d.by
    elif d.action == "edit" and "response" in payload:
        number = int(d.item_id.rsplit(":", 1)[1])
        model = steps[number]
        for old_id, _, _ in model.tool_calls:
            old = by_call.pop(old_id, None)
            if old is not None:
                steps.pop(old.number, None)
        calls = payload["response"].get("tool_calls", [])
        model.text = payload["response"].get("text")
        model.tool_calls = [(c["id"], c["name"], c["arguments"]) for c in calls]
        for i, c in enumerate(calls):
            t = Step(number + 1 + i, "tool", "pending", call_id=c["id"], name=c["name"], arguments=c["arguments"],
                     started_at=ts)
            steps[t.number] = by_call[c["id"]] = t
    elif d.action == "edit" and "output" in payload and steps:
        steps[max(steps)].text = _text(payload["output"])


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
