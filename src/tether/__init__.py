"""Tether: a runtime for tool-using AI agents that you can stop, look inside, change and continue.

The public API is loaded lazily, so `import tether` stays light: SDKs, SQLAlchemy and pricing
data load only when first used. `__all__` is a literal list and every name is imported under
`TYPE_CHECKING`, so type checkers see the real types (tests/test_public_api.py keeps the three in step).
"""

import importlib as _importlib
import typing  # as `typing.TYPE_CHECKING` below, which mypy and pyright both read

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AlreadyFinished",
    "AlreadyResumed",
    "BadLine",
    "Batch",
    "BatchInfo",
    "BatchInputChanged",
    "BatchNotFound",
    "BatchOptions",
    "BatchProgress",
    "BatchState",
    "BatchesService",
    "Breakpoint",
    "BreakpointError",
    "Case",
    "CaseResult",
    "CaseStatus",
    "ClientTool",
    "ConfigError",
    "Event",
    "FunctionTool",
    "InvalidRequest",
    "LeaseLost",
    "Limits",
    "MemoryStore",
    "Message",
    "ModelError",
    "NotFound",
    "PauseReason",
    "PendingItem",
    "Record",
    "ReplayDiverged",
    "Run",
    "RunInfo",
    "RunNotFound",
    "RunStatus",
    "RunView",
    "RunsService",
    "SchemaError",
    "ScriptedModel",
    "Step",
    "StepStatus",
    "Stop",
    "StoreConflict",
    "StoreError",
    "TetherError",
    "ToolContext",
    "ToolError",
    "ToolPolicy",
    "Usage",
    "call_tool",
    "load_agent_file",
    "open_service",
    "parse_csv",
    "parse_jsonl",
    "reply",
    "tool",
]

# Where each public name lives; imported on first use.
_EXPORTS = {
    "Agent": "tether.services.agents",
    "load_agent_file": "tether.services.agents",
    "RunsService": "tether.services.runs",
    "open_service": "tether.services.runs",
    "Run": "tether.services.views",
    "Batch": "tether.services.batches",
    "BatchesService": "tether.services.batches",
    "BatchInfo": "tether.domain.batches",
    "BatchOptions": "tether.domain.batches",
    "BatchProgress": "tether.domain.batches",
    "BatchState": "tether.domain.batches",
    "BadLine": "tether.domain.batches",
    "Case": "tether.domain.batches",
    "CaseResult": "tether.domain.batches",
    "CaseStatus": "tether.domain.batches",
    "parse_jsonl": "tether.domain.batches",
    "parse_csv": "tether.domain.batches",
    "RunView": "tether.services.views",
    "tool": "tether.adapters.tools.function",
    "FunctionTool": "tether.adapters.tools.function",
    "ClientTool": "tether.adapters.tools.client",
    "ScriptedModel": "tether.adapters.models.scripted",
    "reply": "tether.adapters.models.scripted",
    "call_tool": "tether.adapters.models.scripted",
    "MemoryStore": "tether.adapters.store.memory",
    "ToolPolicy": "tether.domain.tools",
    "ToolContext": "tether.domain.tools",
    "Limits": "tether.domain.agents",
    "Message": "tether.domain.messages",
    "Event": "tether.domain.events",
    "Record": "tether.domain.records",
    "PendingItem": "tether.domain.records",
    "RunStatus": "tether.domain.records",
    "PauseReason": "tether.domain.records",
    "RunInfo": "tether.domain.runs",
    "Step": "tether.domain.steps",
    "StepStatus": "tether.domain.steps",
    "Usage": "tether.domain.usage",
    "Breakpoint": "tether.domain.breakpoints",
    "Stop": "tether.domain.breakpoints",
    # every error class, from the one module that gathers them
    "AlreadyFinished": "tether.errors",
    "AlreadyResumed": "tether.errors",
    "BatchInputChanged": "tether.errors",
    "BatchNotFound": "tether.errors",
    "BreakpointError": "tether.errors",
    "ConfigError": "tether.errors",
    "InvalidRequest": "tether.errors",
    "LeaseLost": "tether.errors",
    "ModelError": "tether.errors",
    "NotFound": "tether.errors",
    "ReplayDiverged": "tether.errors",
    "RunNotFound": "tether.errors",
    "SchemaError": "tether.errors",
    "StoreConflict": "tether.errors",
    "StoreError": "tether.errors",
    "TetherError": "tether.errors",
    "ToolError": "tether.errors",
}

if typing.TYPE_CHECKING:
    from tether.adapters.models.scripted import ScriptedModel, call_tool, reply
    from tether.adapters.store.memory import MemoryStore
    from tether.adapters.tools.client import ClientTool
    from tether.adapters.tools.function import FunctionTool, tool
    from tether.domain.agents import Limits
    from tether.domain.batches import (
        BadLine,
        BatchInfo,
        BatchOptions,
        BatchProgress,
        BatchState,
        Case,
        CaseResult,
        CaseStatus,
        parse_csv,
        parse_jsonl,
    )
    from tether.domain.breakpoints import Breakpoint, Stop
    from tether.domain.events import Event
    from tether.domain.messages import Message
    from tether.domain.records import PauseReason, PendingItem, Record, RunStatus
    from tether.domain.runs import RunInfo
    from tether.domain.steps import Step, StepStatus
    from tether.domain.tools import ToolContext, ToolPolicy
    from tether.domain.usage import Usage
    from tether.errors import (
        AlreadyFinished,
        AlreadyResumed,
        BatchInputChanged,
        BatchNotFound,
        BreakpointError,
        ConfigError,
        InvalidRequest,
        LeaseLost,
        ModelError,
        NotFound,
        ReplayDiverged,
        RunNotFound,
        SchemaError,
        StoreConflict,
        StoreError,
        TetherError,
        ToolError,
    )
    from tether.services.agents import Agent, load_agent_file
    from tether.services.batches import Batch, BatchesService
    from tether.services.runs import RunsService, open_service
    from tether.services.views import Run, RunView


if not typing.TYPE_CHECKING:  # hidden from type checkers: they would let `tether.anything` through

    def __getattr__(name: str) -> object:
        module = _EXPORTS.get(name)
        if module is None:
            raise AttributeError(f"module 'tether' has no attribute {name!r}")
        value = getattr(_importlib.import_module(module), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
