"""Reserve `usd` in budget argv[2] of the store at argv[1] again and again, for runs this process
leases (argv[3] of them), until refused; print how many reservations were granted."""

import asyncio
import sys
import time

from tether.adapters.store.sql import SqlStore
from tether.domain.agents import AgentSnapshot
from tether.domain.ids import new_id
from tether.domain.records import Record, RunStarted

USD = 0.03


async def main() -> None:
    store = SqlStore(sys.argv[1])
    runs = []
    for _ in range(int(sys.argv[3])):
        run_id = new_id("run")
        await store.create_run(Record(run_id, 1, time.time(), RunStarted(AgentSnapshot("x", "scripted"), [])),
                               owner=f"reserver-{sys.argv[4]}", lease_ttl_s=600)
        runs.append(run_id)
    print("ready", flush=True)
    while not __import__("os").path.exists(sys.argv[5]):  # the go signal: both start together
        await asyncio.sleep(0.005)

    async def reserve_until_refused(run_id: str) -> int:
        granted = 0
        while await store.reserve(run_id, new_id("grant"), [sys.argv[2]], USD, 10) is None:
            granted += 1
            await asyncio.sleep(0)
        return granted

    counts = await asyncio.gather(*(reserve_until_refused(r) for r in runs))
    await store.close()
    print(sum(counts), flush=True)


asyncio.run(main())
