"""Where the Assistants API's objects are built (the JSON the SDK reads), from the services' typed
values: assistants, threads, messages, lists, and a run and its run steps from its log.

Everything a client sees of a run is derived from committed records (the run contract): a run
step is a model step's text or tool calls, and a run's status, `required_action`, usage and
errors come from the fold (`services.thread_runs.ThreadRun`).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

from tether.domain.objects import StoredObject
from tether.domain.records import Record, RunStatus
from tether.domain.state import RunState
from tether.domain.steps import DONE, Step
from tether.services.assistants.agents import CODE_INTERPRETER
from tether.services.assistants.documents import Assistant, Thread
from tether.services.assistants.thread_runs import ThreadMessage, ThreadRun, message_id, step_ids, text_content
from tether.services.pages import Cursor, Page, paged

__all__ = ["RunLog", "message_id", "step_ids", "text_content"]  # the ids streaming.py reads from here
T = TypeVar("T")

def stamp(ts: float | None) -> int | None:
    return None if ts is None else int(ts)


# -- assistants, threads, messages, lists ---------------------------------------------------------


def assistant(a: Assistant) -> dict[str, Any]:
    data = a.settings.stored()
    return {"id": a.id, "object": "assistant", "created_at": int(a.created_at), **data,
            "tools": wire_tools(data["tools"])}


def thread(t: Thread) -> dict[str, Any]:
    return {"id": t.id, "object": "thread", "created_at": int(t.created_at), **t.fields.stored()}


def message(m: ThreadMessage) -> dict[str, Any]:
    return {"id": m.id, "object": "thread.message", "created_at": int(m.created_at), "thread_id": m.thread_id,
            **m.fields.stored()}


def wire_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tools as OpenAI sends them: a key only for the tool's own type (stored ones may carry
    `"function": null, "file_search": null` beside a code_interpreter)."""
    return [{k: v for k, v in t.items() if v is not None} for t in tools]


def listing(p: Page[T], shown: Callable[[T], dict[str, Any]]) -> dict[str, Any]:
    """OpenAI's list envelope of a page."""
    data = [shown(item) for item in p.data]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": p.has_more}


def page(items: list[dict[str, Any]], cursor: Cursor) -> dict[str, Any]:
    """The list envelope of a page of `items` (objects oldest first, all in memory)."""
    return listing(paged(items, cursor, lambda i: str(i["id"])), lambda i: i)


# -- runs ------------------------------------------------------------------------------------------


class RunLog(ThreadRun):
    """A run of a thread with its API objects: the run, its run steps and its messages."""

    def __init__(self, row: StoredObject, records: list[Record], state: RunState) -> None:
        super().__init__(row, records, state)
        self._run_steps: list[dict[str, Any]] | None = None  # derived once per state of the log

    def add(self, record: Record) -> None:
        super().add(record)
        self._run_steps = None

    def messages(self) -> list[dict[str, Any]]:
        """The assistant messages this run wrote."""
        return [message(m) for m in self.thread_messages()]

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
                done = all(c.status in DONE for c in calls)
                status = "completed" if done else "in_progress"
                if not done and end is not None:
                    status = "cancelled" if end[0].status == RunStatus.CANCELLED else "failed"
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
            "assistant_id": self.settings.assistant_id, "thread_id": self.row.parent_id,
            "type": details["type"], "status": status, "step_details": details,
            "completed_at": stamp(finished_at) if status == "completed" else None,
            "cancelled_at": end_ts if status == "cancelled" else None,
            "failed_at": end_ts if status == "failed" else None,
            "expired_at": None, "last_error": None, "metadata": {}, "usage": usage,
        }  # fmt: skip

    def pending_calls(self) -> list[dict[str, Any]]:
        """The client tool calls the run waits for (`required_action`)."""
        return [{"id": i.call_id, "type": "function", "function": {"name": i.name, "arguments": i.arguments or "{}"}}
                for i in self.client_calls()]

    def run(self, *, queued: bool = False, cancelling: bool = False) -> dict[str, Any]:
        """The run object. `queued`: created or answered, and no worker has taken it yet."""
        data, state = self.settings.stored(), self.state
        end = self.finished()
        pause = state.pause
        status = self.status(queued=queued, cancelling=cancelling)
        extra: dict[str, Any] = {}
        if status == "in_progress" and pause is not None:
            extra["tether_pause"] = {"pause_id": pause.pause_id, "items": [_item(i) for i in pause.items]}
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
        if end is not None and end[0].status == RunStatus.FAILED:
            # The backend's address is the operator's business, not every tenant's.
            message = re.sub(r"\bhttps?://\S+", "the model server", end[0].error or "the run failed")
            code = "rate_limit_exceeded" if "429" in message or "rate limit" in message.lower() else "server_error"
            last_error = {"code": code, "message": message}
        if end is not None and end[0].status == RunStatus.INCOMPLETE:
            reason = end[0].error if end[0].error in ("max_prompt_tokens", "max_completion_tokens") else None
            incomplete = {"reason": reason}
        tools = data.pop("tools", [])
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
    if s.status in DONE:
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
