"""Request bodies of the Assistants API, as the `openai` SDK sends them (see shared/spec).

Unknown keys are refused (OpenAI answers "Unrecognized request argument supplied"); explicit
`null` is accepted wherever the SDK allows it and means "the default". What Tether does not
serve (files, vector stores, file_search, attachments) is refused with a 400 that says so.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Metadata = Annotated[dict[str, Annotated[str, Field(max_length=512)]], Field(max_length=16)]
NOT_SERVED = "Tether does not serve files or vector stores"


class Unsupported(ValueError):
    """A feature Tether refuses on purpose (not a malformed body)."""


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # "temperature": false is an error, not 0.0

    def given(self) -> dict[str, Any]:
        """The fields the client sent (explicit nulls included), as plain data."""
        data = self.model_dump(mode="json", include=self.model_fields_set)
        if data.get("tether_tools"):  # as the client wrote them, without the options it left out
            data["tether_tools"] = [{k: v for k, v in t.items() if v is not None} for t in data["tether_tools"]]
        return data

    @field_validator("metadata", check_fields=False)
    @classmethod
    def _metadata_keys(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for key in value or {}:
            if len(key) > 64:
                raise ValueError(f"metadata keys are at most 64 characters, {key[:20]!r}… is longer")
        return value

    @field_validator("response_format", check_fields=False)
    @classmethod
    def _format(cls, value: Any) -> Any:
        return check_response_format(value)

    @field_validator("tool_resources", check_fields=False)
    @classmethod
    def _no_resources(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        for kind, resource in (value or {}).items():
            if resource is not None and not isinstance(resource, dict):
                raise ValueError(f"tool_resources.{kind} must be an object")
            if resource and any(resource.values()):
                raise ValueError(f"tool_resources.{kind}: {NOT_SERVED}; remove the file ids")
        return value


class FunctionDefinition(Body):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolParam(Body):
    type: Literal["function", "code_interpreter", "file_search"]
    function: FunctionDefinition | None = None
    file_search: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _shape(self) -> ToolParam:
        if self.type == "file_search":
            raise ValueError(f"file_search tools are not supported: {NOT_SERVED}")
        if self.type == "function" and self.function is None:
            raise ValueError("a function tool needs `function` with at least a `name`")
        return self


class TetherTool(Body):
    """A server-side tool: run by Tether, never by the client."""

    type: Literal["calculator", "python", "mcp"]
    server: str | None = Field(default=None, description="for type mcp: a server configured with --mcp-config")
    options: dict[str, Any] | None = None


ResponseFormat = Literal["auto"] | dict[str, Any]
Temperature = Annotated[float, Field(ge=0, le=2)]
TopP = Annotated[float, Field(ge=0, le=1)]


class AssistantFields(Body):
    name: Annotated[str, Field(max_length=256)] | None = None
    description: Annotated[str, Field(max_length=512)] | None = None
    instructions: Annotated[str, Field(max_length=256_000)] | None = None
    tools: Annotated[list[ToolParam], Field(max_length=128)] | None = None
    tool_resources: dict[str, Any] | None = None
    metadata: Metadata | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    response_format: ResponseFormat | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    tether_tools: list[TetherTool] | None = None
    tether_breakpoints: list[str] | None = None


class AssistantCreate(AssistantFields):
    model: Annotated[str, Field(min_length=1, max_length=256)]


class AssistantUpdate(AssistantFields):
    model: Annotated[str, Field(min_length=1, max_length=256)] | None = None


class ImageUrl(Body):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


MAX_TEXT = 256_000  # characters of one message's text, as OpenAI allows


class ContentPart(Body):
    type: Literal["text", "image_url", "image_file"]
    text: Annotated[str, Field(max_length=MAX_TEXT)] | None = None
    image_url: ImageUrl | None = None
    image_file: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _shape(self) -> ContentPart:
        if self.type == "image_file":
            raise ValueError(f"image_file content is not supported: {NOT_SERVED}; use image_url")
        if self.type == "text" and self.text is None:
            raise ValueError("a text part needs `text`")
        if self.type == "image_url" and self.image_url is None:
            raise ValueError("an image_url part needs `image_url`")
        return self


class MessageCreate(Body):
    role: Literal["user", "assistant"]
    content: Annotated[str, Field(max_length=MAX_TEXT)] | Annotated[list[ContentPart], Field(min_length=1,
                                                                                             max_length=100)]
    attachments: list[dict[str, Any]] | None = None
    metadata: Metadata | None = None

    @field_validator("attachments")
    @classmethod
    def _no_attachments(cls, value: list[Any] | None) -> list[Any] | None:
        if value:
            raise ValueError(f"attachments are not supported: {NOT_SERVED}")
        return value


class ThreadCreate(Body):
    messages: Annotated[list[MessageCreate], Field(max_length=32)] | None = None
    metadata: Metadata | None = None
    tool_resources: dict[str, Any] | None = None


class ThreadUpdate(Body):
    metadata: Metadata | None = None
    tool_resources: dict[str, Any] | None = None


class MetadataUpdate(Body):
    metadata: Metadata | None = None


class Truncation(Body):
    type: Literal["auto", "last_messages"]
    last_messages: Annotated[int, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _shape(self) -> Truncation:
        if self.type == "last_messages" and self.last_messages is None:
            raise ValueError("truncation_strategy of type last_messages needs `last_messages`")
        return self


class NamedTool(Body):
    type: Literal["function", "code_interpreter", "file_search"]
    function: dict[str, str] | None = None


class RunFields(Body):
    model: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    instructions: str | None = None
    tools: Annotated[list[ToolParam], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedTool | None = None
    parallel_tool_calls: bool | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    response_format: ResponseFormat | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    max_prompt_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    truncation_strategy: Truncation | None = None
    metadata: Metadata | None = None
    stream: bool | None = None
    tether_tools: list[TetherTool] | None = None
    tether_breakpoints: list[str] | None = None


class RunCreate(RunFields):
    assistant_id: str
    additional_instructions: str | None = None
    additional_messages: Annotated[list[MessageCreate], Field(max_length=32)] | None = None


class ThreadAndRun(RunFields):
    assistant_id: str
    thread: ThreadCreate | None = None
    tool_resources: dict[str, Any] | None = None


class ToolOutput(Body):
    tool_call_id: str
    output: str | None = None


class SubmitToolOutputs(Body):
    tool_outputs: list[ToolOutput]
    stream: bool | None = None


class BreakpointCreate(Body):
    spec: str = Field(description='e.g. "before_tool:send_*" or "after_model if run.cost_usd > 0.2"')
    once: bool = False


class AnswerItem(Body):
    action: Literal["continue", "step", "edit", "skip", "approve", "deny", "rerun", "supply", "abort"]
    payload: Any = None


class Answer(Body):
    pause_id: str = Field(description="the pause being answered: a stale one gets 409 already_resumed")
    action: Literal["continue", "step", "edit", "skip", "approve", "deny", "rerun", "supply", "abort"] = "continue"
    payload: Any = None
    answers: dict[str, AnswerItem] | None = None


class Fork(Body):
    step: Annotated[int, Field(ge=1)]
    edits: dict[str, Any] | None = None


def check_response_format(value: Any) -> Any:
    if value is None or value == "auto":
        return value
    if not isinstance(value, dict) or value.get("type") not in ("text", "json_object", "json_schema"):
        raise ValueError('response_format is "auto", {"type": "text"}, {"type": "json_object"} or '
                         '{"type": "json_schema", "json_schema": {...}}')
    if value["type"] == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise ValueError("a json_schema response_format needs json_schema.name")
        if "schema" in spec and not isinstance(spec["schema"], dict):
            raise ValueError("json_schema.schema must be a JSON schema object")
    return value
