"""What goes to a model and what comes back, in Tether's types."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from tether.domain.messages import Message, ToolCall
from tether.domain.usage import Usage

# The reasons Tether knows; a server's other reasons are kept as they came ("abort", "eos", ...).
FinishReason = Literal["stop", "tool_calls", "length", "content_filter", "error"] | str


@dataclass(slots=True)
class ToolSchema:
    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(slots=True)
class ModelRequest:
    messages: list[Message]
    tools: list[ToolSchema] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    output_schema: dict[str, Any] | None = None
    fingerprint: str = ""  # stable hash of everything above, for replay divergence checks


@dataclass(slots=True)
class ModelResponse:
    text: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: FinishReason = "stop"
    usage: Usage = field(default_factory=Usage)
    refusal: str | None = None
    model_name: str | None = None  # what the server says it ran

    def says_nothing(self) -> bool:
        """No text (white space is none), no tool call and no refusal: nothing a run could show or act on."""
        return not (self.text or "").strip() and not self.tool_calls and not self.refusal
