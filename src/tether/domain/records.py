"""The run log: an append-only sequence of records (see the run contract in DESIGN.md).

A run's state is a fold of these records (`tether.domain.state`). Payloads are Tether's own
types; the store serialises them, the executor never reads them back while it runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from tether.domain.agents import AgentSnapshot
from tether.domain.answers import Action as Action  # re-exported: the actions are named in answers.py
from tether.domain.answers import TaggedAnswer
from tether.domain.breakpoints import Stop
from tether.domain.errors import InvalidRequest
from tether.domain.messages import Message
from tether.domain.models import ModelResponse
from tether.domain.usage import Usage

# 2: a decision's answer is typed (domain/answers.py); codec.py reads version 1. `RunStarted.batch`
# came later without a new version: old records lack it and read as None, and a reader that predates
# it ignores it, so old and new readers both read both.
FORMAT_VERSION = 2


class RunStatus(StrEnum):
    """Where a run stands (DESIGN.md, "Statuses"). A member is its value as a string, and the value
    is what stores, records and the wire hold, so comparing with a member needs no conversion."""

    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INCOMPLETE = "incomplete"


TERMINAL: frozenset[RunStatus] = frozenset(
    {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.INCOMPLETE})
ACTIVE: frozenset[RunStatus] = frozenset({RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.PAUSED})


def as_status(value: object) -> RunStatus:
    """`value` (text from a user or a request) as a RunStatus; InvalidRequest says which there are."""
    if isinstance(value, RunStatus):
        return value
    if isinstance(value, str) and value in _STATUS_VALUES:
        return RunStatus(value)
    raise InvalidRequest(f"unknown status {value!r}; use one of {', '.join(_STATUS_VALUES)}", "status")


_STATUS_VALUES = [s.value for s in RunStatus]
# Active and not paused: an actor advances the run or it waits for one (the log alone calls both running).
UNPAUSED: frozenset[RunStatus] = frozenset({RunStatus.QUEUED, RunStatus.RUNNING})


class PauseReason(StrEnum):
    """Why a pending item waits (DESIGN.md, "the log": a `paused` record's items)."""

    BREAKPOINT = "breakpoint"
    APPROVAL = "approval"
    CLIENT_TOOL = "client_tool"
    BUDGET = "budget"
    UNCERTAIN = "uncertain"


@dataclass(slots=True)
class ForkOrigin:
    parent_run_id: str
    at_step: int


@dataclass(slots=True)
class BatchRef:
    """The batch case a run is an attempt of."""

    batch_id: str
    case_key: str
    attempt: int = 1


@dataclass(slots=True)
class RunStarted:
    agent: AgentSnapshot
    input: list[Message]  # the whole conversation the run starts from (thread history + new input)
    thread_id: str | None = None
    fork: ForkOrigin | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    # The shared budgets (ids) that cover the run, besides its own limits; older records have none.
    budgets: list[str] = field(default_factory=list)
    batch: BatchRef | None = None  # the batch case this run is an attempt of, if any
    kind: Literal["run_started"] = "run_started"


@dataclass(slots=True)
class ModelCalled:
    step: int
    fingerprint: str
    response: ModelResponse
    cost_usd: float | None = None  # None: price unknown (not zero)
    duration_s: float = 0.0
    reused: bool = False  # served from a parent's log by a fork or a full replay
    rejected: str | None = None  # why the answer was sent back (it failed the output schema)
    final: bool = False  # the last call without tools, after max_steps with policy "finish"
    kind: Literal["model_call"] = "model_call"


@dataclass(slots=True)
class ToolStarted:
    step: int
    call_id: str
    name: str
    arguments: str
    attempt: int = 1
    kind: Literal["tool_started"] = "tool_started"


@dataclass(slots=True)
class ToolFinished:
    step: int
    call_id: str
    name: str
    result: str | None = None  # what the model sees when the call succeeded
    error: str | None = None  # what the model sees when it did not
    duration_s: float = 0.0
    reused: bool = False
    kind: Literal["tool_finished"] = "tool_finished"


@dataclass(slots=True)
class PendingItem:
    id: str  # unique within the pause, opaque (read call_id, stop and step instead of parsing it)
    reason: PauseReason
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    detail: str = ""
    stop: Stop | None = None  # where in the loop: before_tool, after_model, on_budget, ...
    step: int | None = None
    breakpoint_id: str | None = None  # the breakpoint that hit, if one did

    def __post_init__(self) -> None:  # an item made with plain strings holds members too
        self.reason = PauseReason(self.reason)
        if self.stop is not None:
            self.stop = Stop(self.stop)

    @property
    def key(self) -> str:
        """Names this stop of this step or call: once answered, it does not stop the run again."""
        return f"{self.stop or self.reason}:{self.id}"


@dataclass(slots=True)
class Paused:
    pause_id: str
    items: list[PendingItem]
    kind: Literal["paused"] = "paused"


@dataclass(slots=True)
class Decision:
    """One answer to one pending item. A fork's edits are decisions with pause id "fork" (there
    is no pause to answer); the fields after `by` name what the answer concerns, so nothing has
    to be read back out of the item's id."""

    pause_id: str
    item_id: str
    answer: TaggedAnswer
    by: str = "api"
    call_id: str | None = None  # the tool call it concerns, if it concerns one
    step: int | None = None
    stop: Stop | None = None
    kind: Literal["decision"] = "decision"

    def __post_init__(self) -> None:
        if self.stop is not None:
            self.stop = Stop(self.stop)

    @property
    def action(self) -> Action:
        return self.answer.action


@dataclass(slots=True)
class Finished:
    status: RunStatus
    output: str | None = None
    structured: Any = None  # the parsed answer when the agent has an output schema
    error: str | None = None
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = None
    kind: Literal["finished"] = "finished"

    def __post_init__(self) -> None:
        self.status = RunStatus(self.status)


Payload = RunStarted | ModelCalled | ToolStarted | ToolFinished | Paused | Decision | Finished


@dataclass(slots=True)
class Record:
    run_id: str
    seq: int
    ts: float  # unix time, sub-second
    payload: Payload
    v: int = FORMAT_VERSION

    @property
    def kind(self) -> str:
        return self.payload.kind
