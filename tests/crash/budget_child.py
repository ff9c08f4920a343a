"""Start argv[2] runs of the budget agent at once on the store at argv[1], all under budget argv[3];
TETHER_FAULT_AT may kill the process mid-way."""

import asyncio
import sys

from budget_agent import agent

from tether.adapters.store.sql import SqlStore
from tether.services.runs import RunsService


async def main() -> None:
    service = RunsService(SqlStore(sys.argv[1]), lease_ttl_s=5)
    print("ready", flush=True)
    views = await asyncio.gather(*(service.start(agent, f"task {i}", budgets=[sys.argv[3]])
                                   for i in range(int(sys.argv[2]))))
    print(" ".join(sorted({v.status for v in views})), flush=True)


asyncio.run(main())
