"""A scripted model: deterministic responses from a list or from a function of the request.

Used for tests, offline demos and benchmarks. It is free (cost 0.0) unless given prices.
"""

from __future__ import annotations

import inspect
import itertools
import json
from collections.abc import Callable, Sequence
from typing import Any

from tether.domain.errors import ModelError
from tether.domain.governor import Price
from tether.domain.messages import ToolCall
from tether.domain.models import ModelRequest, ModelResponse
from tether.domain.usage import Usage

Script = Callable[[ModelRequest], "ModelResponse | str"] | Sequence["ModelResponse | str"]
_ids = itertools.count(1)


def reply(text: str, *, usage: Usage | None = None) -> ModelResponse:
    """A final answer."""
    return ModelResponse(text=text, finish_reason="stop", usage=usage or Usage())


def call_tool(name: str, arguments: dict[str, Any] | str | None = None, *, text: str | None = None,
              usage: Usage | None = None) -> ModelResponse:
    """A response asking for one tool call (`arguments` as a dict, or raw text to test bad JSON)."""
    return calls([(name, arguments)], text=text, usage=usage)


def calls(items: Sequence[tuple[str, dict[str, Any] | str | None]], *, text: str | None = None,
          usage: Usage | None = None) -> ModelResponse:
    """A response asking for several tool calls at once."""
    tool_calls = [
        ToolCall(f"scripted_{next(_ids)}", name, args if isinstance(args, str) else json.dumps(args or {}))
        for name, args in items
    ]
    return ModelResponse(text=text, tool_calls=tool_calls, finish_reason="tool_calls", usage=usage or Usage())


class ScriptedModel:
    def __init__(self, script: Script, *, ref: str = "scripted", input_price_per_mtok: float = 0.0,
                 output_price_per_mtok: float = 0.0) -> None:
        self.ref = ref
        self._fn = script if callable(script) else None
        self._list = None if callable(script) else list(script)
        self._is_async = self._fn is not None and inspect.iscoroutinefunction(self._fn)
        self._prices = (input_price_per_mtok, output_price_per_mtok)
        self.calls = 0  # how many times the model was really asked (tests count this)

    async def complete(self, request: ModelRequest,
                       on_delta: Callable[[str], None] | None = None) -> ModelResponse:
        self.calls += 1
        if self._fn is not None:
            out = await self._fn(request) if self._is_async else self._fn(request)  # type: ignore[misc]
        else:
            assert self._list is not None
            if not self._list:
                raise ModelError(f"scripted model {self.ref!r} has no responses left (asked {self.calls} times)")
            out = self._list.pop(0)
        response = reply(out) if isinstance(out, str) else out
        if on_delta is not None and response.text:
            on_delta(response.text)
        return response

    def price(self) -> Price:
        return Price.per_million(*self._prices)

    def cost_usd(self, response: ModelResponse) -> float | None:
        pin, pout = self._prices
        return (response.usage.input_tokens * pin + response.usage.output_tokens * pout) / 1e6
