"""A priced fake model for the batch budget test (tests/test_batch_budget.py): $20 / $100 per million
input / output tokens, 100 ms a call (so that many calls are in flight at once), honouring the request's
output cap as a real endpoint does. A case is two calls: one asks for `lookup`, the next answers.

IN_FLIGHT[1] is the most calls seen in flight at once (in this process).
"""

from __future__ import annotations

import asyncio

from tether.adapters.models.scripted import ScriptedModel, call_tool, reply
from tether.domain.models import ModelRequest
from tether.domain.usage import Usage

IN_FLIGHT = [0, 0]  # now, most


async def _answer(request: ModelRequest):  # type: ignore[no-untyped-def]
    IN_FLIGHT[0] += 1
    IN_FLIGHT[1] = max(IN_FLIGHT)
    try:
        await asyncio.sleep(0.1)
    finally:
        IN_FLIGHT[0] -= 1
    cap = request.settings.get("max_completion_tokens") or request.settings.get("max_tokens") or 1000
    usage = Usage(input_tokens=150, output_tokens=min(60, cap))  # $0.003 + $0.006 = $0.009 a call
    if any(m.role == "tool" for m in request.messages):
        return reply("the answer", usage=usage)
    return call_tool("lookup", {"q": "x"}, usage=usage)


MODEL = ScriptedModel(_answer, ref="scripted:budget_batch_tools:MODEL", input_price_per_mtok=20.0,
                      output_price_per_mtok=100.0)


async def lookup(q: str) -> str:
    """Look something up."""
    return f"found {q}"
