"""The agent of the shared-budget tests: many runs share one dollar budget, their calls overlap.

Each run asks for `ROUNDS - 1` tool calls, then answers: ROUNDS model calls. The model is priced
($5 per million tokens, in and out), carries a cap of MAX_TOKENS output tokens (so a call's worst
case is about (input bytes + 2000) × $5e-6 ≈ $0.012), really uses 400 + 600 tokens ($0.005), and
sleeps SLEEP_S so that the calls of concurrent runs are in flight together: `in_flight` counts them,
`peak` keeps the most there were at once.
"""

from __future__ import annotations

import asyncio
import os

from tether import Agent, Limits, tool
from tether.adapters.models.scripted import ScriptedModel, call_tool, reply
from tether.domain.models import ModelRequest, ModelResponse
from tether.domain.usage import Usage

ROUNDS = 3
MAX_TOKENS = 2000
PRICE_PER_MTOK = 5.0
USAGE = Usage(400, 600)
SLEEP_S = float(os.environ.get("TETHER_BUDGET_SLEEP_S", "0.3"))


class Gauge:
    in_flight = 0
    peak = 0
    calls = 0


@tool
def step(n: int) -> str:
    """One step of work."""
    return f"step {n} done"


async def _model(request: ModelRequest) -> ModelResponse:
    Gauge.in_flight += 1
    Gauge.peak = max(Gauge.peak, Gauge.in_flight)
    Gauge.calls += 1
    try:
        await asyncio.sleep(SLEEP_S)
    finally:
        Gauge.in_flight -= 1
    done = sum(1 for m in request.messages if m.role == "tool")
    if done < ROUNDS - 1:
        return call_tool("step", {"n": done + 1}, usage=USAGE)
    return reply(f"finished after {done} steps", usage=USAGE)


agent = Agent("budgeted", ScriptedModel(_model, ref="scripted:budget_agent:model",
                                        input_price_per_mtok=PRICE_PER_MTOK, output_price_per_mtok=PRICE_PER_MTOK),
              tools=[step], limits=Limits(max_steps=ROUNDS + 2), settings={"max_tokens": MAX_TOKENS},
              ref="budget_agent:agent")
