"""Answers to a pause, checked before anything is written: which actions fit which pending
item, what an edit at each stop looks like (recorded with its old value), a fork's edits."""

from __future__ import annotations

import json
from typing import Any

from tether.domain.agents import BUDGETS
from tether.domain.breakpoints import Breakpoint, unknown_paths, uses_cost
from tether.domain.errors import TetherError
from tether.domain.ids import new_id
from tether.domain.messages import message_from_dict, message_to_dict
from tether.domain.models import ModelResponse
from tether.domain.protocols import Model
from tether.domain.records import Action, Decision, PendingItem
from tether.domain.state import RunState
from tether.services.views import RunView


def check_action(item: PendingItem, action: Action, payload: Any) -> None:
    """Refuse an action that does not fit the item (e.g. `skip` at a model stop) or a bad payload."""
    tool_stop = item.call_id is not None
    allowed: dict[str, set[str]] = {
        "client_tool": {"supply", "abort"},
        "uncertain": {"rerun", "supply", "abort", "continue"},
        "approval": {"approve", "deny", "skip", "abort"},
        "budget": {"continue", "step", "abort"},
        "breakpoint": {"continue", "step", "edit", "abort"} | ({"skip"} if item.stop == "before_tool" else set()),
    }
    ok = allowed.get(item.reason, {"continue", "abort"})
    if not tool_stop:
        ok = ok - {"skip", "supply", "rerun"}
    if action not in ok:
        raise TetherError(f"{action!r} does not answer a {item.reason} item; use one of {sorted(ok)}")
    if item.reason == "budget" and isinstance(payload, dict) and "limits" in payload:
        for name, value in payload["limits"].items():
            if name not in BUDGETS:
                raise TetherError(f"{name!r} is not a budget; raise one of {', '.join(BUDGETS)}")
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise TetherError(f"{name} must be a positive number, not {value!r}")
    if action == "supply" and payload is None:
        raise TetherError(f"'supply' needs the result to give {item.name or item.id}")


# -- the default service, and running without an event loop ------------------------------------


def edit_payload(item: PendingItem, new: Any, view: RunView) -> dict[str, Any]:
    """Check an edit of what `item` holds pending, and record it with the old value."""
    stop = item.stop
    if stop == "before_model":
        msgs = new.get("messages", new) if isinstance(new, dict) else new
        check_messages(msgs)
        return {"messages": msgs, "old": [message_to_dict(m) for m in view.messages]}
    if stop in ("before_tool",) or item.reason == "approval":
        return {"arguments": json_object(new.get("arguments", new) if isinstance(new, dict) else new),
                "old": item.arguments}
    if stop in ("after_tool", "on_error") and item.call_id is not None:
        old = next((s.result or s.error for s in view.steps if s.call_id == item.call_id), None)
        return {"result": new.get("result", new) if isinstance(new, dict) and "result" in new else as_text(new),
                "old": old}
    if stop == "after_model":
        if not isinstance(new, dict):
            raise TetherError('at after_model, edit the response: {"text": ..., "tool_calls": [{"name", "arguments"}]}')
        calls = [{"id": c.get("id") or new_id("call"), "name": c["name"],
                  "arguments": json_object(c.get("arguments", {}))} for c in new.get("tool_calls", [])]
        last = view.messages[-1]
        return {"response": {"text": new.get("text"), "tool_calls": calls}, "old": message_to_dict(last)}
    if stop == "before_finish":
        return {"output": as_text(new.get("output", new) if isinstance(new, dict) else new),
                "old": view.messages[-1].text if view.messages else None}
    raise TetherError(f"there is nothing to edit at {stop or item.reason}")


def fork_edit(state: RunState, step: int, edits: dict[str, Any]) -> Any:
    """The decision that applies a fork's edits at `step` (pause id "fork": no pause to answer)."""
    call = next((c for c in state.batch if c.step == step), None)
    if call is not None:
        if "result" in edits:
            return Decision("fork", call.call.id, "skip", edits["result"], "fork")
        if "arguments" in edits:
            return Decision("fork", call.call.id, "edit", {"arguments": json_object(edits["arguments"])}, "fork")
    elif "messages" in edits:
        check_messages(edits["messages"])  # fail now on a bad message, not in the fold
        return Decision("fork", f"before_model:{step}", "edit", {"messages": edits["messages"]}, "fork")
    where = "a tool step: give arguments or result" if call is not None else "a model step: give messages"
    raise TetherError(f"step {step} is {where} (got {sorted(edits)})")


def breakpoint_warnings(bp: Breakpoint, model: Model) -> list[str]:
    """Why a breakpoint's condition may never be true: names with no value at its stop, or a
    comparison with the cost of a model whose price is unknown."""
    cost_unknown = model.cost_usd(ModelResponse()) is None
    out = []
    if bp.condition:
        for path in unknown_paths(bp.condition, bp.stop):
            out.append(f"{path} has no value at {bp.stop}, so this condition is never true there")
        if cost_unknown and uses_cost(bp.condition):
            out.append("this run's cost is unknown (its model has no known price): comparisons with "
                       "run.cost_usd are false")
    return out


def check_messages(msgs: Any) -> None:
    if not isinstance(msgs, list) or not msgs:
        raise TetherError("edit the messages as a non-empty JSON list of {\"role\": ..., \"content\": ...} objects")
    try:
        for m in msgs:
            message_from_dict(m)
    except (KeyError, TypeError, ValueError) as e:
        raise TetherError(f"a message is malformed: {e}") from None


def json_object(value: Any) -> str:
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError as e:
            raise TetherError(f"the arguments are not valid JSON: {e}") from None
    else:
        parsed = value
    if not isinstance(parsed, dict):
        raise TetherError("the arguments must be a JSON object, e.g. {\"expression\": \"2 * 3\"}")
    return json.dumps(parsed, ensure_ascii=False)


def as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
