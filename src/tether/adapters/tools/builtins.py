"""Built-in tools, by the names agent files use, and what each one's options are.

Options come in two kinds (`BuiltinSpec`): **limits** bound what one call may use (a smaller value
is always safer), and **operator options** choose host paths, backends and names. An agent file is
trusted and sets both; over HTTP only the operator does, and a client may only narrow limits
(see `tether.services.server_tools`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tether.domain.errors import ConfigError
from tether.domain.tools import ToolError, ToolPolicy


@dataclass(frozen=True, slots=True)
class BuiltinSpec:
    """A built-in tool: how to make it, and its options.

    `limit_types()` maps each limit option to its type and default (a function: the sandbox's
    module is imported only when asked); `operator_options` are never a client's to choose (host
    paths, backends, names).
    """

    factory: Callable[..., Any]
    limit_types: Callable[[], Mapping[str, tuple[type, float]]] = dict
    operator_options: frozenset[str] = frozenset()

    @property
    def options(self) -> frozenset[str]:
        return frozenset(self.limit_types()) | self.operator_options


def _calculator() -> Any:
    from tether.adapters.tools.calculator import CalculatorError, calculator
    from tether.adapters.tools.function import FunctionTool

    # Pure, bounded computation: idempotent, and cheap enough to run inline rather than in a thread.
    async def calc(expression: str) -> str:
        try:
            return calculator(expression)
        except CalculatorError as e:
            raise ToolError(str(e)) from None

    calc.__doc__ = calculator.__doc__
    return FunctionTool(calc, name="calculator", policy=ToolPolicy(timeout_s=5, idempotent=True))


def _python(backend: str = "subprocess", **limits: Any) -> Any:
    """Options: backend ("subprocess": CPython in bubblewrap; "monty": the Monty subset), work_root,
    name, and SandboxLimits fields (cpu_s, wall_s, memory_mb, processes, output_bytes, files_mb, max_files)."""
    from tether.adapters.tools.sandbox import python_tool

    if backend not in ("subprocess", "monty"):
        raise ConfigError(f"the python tool's backend is \"subprocess\" or \"monty\", not {backend!r}")
    return python_tool(backend, **limits)  # type: ignore[arg-type]


@functools.cache
def _sandbox_limits() -> dict[str, tuple[type, float]]:
    from dataclasses import fields

    from tether.adapters.tools.sandbox.tool import SandboxLimits

    defaults = SandboxLimits()
    return {f.name: (float if f.type == "float" else int, getattr(defaults, f.name)) for f in fields(SandboxLimits)}


BUILTINS: dict[str, BuiltinSpec] = {
    "calculator": BuiltinSpec(_calculator),
    "python": BuiltinSpec(_python, _sandbox_limits, frozenset({"backend", "work_root", "name"})),
}


def builtin(name: str, options: dict[str, Any] | None = None) -> Any:
    """A built-in tool by name; `options` (an agent file's `[tool_options.NAME]`) configure it."""
    spec = builtin_spec(name)
    unknown = sorted(set(options or {}) - spec.options)
    if unknown:
        takes = f"takes {', '.join(sorted(spec.options))}" if spec.options else "takes no options"
        raise ConfigError(f"bad options for the {name} tool: unknown option {', '.join(map(repr, unknown))}; "
                          f"it {takes}")
    try:
        return spec.factory(**(options or {}))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad options for the {name} tool: {e}") from None


def builtin_spec(name: str) -> BuiltinSpec:
    try:
        return BUILTINS[name]
    except KeyError:
        raise ConfigError(f"unknown built-in tool {name!r}; built-ins are: {', '.join(sorted(BUILTINS))}. "
                          "For your own function use 'module:function'.") from None
