"""Conversation messages in Tether's own types (never an SDK's)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "developer", "user", "assistant", "tool"]
ROLES: tuple[str, ...] = ("system", "developer", "user", "assistant", "tool")


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


def message_to_dict(m: Message) -> dict[str, Any]:
    """A message as plain JSON data (for edits, decisions and the debugger)."""
    out: dict[str, Any] = {"role": m.role, "content": [_part_to_dict(p) for p in m.content]}
    if m.tool_calls:
        out["tool_calls"] = [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in m.tool_calls]
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    if m.name is not None:
        out["name"] = m.name
    return out


def message_from_dict(d: dict[str, Any]) -> Message:
    """The inverse of `message_to_dict`; `content` may also be a plain string."""
    if not isinstance(d, dict) or d.get("role") not in ROLES:
        raise ValueError(f"a message is an object with a role ({', '.join(ROLES)}) and content, not {d!r}")
    content = d.get("content") or []
    parts: list[ContentPart] = [TextPart(content)] if isinstance(content, str) else [
        _part_from_dict(p) for p in content
    ]
    calls = [ToolCall(c["id"], c["name"], c.get("arguments") or "{}", c.get("provider_id"))
             for c in d.get("tool_calls") or []]
    return Message(d["role"], parts, calls, d.get("tool_call_id"), d.get("name"))


def _part_to_dict(p: ContentPart) -> dict[str, Any]:
    if isinstance(p, TextPart):
        return {"type": "text", "text": p.text}
    if isinstance(p, ImagePart):
        return {"type": "image_url", "url": p.url, "detail": p.detail}
    return {"type": "refusal", "refusal": p.refusal}


def _part_from_dict(d: dict[str, Any]) -> ContentPart:
    kind = d.get("type", "text")
    if kind == "text":
        return TextPart(d["text"])
    if kind == "image_url":
        return ImagePart(d["url"], d.get("detail", "auto"))
    if kind == "refusal":
        return RefusalPart(d["refusal"])
    raise ValueError(f"unknown content part type {kind!r}")
