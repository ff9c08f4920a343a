"""The batch benchmark: durable batches of many cases, against the ideal and the CPU floor.

Each case is one agent run of two model calls and one tool call: an in-process model that waits
50 ms (a remote model's latency), asks for `add(a=…, b=1)`, then answers. Every case's run is durable
on a SQLite file (NORMAL), as `tether batch run` makes it.

    uv run python benchmarks/batch.py                    # 10,000 cases (a few minutes)
    uv run python benchmarks/batch.py --cases 1000       # smaller
    uv run python benchmarks/batch.py --quick            # CI: 400 cases, the same sections

Targets (issue 12):
- concurrency 100: wall time ≤ 1.3× the ideal (cases × 2 × 50 ms ÷ 100);
- concurrency 1,000 (CPU-bound): wall time ≤ 1.2× the CPU floor (cases × the process CPU time per case
  measured at concurrency 10 in the same sitting);
- peak memory flat in the number of cases (it grows with the concurrency, not the cases);
- `resume` of a 10,000-case batch with 9,990 done starts its first new case in under 2 s.

The process is tuned as `tether batch run` tunes itself (`tether.runtime.tune_gc()`). Process CPU
time is the figure to trust on a shared machine; every section prints the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from tether.domain.batches import BatchOptions, Case

from tether import Agent, Limits, tool
from tether.adapters.models.scripted import ScriptedModel, call_tool, reply
from tether.domain.models import ModelRequest
from tether.runtime import tune_gc
from tether.services.compose import Services, open_services

DELAY_S = 0.05
FIRST_CALL: list[float] = []  # when the model was first called (the resume section reads it)


@tool
async def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


async def _model(request: ModelRequest):  # type: ignore[no-untyped-def]
    if not FIRST_CALL:
        FIRST_CALL.append(time.perf_counter())
    await asyncio.sleep(DELAY_S)
    if any(m.role == "tool" for m in request.messages):
        return reply("done")
    return call_tool("add", {"a": len(request.messages), "b": 1})


AGENT = Agent("bench", ScriptedModel(_model), tools=[add], limits=Limits(max_steps=3), ref="batch_bench:AGENT")


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def cases(n: int) -> list[Case]:
    return [Case(i, str(i), f"case {i}", {}) for i in range(n)]


def services(folder: Path, name: str) -> Services:
    s = open_services(database_url=f"sqlite:///{folder / name}.db")
    s.runs.register(AGENT)
    return s


async def timed(folder: Path, name: str, n: int, concurrency: int) -> tuple[float, float, int]:
    """(wall s, process CPU s, cases completed) of one batch run from creation to its end."""
    s = services(folder, name)
    try:
        batch = await s.batches.create(AGENT, cases(n), BatchOptions(concurrency=concurrency))
        t, c = time.perf_counter(), time.process_time()
        info = await s.batches.run(batch.id, concurrency=concurrency)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        return wall, cpu, info.counts.get("completed", 0)  # type: ignore[call-overload]
    finally:
        await s.close()


async def throughput(folder: Path, n: int) -> None:
    print(f"\n## {n:,} cases (2 model calls + 1 tool, {DELAY_S * 1000:.0f} ms model), SQLite  [{load()}]")
    floor_n = min(n, 200)
    wall10, cpu10, done10 = await timed(folder, "c10", floor_n, 10)
    per_case = cpu10 / floor_n
    print(f"concurrency 10 ({floor_n} cases): {wall10:.1f} s, process CPU {per_case * 1e6:,.0f} µs per case"
          f" ({done10} completed)")
    for concurrency in (100, 1000):
        wall, cpu, done = await timed(folder, f"c{concurrency}", n, concurrency)
        ideal = n * 2 * DELAY_S / concurrency
        floor = n * per_case
        print(f"concurrency {concurrency:>5}: wall {wall:6.1f} s = {wall / ideal:4.2f}× ideal ({ideal:.1f} s), "
              f"{wall / floor:4.2f}× CPU floor ({floor:.1f} s); CPU {cpu / n * 1e6:,.0f} µs per case; "
              f"{done:,} completed  [{load()}]")
        assert done == n, f"only {done} of {n} cases completed"


async def memory(folder: Path, sizes: list[int], concurrency: int) -> None:
    print(f"\n## peak memory at concurrency {concurrency}, by the number of cases  [{load()}]")
    for n in sizes:
        s = services(folder, f"mem{n}")
        try:
            batch = await s.batches.create(AGENT, cases(n), BatchOptions(concurrency=concurrency))
            tracemalloc.start()
            await s.batches.run(batch.id, concurrency=concurrency)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        finally:
            await s.close()
        print(f"{n:>7,} cases: peak traced {peak / 1e6:6.1f} MB while running")


async def resume(folder: Path, n: int, left: int) -> None:
    print(f"\n## resume of a {n:,}-case batch with about {n - left:,} done  [{load()}]")
    s = services(folder, "resume")
    try:
        batch = await s.batches.create(AGENT, cases(n), BatchOptions(concurrency=100))
        # Most cases fast, then the last stretch at concurrency 10, stopped so that about `left` cases are
        # left: those never started, and the ten in flight at the stop (interrupted, left resumable).
        for concurrency, until in ((500, n - 50 * left), (10, n - left - 10)):
            stop, finished = asyncio.Event(), 0
            before = (await s.batches.get(batch.id)).counts.get("completed", 0)  # type: ignore[call-overload]

            def on_case(result: object, until: int = until, before: int = before) -> None:
                nonlocal finished
                finished += 1
                if before + finished >= until:
                    stop.set()

            await s.batches.run(batch.id, concurrency=concurrency, on_case=on_case, stop=stop)
        done = (await s.batches.get(batch.id)).counts.get("completed", 0)  # type: ignore[call-overload]
    finally:
        await s.close()
    s = services(folder, "resume")  # a new process would open it the same way
    try:
        FIRST_CALL.clear()
        t = time.perf_counter()
        task = asyncio.ensure_future(s.batches.run(batch.id, concurrency=100))
        while not FIRST_CALL and not task.done():
            await asyncio.sleep(0.001)
        first = (FIRST_CALL[0] if FIRST_CALL else time.perf_counter()) - t
        info = await task
    finally:
        await s.close()
    print(f"{done:,} done before, {n - done} to do; the resume's first model call came {first * 1000:,.0f} ms "
          f"after it started; now {info.counts.get('completed', 0):,} completed")  # type: ignore[call-overload]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true", help="400 cases (CI)")
    args = parser.parse_args()
    n = 400 if args.quick else args.cases
    if n < 20:
        parser.error("--cases must be at least 20")
    tune_gc()
    print(f"batch benchmark: Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        await throughput(folder, n)
        await memory(folder, [max(n // 5, 10), n], 100)
        await resume(folder, n, left=min(10, n // 100))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nmax RSS of the whole benchmark: {rss:,.0f} MB")


if __name__ == "__main__":
    sys.modules.setdefault("batch_bench", sys.modules[__name__])
    asyncio.run(main())
