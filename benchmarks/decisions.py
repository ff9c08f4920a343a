"""What answering pauses costs: µs per answer (check + record + fold + drive to the next pause),
and µs per record to load and fold a log that is mostly pauses and decisions, from SQLite.

    uv run python benchmarks/decisions.py            # N=200 pauses
    uv run python benchmarks/decisions.py --n 1000

The workload: `add` called N times, with a breakpoint before every call; each pause is answered
with an edit of the arguments (the costliest answer to check: it parses and re-encodes JSON).
Figures are printed with the machine's load average, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

from tether import Agent, Limits, RunsService, tool
from tether.adapters.models.scripted import ScriptedModel, call_tool, reply
from tether.adapters.store.sql import SqlStore
from tether.domain.models import ModelRequest, ModelResponse
from tether.domain.state import fold


@tool
async def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def agent(n: int) -> Agent:
    def script(request: ModelRequest) -> ModelResponse:
        done = sum(1 for m in request.messages if m.role == "tool")
        return call_tool("add", {"a": done, "b": 1}) if done < n else reply("done")

    return Agent("bench", ScriptedModel(script), tools=[add], limits=Limits(max_steps=n + 5))


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = SqlStore(f"sqlite:///{Path(tmp) / 'b.db'}")
        service = RunsService(store)
        run = await service.start(agent(n), "go", breakpoints=["before_tool:add"])
        times = []
        while run.status == "paused":
            (item,) = run.pending
            started = time.perf_counter()
            run = await service.answer(run.id, {item.id: ("edit", {"a": 1, "b": 1})})
            times.append(time.perf_counter() - started)
        assert run.status == "completed", run
        records = await store.load(run.id)
        loads, folds = [], []
        for _ in range(5):
            started = time.perf_counter()
            records = await store.load(run.id)
            loads.append(time.perf_counter() - started)
            started = time.perf_counter()
            fold(run.id, records)
            folds.append(time.perf_counter() - started)
        await store.close()
    load1, load5, load15 = os.getloadavg()
    print(f"load average {load1:.2f} {load5:.2f} {load15:.2f} (1, 5, 15 min)")
    print(f"answer an edit at a pause: {statistics.median(times) * 1e6:8.0f} µs median over {len(times)}"
          " (check, record, fold, drive to the next pause)")
    per = 1e6 / len(records)
    print(f"load {len(records)} records from SQLite: {statistics.median(loads) * per:6.1f} µs/record median")
    print(f"fold them:                     {statistics.median(folds) * per:6.1f} µs/record median")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="pauses to answer (default 200)")
    asyncio.run(main(parser.parse_args().n))
