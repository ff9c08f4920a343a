"""Client-side tools: declared by the client (e.g. an Assistants `function` tool) and run by it.

The run pauses in `client_tool` until the client submits the outputs.
"""

from __future__ import annotations

from typing import Any

from tether.domain.tools import ToolContext, ToolError, ToolPolicy


class ClientTool:
    kind = "client"
    cancellable = True

    def __init__(self, name: str, description: str = "", parameters: dict[str, Any] | None = None) -> None:
        self.name, self.description = name, description
        self.parameters = parameters or {"type": "object", "properties": {}}
        self.policy = ToolPolicy()

    def validate(self, arguments: dict[str, Any]) -> Any:
        return arguments

    async def call(self, validated: Any, ctx: ToolContext) -> Any:
        raise ToolError(f"{self.name} is run by the client, not by Tether")
