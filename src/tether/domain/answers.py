"""The answers a decision can give to a pending item: one frozen type per action.

An answer's `action` is a class constant, so the action can never disagree with the payload.
Edits are one type per thing they change, and record the value they replaced (`old`, for the
log's reader; None when unknown, e.g. a fork's edits). `type` tells the types apart on disk.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

from tether.domain.messages import Message, ToolCall, message_to_dict

Action = Literal["continue", "step", "edit", "skip", "approve", "deny", "rerun", "supply", "abort"]
ACTIONS: tuple[Action, ...] = ("continue", "step", "edit", "skip", "approve", "deny", "rerun", "supply", "abort")


@dataclass(frozen=True, slots=True)
class Continue:
    """Go on; at a budget pause, with these limits raised (a budget's name → its new value)."""

    limits: dict[str, int | float | None] = field(default_factory=dict)
    type: Literal["continue"] = "continue"
    action: ClassVar[Action] = "continue"


@dataclass(frozen=True, slots=True)
class Step:
    """Go on, and pause again at the very next stop."""

    type: Literal["step"] = "step"
    action: ClassVar[Action] = "step"


@dataclass(frozen=True, slots=True)
class EditMessages:
    """before_model: the conversation the next request sends."""

    messages: list[Message]
    old: list[Message] | None = None
    type: Literal["edit_messages"] = "edit_messages"
    action: ClassVar[Action] = "edit"


@dataclass(frozen=True, slots=True)
class EditResponse:
    """after_model: the model's response, before its tool calls run (they replace its calls)."""

    text: str | None
    tool_calls: list[ToolCall]
    old: Message | None = None
    type: Literal["edit_response"] = "edit_response"
    action: ClassVar[Action] = "edit"


@dataclass(frozen=True, slots=True)
class EditArguments:
    """before_tool: the call's arguments (a JSON object, as text)."""

    arguments: str
    old: str | None = None
    type: Literal["edit_arguments"] = "edit_arguments"
    action: ClassVar[Action] = "edit"


@dataclass(frozen=True, slots=True)
class EditResult:
    """after_tool / on_error: the result the model sees."""

    result: str
    old: str | None = None
    type: Literal["edit_result"] = "edit_result"
    action: ClassVar[Action] = "edit"


@dataclass(frozen=True, slots=True)
class EditOutput:
    """before_finish: the run's answer."""

    output: str
    old: str | None = None
    type: Literal["edit_output"] = "edit_output"
    action: ClassVar[Action] = "edit"


@dataclass(frozen=True, slots=True)
class Skip:
    """Don't call the tool: the model sees `result`."""

    result: str
    type: Literal["skip"] = "skip"
    action: ClassVar[Action] = "skip"


@dataclass(frozen=True, slots=True)
class Supply:
    """The result of a call Tether did not (or may not have) run: a client tool's, an uncertain one's."""

    result: str
    type: Literal["supply"] = "supply"
    action: ClassVar[Action] = "supply"


@dataclass(frozen=True, slots=True)
class Approve:
    """Run the call that needs approval; with `arguments` (a JSON object, as text), with those."""

    arguments: str | None = None
    type: Literal["approve"] = "approve"
    action: ClassVar[Action] = "approve"


@dataclass(frozen=True, slots=True)
class Deny:
    """Don't run it: the model sees an error with `message`."""

    message: str | None = None
    type: Literal["deny"] = "deny"
    action: ClassVar[Action] = "deny"


@dataclass(frozen=True, slots=True)
class Rerun:
    """Run an uncertain call again."""

    type: Literal["rerun"] = "rerun"
    action: ClassVar[Action] = "rerun"


@dataclass(frozen=True, slots=True)
class Abort:
    """End the run, cancelled."""

    type: Literal["abort"] = "abort"
    action: ClassVar[Action] = "abort"


class _ByType:
    """Tells pydantic (which loads only in the codec) that answers are told apart by `type`, so a
    record is decoded with one look-up rather than by trying each type in turn."""

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        from pydantic import Field

        return handler.generate_schema(Annotated[source, Field(discriminator="type")])


Edit = EditMessages | EditResponse | EditArguments | EditResult | EditOutput
Answer = Continue | Step | Edit | Skip | Supply | Approve | Deny | Rerun | Abort
TaggedAnswer = Annotated[Answer, _ByType()]  # the type of a decision's answer field


def answer_value(a: Answer, *, with_old: bool = False) -> Any:
    """What an answer carries, as plain JSON data for display (None: nothing beyond its action).
    `with_old`: an edit shows the value it replaced too (as a run's log is shown)."""
    value = _answer_value(a)
    old = getattr(a, "old", None)
    if with_old and old is not None and isinstance(value, dict):
        if isinstance(old, list):
            value["old"] = [message_to_dict(m) for m in old]
        elif isinstance(old, Message):
            value["old"] = message_to_dict(old)
        else:
            value["old"] = _json(old) if isinstance(a, EditArguments) else old  # arguments: shown as JSON
    return value


def _answer_value(a: Answer) -> Any:
    if isinstance(a, Skip | Supply):
        return a.result
    if isinstance(a, Deny):
        return a.message
    if isinstance(a, Continue):
        return {"limits": a.limits} if a.limits else None
    if isinstance(a, Approve):
        return None if a.arguments is None else {"arguments": _json(a.arguments)}
    if isinstance(a, EditMessages):
        return {"messages": [message_to_dict(m) for m in a.messages]}
    if isinstance(a, EditResponse):
        return {"text": a.text, "tool_calls": [{"id": c.id, "name": c.name, "arguments": _json(c.arguments)}
                                               for c in a.tool_calls]}
    if isinstance(a, EditArguments):
        return {"arguments": _json(a.arguments)}
    if isinstance(a, EditResult):
        return {"result": a.result}
    if isinstance(a, EditOutput):
        return {"output": a.output}
    return None


def _json(text: str) -> Any:
    """Arguments as JSON data to show (the text itself if it is not JSON)."""
    try:
        return json.loads(text)
    except ValueError:
        return text
