"""The cost of following a run: one poll of its log for new records, with 0, 1 and 10 new ones.

A run of N records (default 2,000) in a SQLite file (the default store, WAL), followed from seq N on.
Before each poll, k records are appended (committed); then one poll is timed:
  - "whole log": what event streams did before (read the whole log, keep the records after seq);
  - "after seq": what a run subscription does now (`RunsService.records_after`, i.e.
    `store.load(run_id, after=seen)`: only the new rows, by the primary key).
Printed: the median and p95 of a poll in µs, and the rows read from the database per poll.

    uv run python benchmarks/events.py [--records 2000] [--polls 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from tether.adapters.store.sql import open_store
from tether.domain.agents import AgentSnapshot
from tether.domain.messages import Message
from tether.domain.models import ModelResponse
from tether.domain.records import ModelCalled, Record, RunStarted
from tether.services.runs import RunsService


def model_call(run_id: str, seq: int) -> Record:
    text = f"step {seq}: " + "some model text " * 8
    return Record(run_id, seq, time.time(), ModelCalled(seq, f"fp-{seq}", ModelResponse(text)))


async def bench(records: int, polls: int) -> None:
    with tempfile.TemporaryDirectory(prefix="tether-bench-events-") as home:
        store = open_store(f"sqlite:///{Path(home) / 't.db'}")
        runs = RunsService(store)
        run_id = "run_bench_events"
        first = Record(run_id, 1, time.time(), RunStarted(AgentSnapshot("a", "scripted:x"), [Message.user("hi")]))
        await store.create_run(first, owner=None)
        store.append([model_call(run_id, seq) for seq in range(2, records + 1)])
        await store.sync()
        seen = records

        async def whole_log(after: int) -> tuple[list[Record], int]:
            everything = await store.load(run_id)
            return [r for r in everything if r.seq > after], len(everything)

        async def after_seq(after: int) -> tuple[list[Record], int]:
            new = await runs.records_after(run_id, after)
            return new, len(new)

        print(f"a run of {records} records in SQLite; {polls} polls each (µs per poll; rows read per poll)")
        print(f"{'new records':>12}  {'whole log: median':>18} {'p95':>8} {'rows':>6}   "
              f"{'after seq: median':>18} {'p95':>8} {'rows':>6}")
        for new in (0, 1, 10):
            figures = []
            for poll in (whole_log, after_seq):
                times, rows = [], []
                for _ in range(polls):
                    if new:
                        store.append([model_call(run_id, seen + i + 1) for i in range(new)])
                        await store.sync()
                    t0 = time.perf_counter()
                    got, read = await poll(seen)
                    times.append((time.perf_counter() - t0) * 1e6)
                    assert len(got) == new, (len(got), new)
                    seen += new
                    rows.append(read)
                times.sort()
                figures.append((statistics.median(times), times[int(len(times) * 0.95) - 1],
                                statistics.mean(rows)))
            (wm, wp, wr), (am, ap, ar) = figures
            print(f"{new:>12}  {wm:>18.0f} {wp:>8.0f} {wr:>6.0f}   {am:>18.0f} {ap:>8.0f} {ar:>6.0f}")
        await store.close()
    load = os.getloadavg()
    print(f"(the log grew by {seen - records} records during the run; load average {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f} on {os.cpu_count()} cores; Python {platform.python_version()})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=2000, help="records in the run's log (default 2000)")
    parser.add_argument("--polls", type=int, default=200, help="polls timed per figure (default 200)")
    args = parser.parse_args()
    asyncio.run(bench(args.records, args.polls))


if __name__ == "__main__":
    main()
