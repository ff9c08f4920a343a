"""Conversation messages in Tether's own types (never an SDK's)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Role = Literal["system", "developer", "user", "assistant", "tool"]


@dataclass(slots=True)
class TextPart:
    text: str
    type: Literal["text"] = "text"


@dataclass(slots=True)
class ImagePart:
    url: str
    detail: Literal["auto", "low", "high"] = "auto"
    type: Literal["image_url"] = "image_url"


@dataclass(slots=True)
class RefusalPart:
    refusal: str
    type: Literal["refusal"] = "refusal"


ContentPart = TextPart | ImagePart | RefusalPart


@dataclass(slots=True)
class ToolCall:
    """A tool call the model asked for.

    `id` is minted by Tether (`call_…`); `provider_id` is the id the model server gave, kept
    beside it because some servers repeat or omit ids. `arguments` is the raw JSON text the
    model wrote: it may be malformed, and that is the tool layer's to report back.
    """

    id: str
    name: str
    arguments: str
    provider_id: str | None = None


@dataclass(slots=True)
class Message:
    role: Role
    content: list[ContentPart] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None  # set on role="tool" messages
    name: str | None = None  # the tool's name on role="tool" messages

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.content if isinstance(p, TextPart))

    @classmethod
    def system(cls, text: str) -> Message:
        return cls("system", [TextPart(text)])

    @classmethod
    def user(cls, text: str) -> Message:
        return cls("user", [TextPart(text)])

    @classmethod
    def assistant(cls, text: str | None, tool_calls: list[ToolCall] | None = None) -> Message:
        return cls("assistant", [TextPart(text)] if text else [], list(tool_calls or ()))

    @classmethod
    def tool(cls, call_id: str, name: str, text: str) -> Message:
        return cls("tool", [TextPart(text)], tool_call_id=call_id, name=name)
