"""The SQL store alone: its append hot path, and reads that should cost what they return, not the history.

    uv run python benchmarks/store.py                       # all figures, SQLite
    uv run python benchmarks/store.py --records 2000 --messages 10000 --steps 2000 --reps 5

Figures (each the best of `--reps`, to see through a busy machine; the load average is printed):
- append: µs per step (one model call and one tool call: three records, appended as the executor
  does, then one event-loop turn, whose flush commits them), in wall time and in CPU time;
- load: a run of `--records` records read whole, and only its last 10 (`load(run_id, after=)`);
- page: 20 messages of a thread of `--messages`, first page, after a cursor in the middle, before
  one, newest first (`list_objects(..., after=, before=, limit=, order=)`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from tether.adapters.store.sql import SqlStore
from tether.domain.agents import AgentSnapshot, Limits
from tether.domain.ids import new_id
from tether.domain.messages import Message, ToolCall
from tether.domain.models import ModelResponse
from tether.domain.objects import StoredObject
from tether.domain.records import ModelCalled, Record, RunStarted, ToolFinished, ToolStarted
from tether.domain.usage import Usage


class Run:
    """The records of one run, numbered."""

    def __init__(self) -> None:
        self.id, self.seq = new_id("run"), 0
        snapshot = AgentSnapshot(name="bench", model="scripted:bench", instructions="Add.", limits=Limits(5000))
        self.first = self.record(RunStarted(snapshot, [Message.user("go")]))

    def record(self, payload: object) -> Record:
        self.seq += 1
        return Record(self.id, self.seq, time.time(), payload)  # type: ignore[arg-type]

    def step(self, n: int) -> tuple[Record, Record, Record]:
        call = ToolCall(f"call_{n}", "add", f'{{"a": {n}, "b": 1}}')
        response = ModelResponse(None, [call], "tool_calls", Usage(50 + n, 10))
        return (
            self.record(ModelCalled(n, f"fp-{n}", response, 0.0001, 0.001)),
            self.record(ToolStarted(n, call.id, "add", call.arguments)),
            self.record(ToolFinished(n, call.id, "add", result=str(n + 1), duration_s=0.0001)),
        )


async def best(reps: int, fn: Callable[[], Awaitable[object]]) -> float:
    """The best wall time of `fn` over `reps` calls, in ms."""
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        await fn()
        times.append((time.perf_counter() - t) * 1e3)
    return min(times)


async def append_us(store: SqlStore, steps: int, reps: int) -> tuple[float, float]:
    """(wall, CPU) µs per step, the best run of `reps`."""
    walls, cpus = [], []
    for _ in range(reps):
        run = Run()
        await store.create_run(run.first, owner="bench")
        records = [run.step(n) for n in range(steps)]
        t, c = time.perf_counter(), time.process_time()
        for model, started, finished in records:
            store.append([model])
            store.append([started])
            store.append([finished])
            await asyncio.sleep(0)  # the loop turn whose flush commits them
        await store.sync()
        walls.append((time.perf_counter() - t) / steps * 1e6)
        cpus.append((time.process_time() - c) / steps * 1e6)
    return min(walls), min(cpus)


async def main(url: str, args: argparse.Namespace) -> None:
    store = SqlStore(url)
    try:
        wall, cpu = await append_us(store, args.steps, args.reps)
        print(f"append: {wall:7.1f} µs/step wall, {cpu:7.1f} µs/step CPU ({args.steps} steps, 3 records each)")

        run = Run()
        await store.create_run(run.first, owner=None)
        log: list[Record] = []
        while run.seq < args.records:
            log.extend(run.step(run.seq))
        store.append(log[: args.records - 1])  # seq 2 .. records
        await store.sync()
        whole = await best(args.reps, lambda: store.load(run.id))
        tail = await best(args.reps, lambda: store.load(run.id, after=args.records - 10))
        print(f"load:   {whole:7.2f} ms the whole run of {args.records} records, {tail:5.2f} ms its last 10")

        thread, tenant = new_id("thread"), "bench"
        ids = []
        for n in range(args.messages):
            obj = StoredObject(new_id("msg"), "message", tenant, time.time(), {"role": "user", "n": n}, thread)
            ids.append(obj.id)
            await store.put_object(obj)
        middle = ids[len(ids) // 2]
        pages = {
            "first": dict(limit=20),
            "after": dict(after=middle, limit=20),
            "before": dict(before=middle, limit=20),
            "desc": dict(order="desc", limit=20),
        }
        figures = []
        for name, kw in pages.items():
            ms = await best(args.reps, lambda kw=kw: store.list_objects("message", tenant, thread, **kw))  # type: ignore[misc]
            figures.append(f"{name} {ms:.2f}")
        every = await best(args.reps, lambda: store.list_objects("message", tenant, thread))
        print(f"page:   20 of {args.messages} messages, ms: {', '.join(figures)} (every message: {every:.1f})")
    finally:
        await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="steps a run for the append figure")
    parser.add_argument("--records", type=int, default=2000, help="records of the run read back")
    parser.add_argument("--messages", type=int, default=10000, help="messages of the thread paged")
    parser.add_argument("--reps", type=int, default=5, help="repetitions; the best is kept")
    parser.add_argument("--url", help="a database URL (default: a SQLite file in a temporary folder)")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(args.url or f"sqlite:///{Path(tmp) / 'bench.db'}", args))
