"""An agent for the batch kill test (tests/test_batches.py): found again by its ref in any process.

Its tool appends the case's key to the file $TETHER_TEST_EFFECTS (a side effect a kill must never
make twice); its model takes a little time, so a kill lands mostly between steps.

    python tests/batch_kill_agent.py DATABASE_URL BATCH_ID OUT   # runs the batch (the test kills it)
"""

from __future__ import annotations

import asyncio
import os
import sys

from tether import Agent, ScriptedModel, call_tool, reply
from tether.domain.models import ModelRequest, ModelResponse


def effect(key: str) -> str:
    """Record that the case's effect happened."""
    fd = os.open(os.environ["TETHER_TEST_EFFECTS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{key}\n".encode())
    finally:
        os.close(fd)
    return f"did {key}"


async def complete(request: ModelRequest) -> ModelResponse:
    await asyncio.sleep(0.02)
    task = next(m.text for m in request.messages if m.role == "user")
    if request.messages[-1].role == "tool":
        return reply(f"answer to {task}")
    return call_tool("effect", {"key": task})


AGENT = Agent("killable", ScriptedModel(complete), tools=[effect], ref="batch_kill_agent:AGENT")


async def main(url: str, batch_id: str, out: str) -> None:
    from tether import RunsService
    from tether.adapters.store.sql import SqlStore
    from tether.services.batches import BatchesService

    store = SqlStore(url)
    try:
        await BatchesService(RunsService(store)).run(batch_id, out=out, concurrency=4)
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
