"""The agent of tests/fixtures/budgets_v4.db, and the script that wrote it with the code before the
governor (schema version 4, run_started without `budgets`, per-run limits checked after the fact).

    PYTHONPATH=OLD_CHECKOUT/src python tests/budgets_v4_fixture.py   # writes tests/fixtures/budgets_v4.db

It holds two runs of `agent`: one completed, one paused on its max_tokens budget (which the old code
let it reach: 3 calls of 110 tokens past a limit of 250).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from tether.adapters.models.scripted import ScriptedModel, call_tool, reply
from tether.adapters.tools.function import tool
from tether.domain.agents import Limits
from tether.domain.models import ModelRequest
from tether.domain.usage import Usage
from tether.services.agents import Agent

FIXTURE = Path(__file__).parent / "fixtures" / "budgets_v4.db"


@tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def script(request: ModelRequest):
    results = [m.text for m in request.messages if m.role == "tool"]
    if len(results) < 4:
        return call_tool("add", {"a": len(results), "b": 1}, usage=Usage(100, 10))
    return reply(f"result {results[-1]}", usage=Usage(100, 10))


agent = Agent("budgeted_v4", ScriptedModel(script, input_price_per_mtok=1.0, output_price_per_mtok=1.0),
              tools=[add], ref="budgets_v4_fixture:agent")
limited = Agent("budgeted_v4", ScriptedModel(script, input_price_per_mtok=1.0, output_price_per_mtok=1.0),
                tools=[add], ref="budgets_v4_fixture:agent", limits=Limits(max_tokens=250))


async def main() -> None:
    from tether.adapters.store.sql import SqlStore
    from tether.services.runs import RunsService

    FIXTURE.unlink(missing_ok=True)
    store = SqlStore(f"sqlite:///{FIXTURE}")
    service = RunsService(store)
    done = await service.start(agent, "go")
    paused = await service.start(limited, "go")
    print(done.id, done.status, paused.id, paused.status, file=sys.stderr)
    await store.close()


if __name__ == "__main__":
    asyncio.run(main())
