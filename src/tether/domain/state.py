"""A run's state as a fold of its records.

Executors keep one `RunState` in memory and `apply` every record they append, so a step never
re-reads the log; resuming folds the stored records into a fresh state. Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from tether.domain.agents import AgentSnapshot
from tether.domain.messages import Message, TextPart, ToolCall
from tether.domain.records import (
    Decision,
    Finished,
    ForkOrigin,
    ModelCalled,
    Paused,
    Record,
    RunStarted,
    RunStatus,
    ToolFinished,
    ToolStarted,
)
from tether.domain.usage import Usage


@dataclass(slots=True)
class CallState:
    """One tool call of the current batch."""

    step: int
    call: ToolCall
    started: bool = False
    attempts: int = 0
    result: str | None = None
    error: str | None = None
    done: bool = False

    @property
    def text(self) -> str:
        """What the model sees for this call."""
        return f"Error: {self.error}" if self.error is not None else (self.result or "")


@dataclass(slots=True)
class RunState:
    run_id: str
    status: RunStatus = "queued"
    agent: AgentSnapshot | None = None
    thread_id: str | None = None
    fork: ForkOrigin | None = None
    messages: list[Message] = field(default_factory=list)
    input_count: int = 0  # messages[:input_count] are the run's input
    batch: list[CallState] = field(default_factory=list)  # tool calls of the latest model response
    pause: Paused | None = None
    decisions: list[Decision] = field(default_factory=list)  # decisions on the current pause
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = 0.0  # None once any step's price is unknown
    model_calls: int = 0
    output_rejections: int = 0
    last_step: int = 0
    last_seq: int = 0
    started_at: float = 0.0
    output: str | None = None
    structured: object = None
    error: str | None = None
    _hash: object = None  # running sha256 over `messages`, for request fingerprints

    # -- the fold -------------------------------------------------------------------------------

    def apply(self, record: Record) -> None:
        self.last_seq = record.seq
        p = record.payload
        if isinstance(p, ModelCalled):
            self._on_model(p)
        elif isinstance(p, ToolStarted):
            c = self.call(p.call_id)
            c.started, c.attempts = True, p.attempt
        elif isinstance(p, ToolFinished):
            c = self.call(p.call_id)
            c.result, c.error, c.done = p.result, p.error, True
            self._close_batch_if_done()
        elif isinstance(p, RunStarted):
            self.agent, self.thread_id, self.fork = p.agent, p.thread_id, p.fork
            self.started_at = record.ts
            self.status = "running"
            self._hash = hashlib.sha256()
            for m in p.input:
                self._add_message(m)
            self.input_count = len(p.input)
        elif isinstance(p, Paused):
            self.pause, self.decisions, self.status = p, [], "paused"
        elif isinstance(p, Decision):
            self._on_decision(p)
        elif isinstance(p, Finished):
            self.status, self.output, self.structured, self.error = p.status, p.output, p.structured, p.error

    def _on_model(self, p: ModelCalled) -> None:
        r = p.response
        self.model_calls += 1
        self.usage.add(r.usage)
        if self.cost_usd is not None:
            self.cost_usd = None if p.cost_usd is None else self.cost_usd + p.cost_usd
        self._add_message(Message.assistant(r.text, r.tool_calls))
        if p.rejected is not None:
            self.output_rejections += 1
            self._add_message(Message.user(p.rejected))
        self.batch = [CallState(p.step + 1 + i, c) for i, c in enumerate(r.tool_calls)]
        self.last_step = p.step + len(r.tool_calls)

    def _on_decision(self, d: Decision) -> None:
        self.decisions.append(d)
        if d.action in ("supply", "skip"):
            c = self.call(d.item_id)
            c.result, c.error, c.done = str(d.payload), None, True
        elif d.action == "abort":
            self.status = "running"  # the executor finishes it as cancelled, closing open calls
        elif d.action == "rerun":
            self.call(d.item_id).started = False
        assert self.pause is not None
        if len(self.decisions) >= len(self.pause.items):
            self.pause, self.status = None, "running"
            self._close_batch_if_done()

    def _close_batch_if_done(self) -> None:
        # Tool results join the conversation in call order, once the whole batch is answered,
        # so the history (and its fingerprint) does not depend on which call finished first.
        if self.batch and all(c.done for c in self.batch) and self.pause is None:
            for c in self.batch:
                self._add_message(Message.tool(c.call.id, c.call.name, c.text))
            self.batch = []

    def _add_message(self, m: Message) -> None:
        self.messages.append(m)
        h = self._hash
        assert h is not None
        # Tether-minted call ids are left out: a replay mints new ones for the same conversation.
        parts = [m.role, m.name or "", *(p.text if isinstance(p, TextPart) else repr(p) for p in m.content)]
        parts += [f"{c.name}\x1f{c.arguments}" for c in m.tool_calls]
        h.update("\x1e".join(parts).encode() + b"\x1d")  # type: ignore[attr-defined]

    # -- questions the executor asks ------------------------------------------------------------

    def call(self, call_id: str) -> CallState:
        for c in self.batch:
            if c.call.id == call_id:
                return c
        raise KeyError(f"no tool call {call_id!r} in the current batch of run {self.run_id}")

    @property
    def next_step(self) -> int:
        return self.last_step + 1

    @property
    def finished(self) -> bool:
        return self.status in ("completed", "failed", "cancelled", "incomplete")

    def conversation_hash(self) -> hashlib._Hash:  # type: ignore[name-defined]
        return self._hash.copy()  # type: ignore[attr-defined]

    @property
    def last_message(self) -> Message | None:
        return self.messages[-1] if self.messages else None

    def final_text(self) -> str | None:
        m = self.last_message
        return m.text if m is not None and m.role == "assistant" else None


def fold(run_id: str, records: list[Record]) -> RunState:
    state = RunState(run_id)
    for r in records:
        state.apply(r)
    return state


