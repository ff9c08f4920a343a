"""The agent of the commit-pipeline kill test: many of its runs go at once in one child process.

Each run makes three calls of `note`, which is NOT idempotent: two in parallel, then one more. A
call's effect is a line "RUN_ID CALL_ID" appended to the file named by TETHER_LEDGER_FILE, so the
test can tell which calls took effect and check that each of them had its `tool_started` committed.
"""

from __future__ import annotations

import asyncio
import os

from tether import Agent, Limits, tool
from tether.adapters.models.scripted import ScriptedModel, calls, reply
from tether.domain.models import ModelRequest
from tether.domain.tools import ToolContext

CALLS = 3  # per run


@tool
async def note(text: str, ctx: ToolContext) -> str:
    """Write a note in the ledger."""
    fd = os.open(os.environ["TETHER_LEDGER_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{ctx.run_id} {ctx.call_id}\n".encode())  # one write: a whole line or none
    finally:
        os.close(fd)
    await asyncio.sleep(0)  # the other runs go on meanwhile
    return f"noted {text}"


async def _model(request: ModelRequest):
    n = sum(1 for m in request.messages if m.role == "tool")
    await asyncio.sleep(0)
    if n == 0:
        return calls([("note", {"text": "a"}), ("note", {"text": "b"})])
    if n < CALLS:
        return calls([("note", {"text": "c"})])
    return reply(f"noted {CALLS} times")


agent = Agent("ledger", ScriptedModel(_model), tools=[note], limits=Limits(max_steps=CALLS + 3),
              ref="ledger_agent:agent")
