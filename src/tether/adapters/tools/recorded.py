"""Tools that answer from a run's log, for a full replay: nothing is called for real."""

from __future__ import annotations

import json
from typing import Any

from tether.domain.answers import Skip, Supply
from tether.domain.errors import ReplayDiverged
from tether.domain.records import Decision, ModelCalled, Record, ToolFinished, ToolStarted
from tether.domain.tools import ToolContext, ToolError, ToolPolicy


class RecordedTool:
    kind = "function"
    cancellable = True

    def __init__(self, name: str, description: str, parameters: dict[str, Any],
                 results: dict[int, tuple[str, str | None, ToolFinished]]) -> None:
        self.name, self.description, self.parameters = name, description, parameters
        self.policy = ToolPolicy(timeout_s=None, idempotent=True)
        self._results = results

    def validate(self, arguments: dict[str, Any]) -> Any:
        return arguments

    async def call(self, validated: Any, ctx: ToolContext) -> Any:
        entry = self._results.get(ctx.step)
        if entry is None or entry[0] != self.name:
            raise ReplayDiverged(ctx.step, f"the recording has no {self.name} call at step {ctx.step}")
        if entry[1] is not None and json.loads(entry[1]) != validated:
            raise ReplayDiverged(ctx.step, f"{self.name} was called with other arguments than recorded")
        finished = entry[2]
        if finished.error is not None:
            raise ToolError(finished.error)
        return finished.result


def recorded_results(records: list[Record]) -> dict[int, tuple[str, str | None, ToolFinished]]:
    """step → (tool name, arguments if it was started, its recorded outcome).

    A result supplied by a decision (a client tool's output, an answered `uncertain` call)
    counts as the call's outcome.
    """
    calls: dict[str, tuple[int, str]] = {}
    args: dict[str, str] = {}
    out: dict[int, tuple[str, str | None, ToolFinished]] = {}
    for r in records:
        p = r.payload
        if isinstance(p, ModelCalled):
            for i, c in enumerate(p.response.tool_calls):
                calls[c.id] = (p.step + 1 + i, c.name)
        elif isinstance(p, ToolStarted):
            args[p.call_id] = p.arguments
        elif isinstance(p, ToolFinished):
            out[p.step] = (p.name, args.get(p.call_id), p)
        elif isinstance(p, Decision) and isinstance(p.answer, Skip | Supply) and p.call_id in calls:
            step, name = calls[p.call_id]
            out[step] = (name, None, ToolFinished(step, p.call_id, name, p.answer.result))
    return out
