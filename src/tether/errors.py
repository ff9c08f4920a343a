"""Every error class a user of Tether can meet, in one place: `from tether.errors import ...`.

Each error with a message meant for the user is a `TetherError`; `ToolError` is what a tool raises
for the model to see as the call's result. The classes live beside the code that raises them; this
module only re-exports them. `StoreError` is defined with the SQL store, so it is loaded when first
asked for: `import tether.errors` stays as light as `import tether`.
"""

import importlib as _importlib
import typing  # as `typing.TYPE_CHECKING` below, which mypy and pyright both read

from tether.adapters.store.migrations import SchemaError
from tether.domain.breakpoints import BreakpointError
from tether.domain.errors import (
    AlreadyFinished,
    AlreadyResumed,
    BatchInputChanged,
    BatchNotFound,
    ConfigError,
    InvalidRequest,
    LeaseLost,
    ModelError,
    NotFound,
    ReplayDiverged,
    RunNotFound,
    StoreConflict,
    TetherError,
)
from tether.domain.tools import ToolError

__all__ = [
    "AlreadyFinished",
    "AlreadyResumed",
    "BatchInputChanged",
    "BatchNotFound",
    "BreakpointError",
    "ConfigError",
    "InvalidRequest",
    "LeaseLost",
    "ModelError",
    "NotFound",
    "ReplayDiverged",
    "RunNotFound",
    "SchemaError",
    "StoreConflict",
    "StoreError",
    "TetherError",
    "ToolError",
]

# Defined next to SQLAlchemy code: imported on first use, not with this module.
_LAZY = {"StoreError": "tether.adapters.store.sql"}

if typing.TYPE_CHECKING:
    from tether.adapters.store.sql import StoreError


if not typing.TYPE_CHECKING:  # hidden from type checkers: they would let `tether.errors.anything` through

    def __getattr__(name: str) -> type[Exception]:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'tether.errors' has no attribute {name!r}")
        value: type[Exception] = getattr(_importlib.import_module(module), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
