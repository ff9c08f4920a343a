"""Where the Assistants API's objects are built: run, run step and message, from the run log.

Everything a client sees of a run is derived here from committed records (the run contract):
an assistant message is a model step's text, a run step is a model step's text or tool calls,
and a run's status, `required_action`, usage and errors come from the fold. Ids of derived
objects are deterministic (run id + step), so every process and every request agrees on them,
and they sort after the messages that started the run.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Any

from tether.domain.objects import StoredObject
from tether.domain.records import Finished, ModelCalled, Record, RunStarted
from tether.domain.state import RunState
from tether.domain.steps import Step, steps_of
from tether.services.assistants import CODE_INTERPRETER

_TERMINAL_STATUS = {"completed": "completed", "failed": "failed", "cancelled": "cancelled",
                    "incomplete": "incomplete"}


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


def stamp(ts: float | None) -> int | None:
    return None if ts is None else int(ts)


# -- assistants, threads, stored messages ----------------------------------------------------------


def plain_object(obj: StoredObject, kind: str) -> dict[str, Any]:
    """An assistant or thread as the API shows it: its stored fields plus id, object, created_at."""
    out = {"id": obj.id, "object": kind, "created_at": int(obj.created_at), **obj.data}
    if "tools" in out:
        out["tools"] = wire_tools(out["tools"])
    return out


def wire_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tools as OpenAI sends them: a key only for the tool's own type (stored ones may carry
    `"function": null, "file_search": null` beside a code_interpreter)."""
    return [{k: v for k, v in t.items() if v is not None} for t in tools]


def stored_message(obj: StoredObject) -> dict[str, Any]:
    return {"id": obj.id, "object": "thread.message", "created_at": int(obj.created_at),
            "thread_id": obj.parent_id, **obj.data}


# -- runs ------------------------------------------------------------------------------------------


