"""Run the journal agent on the store at argv[1] until it finishes, or until it is killed."""

import asyncio
import sys

from crash_agent import agent

from tether.adapters.store.sql import SqlStore
from tether.services.runs import RunsService


async def main() -> None:
    service = RunsService(SqlStore(sys.argv[1]), lease_ttl_s=0.3)
    print("ready", flush=True)
    run = await service.start(agent, "write the journal")
    print(run.status, flush=True)


asyncio.run(main())
