"""Built-in tools, by the names agent files use."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tether.domain.errors import ConfigError
from tether.domain.tools import ToolError, ToolPolicy


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
    """Options: backend ("subprocess": CPython in bubblewrap; "monty": the Monty subset) and
    SandboxLimits fields (cpu_s, wall_s, memory_mb, processes, output_bytes, files_mb, max_files)."""
    from tether.adapters.tools.sandbox import python_tool

    if backend not in ("subprocess", "monty"):
        raise ConfigError(f"the python tool's backend is \"subprocess\" or \"monty\", not {backend!r}")
    return python_tool(backend, **limits)  # type: ignore[arg-type]


BUILTINS: dict[str, Callable[..., Any]] = {"calculator": _calculator, "python": _python}


def builtin(name: str, options: dict[str, Any] | None = None) -> Any:
    """A built-in tool by name; `options` (an agent file's `[tool_options.NAME]`) configure it."""
    try:
        factory = BUILTINS[name]
    except KeyError:
        raise ConfigError(f"unknown built-in tool {name!r}; built-ins are: {', '.join(sorted(BUILTINS))}. "
                          "For your own function use 'module:function'.") from None
    try:
        return factory(**(options or {}))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad options for the {name} tool: {e}") from None
