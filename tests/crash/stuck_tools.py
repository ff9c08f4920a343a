"""Tools and a model for `stuck.toml`: a run that stays in a tool call until the test kills it.

`wait_here` writes the file named by TETHER_STUCK_FILE and then waits (the test kills the process
meanwhile); called again (on resume, it is idempotent), it finds the file and returns at once.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tether import tool
from tether.adapters.models.scripted import call_tool, reply
from tether.domain.models import ModelRequest


@tool(idempotent=True)
def wait_here() -> str:
    """Wait until the test is done with this process."""
    marker = Path(os.environ["TETHER_STUCK_FILE"])
    if marker.exists():
        return "went on"
    marker.write_text(str(os.getpid()))
    time.sleep(float(os.environ.get("TETHER_STUCK_S", "120")))  # a sync tool: Ctrl-C waits for it
    return "waited"


def script(request: ModelRequest):
    results = [m.text for m in request.messages if m.role == "tool"]
    return reply(f"the tool said: {results[0]}") if results else call_tool("wait_here", {})
