"""Server-sent events: the Assistants stream of a run, and the debug API's stream of records.

The Assistants stream is built the way the `openai` SDK's `AssistantEventHandler` needs it
(shared/spec, section 4): a message is `created` with empty content before its deltas; deltas
carry only new fragments; a tool step is `created` with no calls, then one delta per call; the
stream ends at a state the client must act on (or a terminal one) with `event: done` /
`data: [DONE]`. While a run waits (e.g. at a breakpoint) the stream sends keep-alive comments.
What to send comes from a run subscription of the services (services/events.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tether.domain.records import Finished, ModelCalled, Paused, Record, RunStatus, ToolFinished
from tether.interfaces.server.wire import RunLog, message_id, step_ids

DONE = "event: done\ndata: [DONE]\n\n"
KEEPALIVE = ": keep-alive\n\n"  # an SSE comment: clients ignore it, proxies see the stream is alive
# The event that says how a run ended, named by the Assistants API.
_FINISHED_EVENT = {RunStatus.COMPLETED: "thread.run.completed", RunStatus.FAILED: "thread.run.failed",
                   RunStatus.CANCELLED: "thread.run.cancelled", RunStatus.INCOMPLETE: "thread.run.incomplete"}


def sse(event: str, data: Any, event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


class AssistantStream:
    """Turns one run's records and text deltas into Assistants events."""

    def __init__(self, log: RunLog, run_object: Callable[[RunLog], Awaitable[dict[str, Any]]]) -> None:
        self.log = log
        self.run_object = run_object
        self.seen = log.records[-1].seq
        self.message_step: int | None = None  # the model step whose message is streaming
        self.open_tool_steps: set[str] = set()
        self.done = False

    async def on_record(self, record: Record) -> list[str]:
        if record.seq <= self.seen:
            return []
        self.seen = record.seq
        log = self.log
        log.add(record)
        p = record.payload
        out: list[str] = []
        if isinstance(p, ModelCalled):
            out += self._message_events(p)
            if p.response.tool_calls:
                out += self._tool_step_created(p.step)
        elif isinstance(p, ToolFinished):
            out += self._tool_output(p.call_id)
            out += self._close_tool_steps()
        elif isinstance(p, Paused):
            out += self._close_tool_steps()
            if log.waits_for_client():
                out.append(sse("thread.run.requires_action", await self.run_object(log)))
                self.done = True
        elif isinstance(p, Finished):
            run = await self.run_object(log)
            out += self._close_tool_steps()
            out.append(sse(_FINISHED_EVENT[p.status], run))
            self.done = True
        return out

    def on_delta(self, text: str) -> list[str]:
        step = self.log.state.next_step
        out = self._open_message(step)
        mid = message_id(self.log.id, self.log.run_ts, step)
        out.append(sse("thread.message.delta", {"id": mid, "object": "thread.message.delta", "delta": {
            "content": [{"index": 0, "type": "text", "text": {"value": text, "annotations": []}}]}}))
        return out

    def _open_message(self, step: int) -> list[str]:
        if self.message_step == step:
            return []
        self.message_step = step
        log = self.log
        mid = message_id(log.id, log.run_ts, step)
        sid = step_ids(log.id, log.run_ts, step)[0]
        now = int(time.time())
        step_obj = {
            "id": sid, "object": "thread.run.step", "created_at": now, "run_id": log.id,
            "assistant_id": log.row.data.get("assistant_id"), "thread_id": log.row.parent_id,
            "type": "message_creation", "status": "in_progress",
            "step_details": {"type": "message_creation", "message_creation": {"message_id": mid}},
            "cancelled_at": None, "completed_at": None, "expired_at": None, "failed_at": None,
            "last_error": None, "metadata": {}, "usage": None,
        }  # fmt: skip
        message: dict[str, Any] = {
            "id": mid, "object": "thread.message", "created_at": now, "thread_id": log.row.parent_id,
            "role": "assistant", "content": [], "assistant_id": log.row.data.get("assistant_id"),
            "run_id": log.id, "attachments": [], "metadata": {}, "status": "in_progress",
            "completed_at": None, "incomplete_at": None, "incomplete_details": None,
        }  # fmt: skip
        return [sse("thread.run.step.created", step_obj), sse("thread.run.step.in_progress", step_obj),
                sse("thread.message.created", message), sse("thread.message.in_progress", message)]

    def _message_events(self, p: ModelCalled) -> list[str]:
        text = p.response.text
        if not text:
            return []
        out = []
        if self.message_step != p.step:  # not streamed (a model without deltas): the text in one delta
            out += self._open_message(p.step)
            mid = message_id(self.log.id, self.log.run_ts, p.step)
            out.append(sse("thread.message.delta", {"id": mid, "object": "thread.message.delta", "delta": {
                "content": [{"index": 0, "type": "text", "text": {"value": text, "annotations": []}}]}}))
        mid = message_id(self.log.id, self.log.run_ts, p.step)
        message = next((m for m in self.log.messages() if m["id"] == mid), None)
        step = next((s for s in self.log.run_steps() if s["step_details"].get("message_creation", {})
                     .get("message_id") == mid), None)
        if message is not None:
            out.append(sse("thread.message.completed", message))
        if step is not None:
            out.append(sse("thread.run.step.completed", step))
        self.message_step = None
        return out

    def _tool_step_created(self, step: int) -> list[str]:
        sid = step_ids(self.log.id, self.log.run_ts, step)[1]
        obj = next((s for s in self.log.run_steps() if s["id"] == sid), None)
        if obj is None:
            return []
        calls = obj["step_details"]["tool_calls"]
        created = {**obj, "status": "in_progress", "completed_at": None,
                   "step_details": {"type": "tool_calls", "tool_calls": []}}
        out = [sse("thread.run.step.created", created), sse("thread.run.step.in_progress", created)]
        for i, c in enumerate(calls):
            # The SDK's handler reports a call's first delta as "created" and later ones as deltas:
            # the call's id and name first, then its arguments (never repeating id or name).
            if c["type"] == "function":
                head = {"id": c["id"], "type": "function",
                        "function": {"name": c["function"]["name"], "arguments": "", "output": None}}
                rest = {"type": "function", "function": {"arguments": c["function"]["arguments"]}}
            else:
                head = {"id": c["id"], "type": c["type"], c["type"]: {"input": "", "outputs": []}}
                rest = {"type": c["type"], c["type"]: {"input": c[c["type"]]["input"]}}
            for part in (head, rest):
                out.append(sse("thread.run.step.delta", {"id": sid, "object": "thread.run.step.delta", "delta": {
                    "step_details": {"type": "tool_calls", "tool_calls": [{"index": i, **part}]}}}))
        self.open_tool_steps.add(sid)
        return out

    def _tool_output(self, call_id: str) -> list[str]:
        """A server-run call's output as soon as it has one (its step may wait for the client's calls)."""
        for s in self.log.run_steps():
            if s["id"] not in self.open_tool_steps:
                continue
            for i, c in enumerate(s["step_details"]["tool_calls"]):
                if c["id"] != call_id:
                    continue
                if c["type"] == "function":
                    part = {"type": "function", "function": {"output": c["function"]["output"]}}
                else:
                    outputs = [{"index": j, **o} for j, o in enumerate(c[c["type"]]["outputs"])]
                    part = {"type": c["type"], c["type"]: {"outputs": outputs}}
                return [sse("thread.run.step.delta", {"id": s["id"], "object": "thread.run.step.delta", "delta": {
                    "step_details": {"type": "tool_calls", "tool_calls": [{"index": i, **part}]}}})]
        return []

    def _close_tool_steps(self) -> list[str]:
        out = []
        for s in self.log.run_steps():
            if s["id"] in self.open_tool_steps and s["status"] != "in_progress":
                self.open_tool_steps.discard(s["id"])
                out.append(sse(f"thread.run.step.{s['status']}", s))
        return out
