"""Submit the tool output of the paused run argv[2] at wall-clock time argv[3]; print who won."""

import asyncio
import sys
import time

from race_agent import agent

from tether.adapters.store.sql import SqlStore
from tether.domain.errors import AlreadyResumed
from tether.services.runs import RunsService


async def main() -> None:
    service = RunsService(SqlStore(sys.argv[1]))
    service.register(agent)
    view = await service.get(sys.argv[2])
    call_id, label = view.pending[0].id, sys.argv[4]
    await asyncio.sleep(max(0.0, float(sys.argv[3]) - time.time()))
    try:
        done = await service.submit_tool_outputs(sys.argv[2], {call_id: label}, pause_id=view.pause_id)
        print("won", done.status, done.output, flush=True)
    except AlreadyResumed as e:
        print("lost", e, flush=True)


asyncio.run(main())
