"""The agent the crash tests run in a child process and resume in the parent.

Its one tool, `append_line`, is NOT idempotent: it appends a line to the file named by
TETHER_CRASH_FILE. `TETHER_CRASH_AT=POINT:N` makes the child kill itself with SIGKILL at a named
point of call N, to hit every window between records on purpose.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal

from tether import Agent, Limits, tool
from tether.adapters.models.scripted import ScriptedModel, call_tool, reply
from tether.domain.models import ModelRequest

CALLS = 6


def _crash_if(point: str, n: int) -> None:
    if os.environ.get("TETHER_CRASH_AT") == f"{point}:{n}":
        os.kill(os.getpid(), signal.SIGKILL)


async def _jitter() -> None:
    if os.environ.get("TETHER_CRASH_JITTER"):
        await asyncio.sleep(random.random() * 0.01)


@tool
async def append_line(text: str) -> str:
    """Append a line of text to the journal."""
    n = int(text.split()[-1])
    await _jitter()
    _crash_if("before_effect", n)
    with open(os.environ["TETHER_CRASH_FILE"], "a") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())
    _crash_if("after_effect", n)  # the effect happened; tool_finished is not even appended
    await _jitter()
    return f"appended {text!r}"


async def _model(request: ModelRequest):
    n = sum(1 for m in request.messages if m.role == "tool")
    _crash_if("model_call", n)  # the previous tool_finished may not have committed yet
    await _jitter()
    if n < CALLS:
        return call_tool("append_line", {"text": f"line {n}"})
    return reply(f"appended {CALLS} lines")


agent = Agent("journal", ScriptedModel(_model), tools=[append_line], limits=Limits(max_steps=CALLS + 2),
              ref="crash_agent:agent")
