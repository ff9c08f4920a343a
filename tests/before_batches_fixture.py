"""The agents of tests/fixtures/before_batches.db, and the script that wrote it (with the code before
batches and the governor: schema 4, per-run budgets checked after each call).

    python tests/before_batches_fixture.py    # writes tests/fixtures/before_batches.db

The database holds a finished priced run, a run paused at its cost budget (the old rule let the
spend reach the budget before pausing), a run paused at a breakpoint, a run interrupted mid-way
(queued, its lease given back) and a thread with two runs, so that a test can show the new code
migrates it and its old runs still fold, show, resume, answer and fork (tests/test_before_batches.py).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from tether.adapters.models.scripted import ScriptedModel, call_tool, reply
from tether.adapters.tools.function import tool
from tether.domain.agents import Limits
from tether.domain.models import ModelRequest
from tether.domain.usage import Usage
from tether.services.agents import Agent

HERE = Path(__file__).parent / "fixtures"
PRICES = {"input_price_per_mtok": 1000.0, "output_price_per_mtok": 2000.0}  # $0.001 / $0.002 a token


@tool
async def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def _adder(request: ModelRequest, k: int) -> Any:
    results = [m.text for m in request.messages if m.role == "tool"]
    usage = Usage(input_tokens=10, output_tokens=5)
    if len(results) < k:
        return call_tool("add", {"a": len(results), "b": 1}, usage=usage)
    return reply(f"result {results[-1]}", usage=usage)


def _model(k: int) -> ScriptedModel:
    return ScriptedModel(lambda r: _adder(r, k), **PRICES)


ADD3 = Agent("adder3", _model(3), tools=[add], ref="before_batches_fixture:ADD3")
# Each call costs $0.02: the old rule pauses once the spend has reached $0.05, after the third call.
BUDGET = Agent("budget", _model(5), tools=[add], limits=Limits(max_cost_usd=0.05),
               ref="before_batches_fixture:BUDGET")
AGENTS = [ADD3, BUDGET]


async def make(service: Any) -> dict[str, str]:
    runs: dict[str, str] = {}
    runs["completed"] = (await service.start(ADD3, "go")).id
    view = await service.start(BUDGET, "go")
    assert view.status == "paused" and view.pending[0].reason == "budget", view
    runs["paused_budget"] = view.id
    runs["paused_before_tool"] = (await service.start(ADD3, "go", breakpoints=["before_tool if step == 4"])).id
    # Interrupted: answered, but not advanced yet (queued, no lease): a resume goes on.
    view = await service.start(ADD3, "go", breakpoints=["before_tool if step == 2"])
    await service.answer(view.id, by="fixture", drive=False)
    runs["queued"] = view.id
    first = await service.start(ADD3, "hello", thread_id="thread_before_batches")
    runs["thread_first"] = first.id
    runs["thread_second"] = (await service.continue_thread("thread_before_batches", "again", agent=ADD3)).id
    return runs


async def main() -> None:
    from tether.adapters.store.sql import SqlStore
    from tether.services.runs import RunsService

    HERE.mkdir(exist_ok=True)
    work = HERE / "before_batches.tmp.db"
    work.unlink(missing_ok=True)
    store = SqlStore(f"sqlite:///{work}")
    service = RunsService(store)
    for agent in AGENTS:
        service.register(agent)
    runs = await make(service)
    await store.close()
    shutil.move(work, HERE / "before_batches.db")
    (HERE / "before_batches.json").write_text(json.dumps(runs, indent=1) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    asyncio.run(main())