class RunLog:
    """One run's records and fold, with what the API derives from them."""

    def __init__(self, row: StoredObject, records: list[Record], state: RunState) -> None:
        self.row, self.records, self.state = row, records, state
        first = records[0]
        assert isinstance(first.payload, RunStarted)
        self.run_ts = first.ts
        self.steps = steps_of(records)
        self._run_steps: list[dict[str, Any]] | None = None  # derived once per state of the log

    @property
    def id(self) -> str:
        return self.row.id

    def add(self, record: Record) -> None:
        """One more record of the run (a live stream follows the run this way)."""
        self.records.append(record)
        self.state.apply(record)
        self.steps = steps_of(self.records)
        self._run_steps = None

    def model_steps(self) -> list[tuple[Step, float]]:
        """Each model step with the time its answer was recorded."""
        times = {r.payload.step: r.ts for r in self.records if isinstance(r.payload, ModelCalled)}
        return [(s, times.get(s.number, self.run_ts)) for s in self.steps if s.type == "model"]

    def finished(self) -> tuple[Finished, float] | None:
        last = self.records[-1]
        return (last.payload, last.ts) if isinstance(last.payload, Finished) else None

    def messages(self) -> list[dict[str, Any]]:
        """The assistant messages this run wrote: one per model step with text."""
        out = []
        end = self.finished()
        for s, ts in self.model_steps():
            if not s.text:
                continue
            status, incomplete = "completed", None
            if end is not None and end[0].status == "incomplete" and s.number == self._last_model_step():
                status, incomplete = "incomplete", {"reason": "max_tokens"}
            out.append({
                "id": message_id(self.id, self.run_ts, s.number), "object": "thread.message",
                "created_at": int(ts), "thread_id": self.row.parent_id, "role": "assistant",
                "content": text_content(s.text), "assistant_id": self.row.data.get("assistant_id"),
                "run_id": self.id, "attachments": [], "metadata": {}, "status": status,
                "completed_at": int(ts) if status == "completed" else None,
                "incomplete_at": int(ts) if status == "incomplete" else None,
                "incomplete_details": incomplete,
            })  # fmt: skip
        return out

    def _last_model_step(self) -> int:
        numbers = [s.number for s in self.steps if s.type == "model"]
        return max(numbers) if numbers else 0

    def run_steps(self) -> list[dict[str, Any]]:
        """The run's steps as the API shows them, oldest first (do not change them: they are kept)."""
        if self._run_steps is None:
            self._run_steps = self._derive_steps()
        return self._run_steps

    def _derive_steps(self) -> list[dict[str, Any]]:
        out = []
        by_call = {s.call_id: s for s in self.steps if s.type == "tool"}
        end = self.finished()
        for s, ts in self.model_steps():
            message_step, tools_step = step_ids(self.id, self.run_ts, s.number)
            usage = _usage(s.usage.input_tokens, s.usage.output_tokens) if s.usage is not None else None
            if s.text:
                out.append(self._step(message_step, ts, "completed", ts, {
                    "type": "message_creation",
                    "message_creation": {"message_id": message_id(self.id, self.run_ts, s.number)},
                }, usage))
                usage = None  # counted once
            if s.tool_calls:
                calls = [by_call[c[0]] for c in s.tool_calls if c[0] in by_call]
                done = all(c.status in ("completed", "failed") for c in calls)
                status = "completed" if done else "in_progress"
                if not done and end is not None:
                    status = "cancelled" if end[0].status == "cancelled" else "failed"
                finished_at = max((c.finished_at or ts for c in calls), default=ts) if done else None
                out.append(self._step(tools_step, ts + 1e-6, status, finished_at, {
                    "type": "tool_calls", "tool_calls": [tool_call(c) for c in calls],
                }, usage))
        return out

    def _step(self, step_id: str, ts: float, status: str, finished_at: float | None,
              details: dict[str, Any], usage: dict[str, int] | None) -> dict[str, Any]:
        end = self.finished()
        end_ts = stamp(end[1]) if end is not None else None
        return {
            "id": step_id, "object": "thread.run.step", "created_at": int(ts), "run_id": self.id,
            "assistant_id": self.row.data.get("assistant_id"), "thread_id": self.row.parent_id,
            "type": details["type"], "status": status, "step_details": details,
            "completed_at": stamp(finished_at) if status == "completed" else None,
            "cancelled_at": end_ts if status == "cancelled" else None,
            "failed_at": end_ts if status == "failed" else None,
            "expired_at": None, "last_error": None, "metadata": {}, "usage": usage,
        }  # fmt: skip

    def pending_calls(self) -> list[dict[str, Any]]:
        """The client tool calls the run waits for (`required_action`)."""
        pause = self.state.pause
        if pause is None:
            return []
        return [{"id": i.call_id, "type": "function", "function": {"name": i.name, "arguments": i.arguments or "{}"}}
                for i in pause.items if i.reason == "client_tool"]

    def waits_for_client(self) -> bool:
        pause = self.state.pause
        return pause is not None and all(i.reason == "client_tool" for i in pause.items)

    def run(self, *, queued: bool = False, cancelling: bool = False) -> dict[str, Any]:
        """The run object. `queued`: created or answered, and no worker has taken it yet."""
        data, state = dict(self.row.data), self.state
        end = self.finished()
        pause = state.pause
        status = "in_progress"
        extra: dict[str, Any] = {}
        if end is not None:
            status = _TERMINAL_STATUS.get(end[0].status, "failed")
        elif cancelling:
            status = "cancelling"
        elif pause is not None and self.waits_for_client():
            status = "requires_action"
        elif pause is not None:
            extra["tether_pause"] = {"pause_id": pause.pause_id, "items": [_item(i) for i in pause.items]}
        elif queued:
            status = "queued"
        started = next((r.ts for r in self.records[1:]), None)
        if started is None and status == "in_progress":
            started = self.row.created_at  # taken by a worker, nothing recorded yet
        end_ts = stamp(end[1]) if end is not None else None
        usage = None
        if end is not None or status == "requires_action":
            u = state.usage
            usage = _usage(u.input_tokens, u.output_tokens)
        last_error = None
        incomplete = None
        if end is not None and end[0].status == "failed":
            # The backend's address is the operator's business, not every tenant's.
            message = re.sub(r"\bhttps?://\S+", "the model server", end[0].error or "the run failed")
            code = "rate_limit_exceeded" if "429" in message or "rate limit" in message.lower() else "server_error"
            last_error = {"code": code, "message": message}
        if end is not None and end[0].status == "incomplete":
            reason = end[0].error if end[0].error in ("max_prompt_tokens", "max_completion_tokens") else None
            incomplete = {"reason": reason}
        tools = data.pop("tools", [])
        data.pop("additional_instructions", None)
        return {
            "id": self.id, "object": "thread.run", "created_at": int(self.row.created_at),
            "thread_id": self.row.parent_id, "status": status, "started_at": stamp(started),
            "expires_at": None, "cancelled_at": end_ts if status == "cancelled" else None,
            "failed_at": end_ts if status == "failed" else None,
            "completed_at": end_ts if status == "completed" else None,
            "incomplete_details": incomplete, "last_error": last_error, "usage": usage,
            "required_action": {"type": "submit_tool_outputs",
                                "submit_tool_outputs": {"tool_calls": self.pending_calls()}}
            if status == "requires_action" else None,
            "tools": wire_tools(tools), **data, **extra,
        }  # fmt: skip


def tool_call(s: Step) -> dict[str, Any]:
    """A tool step as a run step's tool call; server-run calls have their output filled."""
    output = None
    if s.status in ("completed", "failed"):
        output = f"Error: {s.error}" if s.error is not None else (s.result or "")
    if s.name == CODE_INTERPRETER:
        try:
            code = json.loads(s.arguments or "{}").get("code", "")
        except (ValueError, AttributeError):
            code = s.arguments or ""
        logs = [{"type": "logs", "logs": output}] if output is not None else []
        return {"id": s.call_id, "type": "code_interpreter", "code_interpreter": {"input": code, "outputs": logs}}
    return {"id": s.call_id, "type": "function",
            "function": {"name": s.name, "arguments": s.arguments or "{}", "output": output}}


def _item(i: Any) -> dict[str, Any]:
    return {"id": i.id, "reason": i.reason, "stop": i.stop, "step": i.step, "call_id": i.call_id,
            "name": i.name, "arguments": i.arguments, "detail": i.detail, "breakpoint_id": i.breakpoint_id}


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def deleted(object_id: str, kind: str) -> dict[str, Any]:
    return {"id": object_id, "object": f"{kind}.deleted", "deleted": True}


def now() -> float:
    return time.time()
