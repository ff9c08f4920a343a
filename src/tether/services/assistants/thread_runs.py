"""A run of a thread, as the Assistants API sees it: its stored settings, its records and their fold.

Everything a client sees of a run is derived from committed records (the run contract): an
assistant message is a model step's text. Ids of derived objects are deterministic (run id +
step), so every process and every request agrees on them, and they sort after the messages that
started the run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from tether.domain.objects import StoredObject
from tether.domain.records import Finished, ModelCalled, PauseReason, PendingItem, Record, RunStarted, RunStatus
from tether.domain.state import RunState
from tether.domain.steps import Step, steps_of
from tether.services.assistants.documents import MessageFields, RunSettings

# The Assistants API's word for how a run ended (today the same words as Tether's, by choice).
_TERMINAL_STATUS = {RunStatus.COMPLETED: "completed", RunStatus.FAILED: "failed", RunStatus.CANCELLED: "cancelled",
                    RunStatus.INCOMPLETE: "incomplete"}


def derived_id(prefix: str, run_id: str, run_ts: float, step: int, part: int) -> str:
    """A time-ordered id for an object derived from step `step` of a run (same width as `new_id`)."""
    micros = int(run_ts * 1_000_000) + step * 4 + part
    digest = hashlib.sha256(f"{run_id}:{step}:{part}".encode()).hexdigest()[:12]
    return f"{prefix}_{micros:014x}{digest}"


def message_id(run_id: str, run_ts: float, step: int) -> str:
    return derived_id("msg", run_id, run_ts, step, 1)


def step_ids(run_id: str, run_ts: float, step: int) -> tuple[str, str]:
    """The ids of a model step's message_creation step and tool_calls step."""
    return derived_id("step", run_id, run_ts, step, 2), derived_id("step", run_id, run_ts, step, 3)


def text_content(text: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": {"value": text, "annotations": []}}]


@dataclass(slots=True)
class ThreadMessage:
    """A message of a thread, typed: a stored one, or one a run wrote."""

    id: str
    created_at: float
    thread_id: str | None
    fields: MessageFields

    @classmethod
    def of_row(cls, row: StoredObject) -> ThreadMessage:
        return cls(row.id, row.created_at, row.parent_id, MessageFields.model_validate(row.data))

    def row(self, tenant: str) -> StoredObject:
        return StoredObject(self.id, "message", tenant, self.created_at, self.fields.stored(), self.thread_id)


class ThreadRun:
    """One run's stored row (its settings), records and fold, with what the API derives from them."""

    def __init__(self, row: StoredObject, records: list[Record], state: RunState) -> None:
        self.row, self.records, self.state = row, records, state
        first = records[0]
        assert isinstance(first.payload, RunStarted)
        self.run_ts = first.ts
        self.steps = steps_of(records)
        self.settings = RunSettings.model_validate(row.data)

    @property
    def id(self) -> str:
        return self.row.id

    @property
    def thread_id(self) -> str | None:
        return self.row.parent_id

    def set_row(self, row: StoredObject) -> None:
        """The run's row as stored now (its metadata may have changed)."""
        self.row, self.settings = row, RunSettings.model_validate(row.data)

    def add(self, record: Record) -> None:
        """One more record of the run (a live stream follows the run this way)."""
        self.records.append(record)
        self.state.apply(record)
        self.steps = steps_of(self.records)

    def model_steps(self) -> list[tuple[Step, float]]:
        """Each model step with the time its answer was recorded."""
        times = {r.payload.step: r.ts for r in self.records if isinstance(r.payload, ModelCalled)}
        return [(s, times.get(s.number, self.run_ts)) for s in self.steps if s.type == "model"]

    def finished(self) -> tuple[Finished, float] | None:
        last = self.records[-1]
        return (last.payload, last.ts) if isinstance(last.payload, Finished) else None

    def thread_messages(self) -> list[ThreadMessage]:
        """The assistant messages this run wrote: one per model step with text."""
        out = []
        end = self.finished()
        last_model_step = max((s.number for s in self.steps if s.type == "model"), default=0)
        for s, ts in self.model_steps():
            if not s.text:
                continue
            incomplete = end is not None and end[0].status == RunStatus.INCOMPLETE and s.number == last_model_step
            fields = MessageFields(
                role="assistant", content=text_content(s.text), assistant_id=self.settings.assistant_id,
                run_id=self.id, status="incomplete" if incomplete else "completed",
                completed_at=None if incomplete else int(ts), incomplete_at=int(ts) if incomplete else None,
                incomplete_details={"reason": "max_tokens"} if incomplete else None)
            out.append(ThreadMessage(message_id(self.id, self.run_ts, s.number), ts, self.thread_id, fields))
        return out

    def client_calls(self) -> list[PendingItem]:
        """The client tool calls the run waits for (`required_action`)."""
        pause = self.state.pause
        return [] if pause is None else [i for i in pause.items if i.reason == PauseReason.CLIENT_TOOL]

    def waits_for_client(self) -> bool:
        pause = self.state.pause
        return pause is not None and all(i.reason == PauseReason.CLIENT_TOOL for i in pause.items)

    def status(self, *, queued: bool = False, cancelling: bool = False) -> str:
        """The run's status as the Assistants API names it. `queued`: created or answered, and no
        worker has taken it yet; `cancelling`: a cancel was asked for. A run paused for another
        reason than its client's tools (a breakpoint) shows as in_progress."""
        end = self.finished()
        if end is not None:
            return _TERMINAL_STATUS.get(end[0].status, "failed")
        if cancelling:
            return "cancelling"
        if self.state.pause is not None:
            return "requires_action" if self.waits_for_client() else "in_progress"
        return "queued" if queued else "in_progress"
