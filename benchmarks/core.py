"""The core benchmark: µs per agent step, in memory and with the SQLite log; 1000 concurrent runs.

The workload is the one other frameworks were measured on: an in-process model that, given the
conversation, asks for `add(a=n, b=1)` while fewer than K tool results are present (n = their
count), then answers "The answer is K". `add` is an `async def`. A step = one model call plus
one tool call; µs per step = run time / K.

    uv run python benchmarks/core.py            # all figures
    uv run python benchmarks/core.py --quick    # fewer repetitions (CI)

Targets: ≤ 250 µs per durable step, ≤ 50 µs in memory, 1000 durable runs within 5× ideal,
≤ 30 KB per run, K=100 step cost ≤ 1.2× K=20, `import tether` ≤ 200 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from tether import Agent, Limits, RunsService, tool
from tether.adapters.models.scripted import ScriptedModel, call_tool, reply
from tether.adapters.store.memory import MemoryStore
from tether.adapters.store.sql import SqlStore
from tether.domain.models import ModelRequest


@tool
async def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def workload(k: int, delay_s: float = 0.0) -> Agent:
    async def model(request: ModelRequest):
        if delay_s:
            await asyncio.sleep(delay_s)
        n = sum(1 for m in request.messages if m.role == "tool")
        return call_tool("add", {"a": n, "b": 1}) if n < k else reply(f"The answer is {k}")

    return Agent("bench", ScriptedModel(model), tools=[add], limits=Limits(max_steps=k + 1))


async def per_step_us(service: RunsService, k: int, reps: int) -> tuple[float, float]:
    """(median, mean) µs per step over `reps` runs.

    On SQLite the mean is the fair one for comparing run lengths: a WAL checkpoint (with its
    fsync) lands in roughly one run in five at K=20 and in nearly every run at K=100, so a
    median of short runs leaves checkpoints out while a median of long runs pays them. In
    memory there is no checkpoint, and the median keeps the store's growing heap (every run of
    the benchmark is kept) from charging garbage-collection pauses to the longer runs.
    """
    agent = workload(k)
    await service.start(agent, "go")  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        run = await service.start(agent, "go")
        times.append((time.perf_counter() - t) / k * 1e6)
        assert run.output == f"The answer is {k}", run
    return statistics.median(times), statistics.fmean(times)


async def concurrent(service: RunsService, n: int, k: int, delay_s: float) -> float:
    agent = workload(k, delay_s)
    t = time.perf_counter()
    runs = await asyncio.gather(*(service.start(agent, "go") for _ in range(n)))
    wall = time.perf_counter() - t
    assert all(r.output == f"The answer is {k}" for r in runs)
    return wall


def import_ms(reps: int) -> float:
    def once(code: str) -> float:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        return time.perf_counter() - t

    base = statistics.median(once("pass") for _ in range(reps))
    full = statistics.median(once("import tether") for _ in range(reps))
    return (full - base) * 1000


async def main(quick: bool) -> None:
    reps = 20 if quick else 60
    tmp = Path(tempfile.mkdtemp(prefix="tether-bench-"))
    memory = RunsService(MemoryStore())
    sqlite = RunsService(SqlStore(f"sqlite:///{tmp / 'bench.db'}"))

    mem20, mem20_mean = await per_step_us(memory, 20, reps)
    sql20, sql20_mean = await per_step_us(sqlite, 20, reps * 2)
    mem100, _ = await per_step_us(memory, 100, max(8, reps // 2))
    _, sql100_mean = await per_step_us(sqlite, 100, max(8, reps // 2))
    print(f"K=20  in memory        {mem20:8.1f} µs/step median, {mem20_mean:.1f} mean   (target ≤ 50)")
    print(f"K=20  SQLite log       {sql20:8.1f} µs/step median, {sql20_mean:.1f} mean   (target ≤ 250)")
    print(f"K=100 in memory        {mem100:8.1f} µs/step median = {mem100 / mem20:.2f}× K=20 (target ≤ 1.2×)")
    print(f"K=100 SQLite log       {sql100_mean:8.1f} µs/step mean = {sql100_mean / sql20_mean:.2f}× K=20 "
          "(target ≤ 1.2×; means: checkpoints amortised alike)")

    n, k, delay = 1000, 5, 0.05
    ideal = (k + 1) * delay
    gc.collect()
    wall = await concurrent(RunsService(SqlStore(f"sqlite:///{tmp / 'many.db'}")), n, k, delay)
    print(f"{n} durable runs, K={k}, 50 ms model: wall {wall:.2f} s = {wall / ideal:.2f}× ideal "
          f"({ideal:.2f} s; target ≤ 5×)")
    gc.collect()
    tracemalloc.start()
    await concurrent(RunsService(SqlStore(f"sqlite:///{tmp / 'mem.db'}")), n, k, delay)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"memory: {peak / n / 1024:.1f} KB per run at peak (traced; target ≤ 30)")
    print(f"import tether: {import_ms(5 if quick else 15):.0f} ms over a bare interpreter (target ≤ 200)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    asyncio.run(main(parser.parse_args().quick))
