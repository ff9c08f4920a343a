"""Answers to a pause, checked before anything is written: an (action, value) pair as a face
gives it becomes a typed answer (domain/answers.py) that fits its item (the table in
domain/decisions.py); an edit is recorded with the value it replaces. Also a fork's edits, and
what each pending item holds now (what an edit of it would replace)."""

from __future__ import annotations

import copy
import json
from typing import Any

from tether.domain.agents import BUDGETS
from tether.domain.answers import (
    Abort,
    Action,
    Answer,
    Approve,
    Continue,
    Deny,
    EditArguments,
    EditMessages,
    EditOutput,
    EditResponse,
    EditResult,
    Rerun,
    Skip,
    Step,
    Supply,
)
from tether.domain.breakpoints import Breakpoint, Stop, unknown_paths, uses_cost
from tether.domain.decisions import Effects, apply_answer, check_action, edits
from tether.domain.errors import InvalidRequest, TetherError
from tether.domain.ids import new_id
from tether.domain.messages import Message, ToolCall, message_from_dict, message_to_dict
from tether.domain.models import ModelResponse
from tether.domain.protocols import Model
from tether.domain.records import Decision, PauseReason, PendingItem
from tether.domain.state import RunState
from tether.services.views import RunView

ANSWER_TYPES = (Continue, Step, EditMessages, EditResponse, EditArguments, EditResult, EditOutput, Skip, Supply,
                Approve, Deny, Rerun, Abort)
WHOLE_BUDGETS = ("max_steps", "max_tokens")


def make_answer(item: PendingItem, action: Action, value: Any, view: RunView) -> Answer:
    """The typed answer `action` with `value` gives to `item`; refused (changing nothing) when the
    action does not fit the item or the value is bad. A typed answer is checked as it is."""
    check_action(item, action)
    if isinstance(value, ANSWER_TYPES):
        if value.action != action:
            raise TetherError(f"a {type(value).__name__} answer is a {value.action!r}, not {action!r}")
        return value
    if action == "continue":
        raw = value.get("limits") if isinstance(value, dict) else None
        return Continue(check_limits(raw)) if raw is not None else Continue()
    if action == "edit":
        return edit_answer(item, value, view)
    if action == "supply":
        if value is None:
            raise TetherError(f"'supply' needs the result to give {item.name or item.id}")
        return Supply(as_text(value))
    if action == "skip":
        return Skip(as_text(value))
    if action == "approve":
        args = value.get("arguments") if isinstance(value, dict) else None
        return Approve(None if args is None else json_object(args))
    if action == "deny":
        return Deny(value if isinstance(value, str) else value.get("message") if isinstance(value, dict) else None)
    simple: dict[str, Answer] = {"step": Step(), "rerun": Rerun(), "abort": Abort()}
    return simple[action]


def check_limits(new: Any, current: dict[str, Any] | None = None) -> dict[str, int | float | None]:
    """Budgets raised at a budget pause: known names, positive numbers (whole ones for steps and
    tokens; null: no limit, except for max_steps). Returns those that differ from `current`."""
    if not isinstance(new, dict):
        raise TetherError('the limits are a JSON object such as {"max_steps": 10}')
    out: dict[str, int | float | None] = {}
    for name, value in new.items():
        if name not in BUDGETS:
            raise TetherError(f"unknown limit {name!r}: {name!r} is not a budget; raise one of {', '.join(BUDGETS)}")
        whole = name in WHOLE_BUDGETS
        ok = (value is None and name != "max_steps") or (
            isinstance(value, int | float) and not isinstance(value, bool) and value > 0
            and (not whole or float(value).is_integer()))
        if not ok:
            raise TetherError(f"{name} must be a positive number{', a whole one' if whole else ''}"
                              + ("" if name == "max_steps" else " (or null: no limit)") + f", not {value!r}")
        if current is None or value != current.get(name):
            out[name] = int(value) if whole and value is not None else value
    return out


def edit_answer(item: PendingItem, new: Any, view: RunView) -> Answer:
    """Check an edit of what `item` holds pending, and record it with the value it replaces."""
    what = edits(item)
    if what == "messages":
        msgs = new.get("messages", new) if isinstance(new, dict) else new
        return EditMessages(check_messages(msgs), copy.deepcopy(view.messages))
    if what == "arguments":
        return EditArguments(json_object(new.get("arguments", new) if isinstance(new, dict) else new), item.arguments)
    if what == "result":
        old = next((s.result or s.error for s in view.steps if s.call_id == item.call_id), None)
        return EditResult(as_text(new["result"] if isinstance(new, dict) and "result" in new else new), old)
    if what == "response":
        if not isinstance(new, dict) or not all(isinstance(c, dict) and c.get("name")
                                                for c in new.get("tool_calls") or []):
            raise TetherError('at after_model, edit the response: {"text": ..., "tool_calls": [{"name", "arguments"}]}')
        calls = [ToolCall(c.get("id") or new_id("call"), c["name"], json_object(c.get("arguments", {})))
                 for c in new.get("tool_calls") or []]
        return EditResponse(new.get("text"), calls, copy.deepcopy(view.messages[-1]))
    if what == "output":
        return EditOutput(as_text(new.get("output", new) if isinstance(new, dict) else new),
                          view.messages[-1].text if view.messages else None)
    raise TetherError(f"there is nothing to edit at {item.stop or item.reason}")


