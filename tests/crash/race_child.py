"""Look at the paused run argv[2], say "ready", and on "go" (stdin) submit its tool output."""

import asyncio
import sys

from race_agent import agent

from tether.adapters.store.sql import SqlStore
from tether.domain.errors import AlreadyResumed
from tether.services.runs import RunsService


async def main() -> None:
    service = RunsService(SqlStore(sys.argv[1]))
    service.register(agent)
    view = await service.get(sys.argv[2])
    call_id, label = view.pending[0].id, sys.argv[3]
    print("ready", flush=True)
    sys.stdin.readline()  # both racers are loaded and waiting: the parent says go to both at once
    try:
        done = await service.submit_tool_outputs(sys.argv[2], {call_id: label}, pause_id=view.pause_id)
        print("won", done.status, done.output, flush=True)
    except AlreadyResumed as e:
        print("lost", e, flush=True)


asyncio.run(main())
