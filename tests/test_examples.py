"""The shipped examples run offline, end to end, with their real tools."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

from fake_openai import FakeOpenAI
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


def test_the_readme_python_snippet_says_why_a_run_failed(tmp_path):
    """The README's first Python example, against a model server that refuses every request: the
    line it prints says why the run failed (not `failed None ...`)."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    snippet = readme.split("## In Python", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert '"openai:gpt-4o-mini"' in snippet
    snippet = snippet.replace('"openai:gpt-4o-mini"', '"gpt-4o-mini"')  # the same model at OPENAI_BASE_URL
    with FakeOpenAI() as fake:  # nothing queued: it answers 400 at once, which is never retried
        env = {**os.environ, "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": fake.base_url,
               "TETHER_HOME": str(tmp_path)}
        out = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, env=env,
                             timeout=120)
    assert out.returncode == 0, out.stderr
    first = out.stdout.splitlines()[0]
    assert first.startswith("failed "), out.stdout
    assert "gpt-4o-mini" in first and "400" in first, first  # the model's error, where the user looks


def test_the_readme_typed_answers_example_runs():
    """The README's example of a typed answer, and of the table of which answers fit an item."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    snippet = readme.split("<!-- typed-answers -->", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    out = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["before_tool add ['continue', 'step', 'edit', 'skip', 'abort']",
                                       "the sum is 42"]