def fork_edit(state: RunState, step: int, edits: dict[str, Any]) -> Decision:
    """The decision that applies a fork's edits at `step` (pause id "fork": no pause to answer).
    A wrong edit is an InvalidRequest naming the field (`edits`, `edits.arguments`, ...)."""
    call = next((c for c in state.batch if c.step == step), None)
    fits = {"result", "arguments"} if call is not None else {"messages"}
    if len(edits) != 1 or not set(edits) <= fits:
        where = "a tool step: give arguments or result" if call is not None else "a model step: give messages"
        raise InvalidRequest(f"step {step} is {where}, one of them (got {sorted(edits)})", "edits")
    (key, value), = edits.items()
    try:
        if call is not None and key == "result":
            cid = call.call.id
            return Decision("fork", cid, Skip(as_text(value)), "fork", cid, step, Stop.BEFORE_TOOL)
        if call is not None:
            cid = call.call.id
            return Decision("fork", cid, EditArguments(json_object(value)), "fork", cid, step, Stop.BEFORE_TOOL)
        messages = check_messages(value)  # fail now on a bad message, not in the fold
        return Decision("fork", f"{Stop.BEFORE_MODEL}:{step}", EditMessages(messages), "fork", None, step,
                        Stop.BEFORE_MODEL)
    except InvalidRequest:
        raise
    except TetherError as e:
        raise InvalidRequest(str(e), f"edits.{key}") from None


# -- what an item holds now ------------------------------------------------------------------------


def limits_now(view: RunView) -> dict[str, Any]:
    """The run's budgets now: its agent's, as raised by earlier answers to budget pauses."""
    agent_limits = view.agent.limits if view.agent is not None else None
    raised = _RaisedLimits({name: getattr(agent_limits, name, None) for name in BUDGETS})
    for r in view.records:
        if isinstance(r.payload, Decision):
            apply_answer(r.payload, raised)
    return raised.limits


class _RaisedLimits(Effects):
    """Of what answers change, only the limits."""

    def __init__(self, limits: dict[str, Any]) -> None:
        self.limits = limits

    def raise_limits(self, limits: dict[str, int | float | None]) -> None:
        self.limits.update(limits)


def current_value(item: PendingItem, view: RunView) -> Any:
    """What an edit of `item` replaces, as JSON data (the form an edit of it is given in)."""
    if item.reason == PauseReason.BUDGET:
        return limits_now(view)
    what = edits(item)
    if what == "arguments":
        return parse_json(item.arguments)
    if what in ("result", "response"):
        step = next((s for s in view.steps if (s.call_id == item.call_id if what == "result"
                                                else s.number == item.step and s.type == "model")), None)
        if step is None:
            raise TetherError(f"no step for {item.call_id or item.step}")
        if what == "result":
            return parse_result(step.result if step.result is not None else step.error or "")
        return {"text": step.text, "tool_calls": [{"id": i, "name": n, "arguments": parse_json(a)}
                                                  for i, n, a in step.tool_calls]}
    if what == "messages":
        return [plain_message(m) for m in view.messages]
    if what == "output":
        return final_text(view)
    raise TetherError(f"there is nothing to edit at {item.stop or item.reason}")


def final_text(view: RunView) -> str | None:
    """The run's answer, or the model's last text so far."""
    if view.output is not None:
        return view.output
    for m in reversed(view.messages):
        if m.role == "assistant":
            return m.text if m.text else None
    return None


def parse_json(arguments: str | None) -> Any:
    """Tool arguments as JSON data (the text itself if it is not JSON)."""
    if arguments is None:
        return {}
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def parse_result(text: str) -> Any:
    """A tool result: parsed when it is a JSON object or list, else the text (so "2.40" stays "2.40")."""
    stripped = text.strip()
    if stripped.startswith(("{", "[")):
        try:
            return json.loads(stripped)
        except ValueError:
            pass
    return text


def plain_message(m: Message) -> dict[str, Any]:
    """A message for editing: its content as one string when it is one text part."""
    d = message_to_dict(m)
    content = d["content"]
    if not content:
        d["content"] = ""
    elif len(content) == 1 and content[0].get("type") == "text":
        d["content"] = content[0]["text"]
    return d


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


def check_messages(msgs: Any) -> list[Message]:
    if not isinstance(msgs, list) or not msgs:
        raise TetherError("edit the messages as a non-empty JSON list of {\"role\": ..., \"content\": ...} objects")
    try:
        return [message_from_dict(m) for m in msgs]
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
