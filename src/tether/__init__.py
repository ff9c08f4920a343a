"""Tether: a runtime for tool-using AI agents that you can stop, look inside, change and continue.

The public API is loaded lazily, so `import tether` stays light: SDKs, SQLAlchemy and pricing
data load only when first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Agent": "tether.services.agents",
    "load_agent_file": "tether.services.agents",
    "RunsService": "tether.services.runs",
    "RunView": "tether.services.runs",
    "open_service": "tether.services.runs",
    "tool": "tether.adapters.tools.function",
    "FunctionTool": "tether.adapters.tools.function",
    "ClientTool": "tether.adapters.tools.client",
    "ScriptedModel": "tether.adapters.models.scripted",
    "reply": "tether.adapters.models.scripted",
    "call_tool": "tether.adapters.models.scripted",
    "MemoryStore": "tether.adapters.store.memory",
    "ToolPolicy": "tether.domain.tools",
    "ToolContext": "tether.domain.tools",
    "ToolError": "tether.domain.tools",
    "Limits": "tether.domain.agents",
    "Message": "tether.domain.messages",
    "Event": "tether.domain.events",
    "TetherError": "tether.domain.errors",
    "ConfigError": "tether.domain.errors",
    "AlreadyResumed": "tether.domain.errors",
    "ReplayDiverged": "tether.domain.errors",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from tether.adapters.models.scripted import ScriptedModel, call_tool, reply
    from tether.adapters.store.memory import MemoryStore
    from tether.adapters.tools.client import ClientTool
    from tether.adapters.tools.function import FunctionTool, tool
    from tether.domain.agents import Limits
    from tether.domain.errors import AlreadyResumed, ConfigError, ReplayDiverged, TetherError
    from tether.domain.events import Event
    from tether.domain.messages import Message
    from tether.domain.tools import ToolContext, ToolError, ToolPolicy
    from tether.services.agents import Agent, load_agent_file
    from tether.services.runs import RunsService, RunView, open_service


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tether' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return [*globals(), *__all__]
