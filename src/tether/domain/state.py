"""A run's state as a fold of its records.

Executors keep one `RunState` in memory and `apply` every record they append, so a step never
re-reads the log; resuming folds the stored records into a fresh state. Nothing here does I/O.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field, replace

from tether.domain.agents import AgentSnapshot, Limits
from tether.domain.decisions import Effects, apply_answer
from tether.domain.messages import Message, TextPart, ToolCall
from tether.domain.records import (
    Decision,
    Finished,
    ForkOrigin,
    ModelCalled,
    Paused,
    PendingItem,
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
class RunState(Effects):
    run_id: str
    status: RunStatus = RunStatus.QUEUED
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
    limits: Limits = field(default_factory=Limits)  # the agent's, as raised by answers to budget pauses
    budgets: list[str] = field(default_factory=list)  # the shared budgets covering the run (run_started)
    passed: set[str] = field(default_factory=set)  # PendingItem.key of every stop answered: it won't stop again
    stepping: bool = False  # a "step" answer: the very next stop pauses
    aborted: str | None = None  # an "abort" answer (who gave it): the run ends cancelled
    approved: set[str] = field(default_factory=set)  # call ids a person approved
    breakpoint_hits: dict[str, int] = field(default_factory=dict)
    paused_s: float = 0.0  # time spent paused, which wall-time budgets do not count
    paused_at: float | None = None
    _hash: object = None  # running sha256 over `messages`, for request fingerprints

    # -- the fold -------------------------------------------------------------------------------

    def apply(self, record: Record) -> None:
        self.last_seq = record.seq
        p = record.payload
        if isinstance(p, ModelCalled):
            self.close_batch()
            self._on_model(p)
        elif isinstance(p, ToolStarted):
            c = self.call(p.call_id)
            c.started, c.attempts = True, p.attempt
        elif isinstance(p, ToolFinished):
            c = self.call(p.call_id)
            c.result, c.error, c.done = p.result, p.error, True
        elif isinstance(p, RunStarted):
            self.agent, self.thread_id, self.fork = p.agent, p.thread_id, p.fork
            self.limits = replace(p.agent.limits)
            self.budgets = list(p.budgets)
            self.started_at = record.ts
            self.status = RunStatus.RUNNING
            self._hash = hashlib.sha256()
            for m in p.input:
                self._add_message(m)
            self.input_count = len(p.input)
        elif isinstance(p, Paused):
            self.pause, self.decisions, self.status = p, [], RunStatus.PAUSED
            self.stepping, self.paused_at = False, record.ts
            for item in p.items:
                if item.breakpoint_id is not None:
                    self.breakpoint_hits[item.breakpoint_id] = self.breakpoint_hits.get(item.breakpoint_id, 0) + 1
        elif isinstance(p, Decision):
            if self.paused_at is not None:
                self.paused_s += record.ts - self.paused_at
                self.paused_at = None
            self._on_decision(p)
        elif isinstance(p, Finished):
            self.close_batch()
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
        """Apply one answer. A fork's edits (pause id "fork") apply with no pause to answer."""
        item = self._item(d)
        if item is not None:
            self.passed.add(item.key)
        apply_answer(d, self)
        if d.pause_id == "fork":
            return
        self.decisions.append(d)
        assert self.pause is not None
        if len(self.decisions) >= len(self.pause.items):
            self.pause, self.status = None, RunStatus.RUNNING
            self.close_batch()

    def _item(self, d: Decision) -> PendingItem | None:
        if self.pause is None or d.pause_id != self.pause.pause_id:
            return None
        return next((i for i in self.pause.items if i.id == d.item_id), None)

    # -- what answers change (the Effects that domain/decisions.py `apply_answer` calls) -----------

    def set_result(self, call_id: str, result: str, by: str, *, edited: bool = False) -> None:
        c = self.call(call_id)
        c.result, c.error, c.done = result, None, True

    def set_error(self, call_id: str, error: str, by: str) -> None:
        c = self.call(call_id)
        c.result, c.error, c.done = None, error, True

    def set_arguments(self, call_id: str, arguments: str) -> None:
        c = self.call(call_id)
        new = ToolCall(c.call.id, c.call.name, arguments, c.call.provider_id)
        # A new object, also in the assistant message: the recorded response stays as it was.
        for m in reversed(self.messages):
            if m.role == "assistant" and any(x.id == new.id for x in m.tool_calls):
                m.tool_calls = [new if x.id == new.id else x for x in m.tool_calls]
                break
        c.call = new
        self._rehash()

    def set_response(self, step: int | None, text: str | None, calls: list[ToolCall]) -> None:
        """after_model: the response, before its tool calls run; the history changes from here on."""
        first = self.last_step - len(self.batch)  # the model call's own step
        self.messages[-1] = Message.assistant(text, calls)
        self.batch = [CallState(first + 1 + i, c) for i, c in enumerate(calls)]
        self.last_step = first + len(calls)
        self._rehash()

    def set_messages(self, messages: list[Message]) -> None:
        """before_model: the conversation the next request sends."""
        self.close_batch()  # the results it replaces must not join it afterwards
        self.messages = copy.deepcopy(messages)  # the fold changes its messages; the decision stays
        self._rehash()

    def set_output(self, text: str) -> None:
        self.messages[-1] = Message.assistant(text)
        self._rehash()

    def approve(self, call_id: str) -> None:
        self.approved.add(call_id)

    def rerun(self, call_id: str) -> None:
        self.call(call_id).started = False

    def raise_limits(self, limits: dict[str, int | float | None]) -> None:
        for name, value in limits.items():
            setattr(self.limits, name, value)

    def step(self) -> None:
        self.stepping = True

    def abort(self, by: str) -> None:
        self.aborted = f"aborted by {by}"  # the executor finishes it as cancelled, closing open calls

    def _rehash(self) -> None:
        messages, self.messages = self.messages, []
        self._hash = hashlib.sha256()
        for m in messages:
            self._add_message(m)

    def elapsed_s(self, now: float) -> float:
        """Wall time the run has been active, not counting pauses."""
        return now - self.started_at - self.paused_s

    def close_batch(self) -> None:
        """Tool results join the conversation in call order once the whole batch is answered and
        nothing is paused on it (an `after_tool` stop can still edit a result), so the history and
        its fingerprint do not depend on which call finished first."""
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
    state.close_batch()
    return state
