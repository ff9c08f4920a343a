"""The shipped examples run offline, end to end, with their real tools."""

from __future__ import annotations

import asyncio
import re

from tether.adapters.store.memory import MemoryStore
from tether.examples import analyst
from tether.services.agents import load_agent_file
from tether.services.runs import RunsService


def test_the_analyst_example_uses_a_real_mcp_server_and_the_python_sandbox():
    agent = load_agent_file(analyst.AGENT_FILE)
    run = asyncio.run(RunsService(MemoryStore()).start(agent, analyst.TASK))
    assert run.status == "completed", run
    assert [(s.type, s.name) for s in run.steps] == [
        ("model", None), ("tool", "time__get_current_time"), ("model", None), ("tool", "python"), ("model", None)]
    assert re.search(r"By the time server's clock and a Python computation: \d+ days from \d{4}-\d\d-\d\d", run.output)
    assert {t.name: t.kind for t in run.agent.tools}["time__get_current_time"] == "mcp"
