"""The Assistants documents, typed: an assistant's settings, a run's settings (the assistant's,
narrowed by the run's request), a thread's and a message's fields.

They are the `data` of the rows in the objects table. Rows are validated when read and dumped when
written, so a row written by an older version (same keys; keys no model has are ignored) reads
as it always did, and everything past this boundary is typed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class Stored(BaseModel):
    """A stored document's fields: keys the model does not know are ignored (older rows kept the
    whole request, e.g. a run's `stream` or `additional_messages`)."""

    model_config = ConfigDict(extra="ignore")

    def stored(self) -> dict[str, Any]:
        """The fields as the row keeps them (plain JSON data)."""
        return self.model_dump(mode="json")


class FunctionSpec(Stored):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ApiTool(Stored):
    """A tool in OpenAI's shape: a client `function`, or `code_interpreter` (run by the server)."""

    type: Literal["function", "code_interpreter", "file_search"]
    function: FunctionSpec | None = None
    file_search: dict[str, Any] | None = None


class ServerToolSpec(Stored):
    """A server-side tool a client names (`tether_tools`); the operator decides what it may be."""

    type: str
    server: str | None = None
    options: dict[str, Any] | None = None

    def stored(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)  # as the client wrote it


class Truncation(Stored):
    type: Literal["auto", "last_messages"] = "auto"
    last_messages: int | None = None


ResponseFormat = str | dict[str, Any]
ToolChoice = str | dict[str, Any]


class AssistantSettings(Stored):
    """An assistant: what each of its runs starts from."""

    model: str
    name: str | None = None
    description: str | None = None
    instructions: str | None = None
    tools: list[ApiTool] = []
    tool_resources: dict[str, Any] = {}
    metadata: dict[str, str] = {}
    temperature: float | None = 1.0
    top_p: float | None = 1.0
    response_format: ResponseFormat | None = "auto"
    reasoning_effort: str | None = None
    tether_tools: list[ServerToolSpec] = []
    tether_breakpoints: list[str] = []

    def stored(self) -> dict[str, Any]:
        return {**super().stored(), "tether_tools": [t.stored() for t in self.tether_tools]}


class RunSettings(Stored):
    """What an API run runs with: its assistant's settings, with the run's request over them."""

    assistant_id: str | None = None
    model: str
    instructions: str = ""
    tools: list[ApiTool] = []
    tether_tools: list[ServerToolSpec] = []
    tether_breakpoints: list[str] = []
    tool_choice: ToolChoice = "auto"
    parallel_tool_calls: bool = True
    response_format: ResponseFormat | None = "auto"
    temperature: float | None = None
    top_p: float | None = None
    reasoning_effort: str | None = None
    max_prompt_tokens: int | None = None
    max_completion_tokens: int | None = None
    truncation_strategy: Truncation = Truncation()
    metadata: dict[str, str] = {}

    @classmethod
    def of_assistant(cls, assistant_id: str | None, a: AssistantSettings) -> RunSettings:
        return cls(assistant_id=assistant_id, model=a.model, instructions=a.instructions or "",
                   tools=list(a.tools), tether_tools=list(a.tether_tools),
                   tether_breakpoints=list(a.tether_breakpoints), response_format=a.response_format or "auto",
                   temperature=a.temperature, top_p=a.top_p, reasoning_effort=a.reasoning_effort)

    def stored(self) -> dict[str, Any]:
        return {**super().stored(), "tether_tools": [t.stored() for t in self.tether_tools]}


class ThreadFields(Stored):
    metadata: dict[str, str] = {}
    tool_resources: dict[str, Any] = {}


class MessageFields(Stored):
    """A thread message: one a client wrote, or one a run wrote (`run_id` set)."""

    role: Literal["user", "assistant"]
    content: list[dict[str, Any]]
    assistant_id: str | None = None
    run_id: str | None = None
    attachments: list[Any] = []
    metadata: dict[str, str] = {}
    status: Literal["in_progress", "incomplete", "completed"] = "completed"
    completed_at: int | None = None
    incomplete_at: int | None = None
    incomplete_details: dict[str, Any] | None = None


class MessageChange(Stored):
    """A change to a message a run wrote, kept beside the run's log until its messages are
    projected (then folded into them): new metadata, or its deletion."""

    override: bool = True
    metadata: dict[str, str] = {}
    deleted: bool = False


@dataclass(slots=True)
class Assistant:
    id: str
    created_at: float
    settings: AssistantSettings


@dataclass(slots=True)
class Thread:
    id: str
    created_at: float
    fields: ThreadFields
