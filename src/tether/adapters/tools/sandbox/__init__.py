"""The `python` tool's sandboxes: CPython in bubblewrap (`subprocess`) or `pydantic-monty` (`monty`)."""

from tether.adapters.tools.sandbox.monty_backend import MontyBackend
from tether.adapters.tools.sandbox.subprocess_backend import SubprocessBackend, isolation_available
from tether.adapters.tools.sandbox.tool import (
    FORCE_UNAVAILABLE_ENV,
    PythonTool,
    SandboxBackend,
    SandboxLimits,
    SandboxResult,
    python_tool,
)

__all__ = [
    "FORCE_UNAVAILABLE_ENV",
    "MontyBackend",
    "PythonTool",
    "SandboxBackend",
    "SandboxLimits",
    "SandboxResult",
    "SubprocessBackend",
    "isolation_available",
    "python_tool",
]
