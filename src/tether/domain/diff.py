"""Where two runs part ways: their steps paired by number, and the first step that differs.

Pure: it reads two runs' records and touches nothing else. Model steps are compared by the
request fingerprint and the response (text, and the names and arguments of the tool calls; never
the Tether-minted call ids, which differ in every run); tool steps by name, arguments and result or
error. Durations, timestamps, ids, tokens and cost are shown but never make steps differ.

Each side's totals are split into live and reused steps: a step copied from a parent run (by a fork
or a full replay) shows the tokens and cost it had, but its run did not spend them again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tether.domain.records import Finished, ModelCalled, Record, RunStatus
from tether.domain.steps import DONE, Step, StepStatus, steps_of
from tether.domain.usage import Usage

IDENTICAL = "the runs took the same steps"


@dataclass(slots=True)
class StepSummary:
    """One side of a diff row: a step as far as the diff cares."""

    number: int
    type: Literal["model", "tool"]
    status: StepStatus = StepStatus.COMPLETED
    # model steps
    fingerprint: str | None = None
    text: str | None = None
    tool_calls: list[tuple[str, str]] = field(default_factory=list)  # (name, arguments); no call ids
    usage: Usage | None = None
    cost_usd: float | None = None  # None: price unknown (or a tool step)
    # tool steps
    name: str | None = None
    arguments: str | None = None
    result: str | None = None
    error: str | None = None
    supplied_by: str | None = None  # a decision supplied the result instead of a live call
    duration_s: float = 0.0
    reused: bool = False  # copied from a parent run's log by a fork or a full replay

    @property
    def live(self) -> bool:
        return not self.reused

    @property
    def tokens(self) -> int:
        return self.usage.total_tokens if self.usage is not None else 0


@dataclass(slots=True)
class DiffRow:
    step: int
    a: StepSummary | None  # None: run A has no such step
    b: StepSummary | None
    same: bool
    reason: str = ""  # why the row differs ("" when it is the same)
    # what differs, for highlighting: "step", "type", "fingerprint", "text", "tool_calls", "name",
    # "arguments", "result"
    differs: tuple[str, ...] = ()


@dataclass(slots=True)
class Totals:
    """What one side's steps used, split into live steps and steps reused from a parent run.

    A cost is None when some step of that part has no known price (as in `RunState.cost_usd`).
    """

    live_steps: int = 0
    reused_steps: int = 0
    live_usage: Usage = field(default_factory=Usage)
    reused_usage: Usage = field(default_factory=Usage)
    live_cost_usd: float | None = 0.0
    reused_cost_usd: float | None = 0.0

    @property
    def live_tokens(self) -> int:
        return self.live_usage.total_tokens

    @property
    def reused_tokens(self) -> int:
        return self.reused_usage.total_tokens

    def add(self, s: StepSummary) -> None:
        if s.reused:
            self.reused_steps += 1
        else:
            self.live_steps += 1
        if s.type != "model":
            return
        if s.reused:
            if s.usage is not None:
                self.reused_usage.add(s.usage)
            if self.reused_cost_usd is not None:
                self.reused_cost_usd = None if s.cost_usd is None else self.reused_cost_usd + s.cost_usd
        else:
            if s.usage is not None:
                self.live_usage.add(s.usage)
            if self.live_cost_usd is not None:
                self.live_cost_usd = None if s.cost_usd is None else self.live_cost_usd + s.cost_usd


@dataclass(slots=True)
class RunDiff:
    first_divergence: int | None  # the first step that differs; None when identical step for step
    reason: str  # why it differs there, or IDENTICAL
    rows: list[DiffRow]
    totals_a: Totals
    totals_b: Totals
    status_a: RunStatus | None = None  # how each run ended (None: not finished)
    status_b: RunStatus | None = None

    @property
    def identical(self) -> bool:
        return self.first_divergence is None


def summarize(records: list[Record]) -> list[StepSummary]:
    """A run's steps, in order, as the diff sees them."""
    fingerprints = {r.payload.step: r.payload.fingerprint for r in records if isinstance(r.payload, ModelCalled)}
    return [_summary(s, fingerprints.get(s.number)) for s in steps_of(records)]


def _summary(s: Step, fingerprint: str | None) -> StepSummary:
    if s.type == "model":
        return StepSummary(s.number, "model", s.status, fingerprint=fingerprint, text=s.text,
                           tool_calls=[(name, args) for _, name, args in s.tool_calls], usage=s.usage,
                           cost_usd=s.cost_usd, duration_s=s.duration_s, reused=s.reused)
    return StepSummary(s.number, "tool", s.status, name=s.name, arguments=s.arguments, result=s.result,
                       error=s.error, supplied_by=s.supplied_by, duration_s=s.duration_s, reused=s.reused)


def compare_steps(a: StepSummary, b: StepSummary) -> tuple[str, tuple[str, ...]]:
    """Why two steps with the same number differ ("" if they do not), and which parts differ."""
    if a.type != b.type:
        return f"step type differs (A: {a.type} call, B: {b.type} call)", ("type",)
    if a.type == "model":
        if a.fingerprint != b.fingerprint:
            parts = ["fingerprint"]
            parts += ["text"] if a.text != b.text else []
            parts += ["tool_calls"] if a.tool_calls != b.tool_calls else []
            return "request fingerprint differs", tuple(parts)
        if a.text != b.text or a.tool_calls != b.tool_calls:
            parts = (["text"] if a.text != b.text else []) + (["tool_calls"] if a.tool_calls != b.tool_calls else [])
            return "model output differs", tuple(parts)
        return "", ()
    if a.name != b.name:
        return "tool name differs", ("name", "arguments", "result")
    if a.arguments != b.arguments:
        return "tool arguments differ", ("arguments",) + (("result",) if _outcome(a) != _outcome(b) else ())
    if _outcome(a) != _outcome(b):
        return "tool result differs", ("result",)
    return "", ()


def _outcome(s: StepSummary) -> tuple[str, str | None, str | None]:
    return ("done" if s.status in DONE else s.status), s.result, s.error


def diff_runs(a_records: list[Record], b_records: list[Record]) -> RunDiff:
    """Pair the steps of run A and run B by number and find the first one that differs."""
    a_steps = {s.number: s for s in summarize(a_records)}
    b_steps = {s.number: s for s in summarize(b_records)}
    rows: list[DiffRow] = []
    totals_a, totals_b = Totals(), Totals()
    for n in sorted(a_steps.keys() | b_steps.keys()):
        a, b = a_steps.get(n), b_steps.get(n)
        if a is not None:
            totals_a.add(a)
        if b is not None:
            totals_b.add(b)
        differs: tuple[str, ...]
        if a is None or b is None:
            reason, differs = f"run {'A' if a is None else 'B'} has no step {n}", ("step",)
        else:
            reason, differs = compare_steps(a, b)
        rows.append(DiffRow(n, a, b, same=not reason, reason=reason, differs=differs))
    first = next((r for r in rows if not r.same), None)
    return RunDiff(first.step if first else None, first.reason if first else IDENTICAL, rows,
                   totals_a, totals_b, _status(a_records), _status(b_records))


def _status(records: list[Record]) -> RunStatus | None:
    for r in reversed(records):
        if isinstance(r.payload, Finished):
            return r.payload.status
    return None
