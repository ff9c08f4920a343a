"""A run's state as a fold of its records.

Executors keep one `RunState` in memory and `apply` every record they append, so a step never
re-reads the log; resuming folds the stored records into a fresh state. Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any

from tether.domain.agents import AgentSnapshot, Limits
from tether.domain.messages import Message, TextPart, ToolCall, message_from_dict
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
    limits: Limits = field(default_factory=Limits)  # the agent's, as raised by answers to budget pauses
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
            self.started_at = record.ts
            self.status = "running"
            self._hash = hashlib.sha256()
            for m in p.input:
                self._add_message(m)
            self.input_count = len(p.input)
        elif isinstance(p, Paused):
            self.pause, self.decisions, self.status = p, [], "paused"
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
        a, payload = d.action, d.payload if isinstance(d.payload, dict) else {}
        if a in ("supply", "skip"):
            self._set_result(d.item_id, result=_text(d.payload))
        elif a == "deny":
            reason = d.payload if isinstance(d.payload, str) else payload.get("message")
            self._set_result(d.item_id, error=f"a person denied this call: {reason or 'no reason given'}")
        elif a == "rerun":
            self.call(d.item_id).started = False
        elif a == "abort":
            self.aborted = f"aborted by {d.by}"  # the executor finishes it as cancelled, closing open calls
        elif a == "step":
            self.stepping = True
        elif a == "approve":
            self.approved.add(d.item_id)
            if "arguments" in payload:
                self._set_arguments(d.item_id, payload["arguments"])
        elif a == "continue" and "limits" in payload:
            for name, value in payload["limits"].items():
                setattr(self.limits, name, value)
        elif a == "edit":
            self._edit(item.stop if item is not None else payload.get("stop"), d.item_id, payload)
        if d.pause_id == "fork":
            return
        self.decisions.append(d)
        assert self.pause is not None
        if len(self.decisions) >= len(self.pause.items):
            self.pause, self.status = None, "running"
            self.close_batch()

    def _item(self, d: Decision) -> PendingItem | None:
        if self.pause is None or d.pause_id != self.pause.pause_id:
            return None
        return next((i for i in self.pause.items if i.id == d.item_id), None)

    def _edit(self, stop: str | None, item_id: str, payload: dict[str, Any]) -> None:
        """Change what is pending; the run's history changes from here on."""
        if "messages" in payload:  # before_model: the conversation the next request sends
            self.close_batch()  # the results it replaces must not join it afterwards
            self.messages = [message_from_dict(m) for m in payload["messages"]]
            self._rehash()
        elif "response" in payload:  # after_model: the response, before its tool calls run
            r = payload["response"]
            calls = [ToolCall(c["id"], c["name"], c.get("arguments") or "{}") for c in r.get("tool_calls", [])]
            step = self.last_step - len(self.batch)  # the model call's own step
            self.messages[-1] = Message.assistant(r.get("text"), calls)
            self.batch = [CallState(step + 1 + i, c) for i, c in enumerate(calls)]
            self.last_step = step + len(calls)
            self._rehash()
        elif "arguments" in payload:  # before_tool: one call's arguments
            self._set_arguments(item_id, payload["arguments"])
        elif "result" in payload:  # after_tool / on_error: a result before the model sees it
            self._set_result(item_id, result=_text(payload["result"]))
        elif "output" in payload:  # before_finish: the answer
            self.messages[-1] = Message.assistant(_text(payload["output"]))
            self._rehash()
        else:
            raise ValueError(f"an edit at {stop} needs messages, response, arguments, result or output")

    def _set_result(self, call_id: str, *, result: str | None = None, error: str | None = None) -> None:
        c = self.call(call_id)
        c.result, c.error, c.done = result, error, True

    def _set_arguments(self, call_id: str, arguments: Any) -> None:
        c = self.call(call_id)
        text = arguments if isinstance(arguments, str) else json.dumps(arguments)
        new = ToolCall(c.call.id, c.call.name, text, c.call.provider_id)
        # A new object, also in the assistant message: the recorded response stays as it was.
        for m in reversed(self.messages):
            if m.role == "assistant" and any(x.id == new.id for x in m.tool_calls):
                m.tool_calls = [new if x.id == new.id else x for x in m.tool_calls]
                break
        c.call = new
        self._rehash()

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




def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
