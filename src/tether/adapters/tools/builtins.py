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


BUILTINS: dict[str, Callable[[], Any]] = {"calculator": _calculator}


def builtin(name: str) -> Any:
    try:
        factory = BUILTINS[name]
    except KeyError:
        raise ConfigError(f"unknown built-in tool {name!r}; built-ins are: {', '.join(sorted(BUILTINS))}. "
                          "For your own function use 'module:function'.") from None
    return factory()
