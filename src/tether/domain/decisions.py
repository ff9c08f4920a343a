"""What decisions mean: which answers fit which pending item (one table), and what an answer
changes (one function, `apply_answer`, that the fold, the steps view and every face rely on).
Nothing here does I/O.
"""

from __future__ import annotations

from typing import Literal

from tether.domain.answers import (
    ACTIONS,
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
from tether.domain.errors import TetherError
from tether.domain.messages import Message, ToolCall
from tether.domain.records import Decision, PendingItem

# -- which answers fit which pending item ---------------------------------------------------------

# Where an action fits, within a reason: at any item, only at a tool call's item, only before the
# tool runs, or only where there is something to edit (see EDITS).
Where = Literal["any", "tool", "before_tool", "editable"]

ANSWERS: dict[str, dict[Action, Where]] = {
    "breakpoint": {"continue": "any", "step": "any", "edit": "editable", "skip": "before_tool", "abort": "any"},
    "budget": {"continue": "any", "step": "any", "abort": "any"},
    "approval": {"approve": "tool", "deny": "tool", "skip": "tool", "abort": "any"},
    "client_tool": {"supply": "tool", "abort": "any"},
    "uncertain": {"rerun": "tool", "supply": "tool", "continue": "any", "abort": "any"},
}
# Reasons a plain "go on" answers: the others wait for a person's (or a client's) explicit answer.
GO_ON_ANSWERS = frozenset(r for r, actions in ANSWERS.items() if "continue" in actions and r != "uncertain")

# What an edit changes at each stop (a tool stop's edit needs its call).
EDITS: dict[str, str] = {
    "before_model": "messages",
    "after_model": "response",
    "before_tool": "arguments",
    "after_tool": "result",
    "on_error": "result",
    "before_finish": "output",
}


def edits(item: PendingItem) -> str | None:
    """What an edit of `item` changes: messages, response, arguments, result, output; None: nothing."""
    what = EDITS.get(item.stop or "")
    if what in ("arguments", "result") and item.call_id is None:
        return None
    return what


def _fits(item: PendingItem, where: Where) -> bool:
    if where == "tool":
        return item.call_id is not None
    if where == "before_tool":
        return item.call_id is not None and item.stop == "before_tool"
    if where == "editable":
        return edits(item) is not None
    return True


def actions_for(item: PendingItem) -> list[Action]:
    """The actions that answer `item`, in a fixed order."""
    table = ANSWERS.get(item.reason, {"continue": "any", "abort": "any"})
    return [a for a in ACTIONS if a in table and _fits(item, table[a])]


def check_action(item: PendingItem, action: Action) -> None:
    """Refuse an action that does not fit the item (e.g. `skip` at a model stop)."""
    ok = actions_for(item)
    if action in ok:
        return
    if action == "edit" and "edit" in ANSWERS.get(item.reason, {}):
        raise TetherError(f"there is nothing to edit at {item.stop or item.reason}")
    raise TetherError(f"{action!r} does not answer a {item.reason} item; use one of {sorted(ok)}")


def needs_answer(item: PendingItem) -> bool:
    """Whether `item` waits for an explicit answer (a plain continue does not do)."""
    return item.reason not in GO_ON_ANSWERS


# -- what an answer changes -----------------------------------------------------------------------


class Effects:
    """What a view of a run does with each effect of an answer; by default, nothing. The fold
    (domain/state.py) and the steps view (domain/steps.py) each override what they show."""

    __slots__ = ()

    def set_result(self, call_id: str, result: str, by: str, *, edited: bool = False) -> None: ...
    def set_error(self, call_id: str, error: str, by: str) -> None: ...
    def set_arguments(self, call_id: str, arguments: str) -> None: ...
    def set_response(self, step: int | None, text: str | None, calls: list[ToolCall]) -> None: ...
    def set_messages(self, messages: list[Message]) -> None: ...
    def set_output(self, text: str) -> None: ...
    def approve(self, call_id: str) -> None: ...
    def rerun(self, call_id: str) -> None: ...
    def raise_limits(self, limits: dict[str, int | float | None]) -> None: ...
    def step(self) -> None: ...
    def abort(self, by: str) -> None: ...


def denied(message: str | None) -> str:
    """What the model sees for a denied call."""
    return f"a person denied this call: {message or 'no reason given'}"


def apply_answer(d: Decision, to: Effects) -> None:
    """Apply one decision's answer to a view of the run: the one place an answer's meaning lives."""
    a, call = d.answer, d.call_id or ""
    match a:
        case Skip(result) | Supply(result):
            to.set_result(call, result, d.by)
        case Deny(message):
            to.set_error(call, denied(message), d.by)
        case Approve(arguments):
            to.approve(call)
            if arguments is not None:
                to.set_arguments(call, arguments)
        case Rerun():
            to.rerun(call)
        case Abort():
            to.abort(d.by)
        case Step():
            to.step()
        case Continue(limits):
            if limits:
                to.raise_limits(limits)
        case EditMessages(messages):
            to.set_messages(messages)
        case EditResponse(text, calls):
            to.set_response(d.step, text, calls)
        case EditArguments(arguments):
            to.set_arguments(call, arguments)
        case EditResult(result):
            to.set_result(call, result, d.by, edited=True)
        case EditOutput(output):
            to.set_output(output)


def decision_for(pause_id: str, item: PendingItem, answer: Answer, by: str) -> Decision:
    """The decision answering `item`, naming what it concerns."""
    return Decision(pause_id, item.id, answer, by, item.call_id, item.step, item.stop)
