"""Kill -9 at every window between records, and at random: resuming loses nothing, repeats nothing.

A child process runs an agent whose non-idempotent tool appends a line to a file, and dies by
SIGKILL. The parent then resumes the run; when it pauses `uncertain` it answers from the file
(line present → supply the result; absent → rerun). The run completes, every call's line is in
the file exactly once, and the log is whole.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).parent / "crash"
sys.path.insert(0, str(HERE))

from crash_agent import CALLS, agent  # noqa: E402

from tether.adapters.store.sql import SqlStore  # noqa: E402
from tether.domain.records import ToolFinished  # noqa: E402
from tether.services.runs import RunsService  # noqa: E402

NAMED = [f"{point}:{n}" for point in ("before_effect", "after_effect", "model_call") for n in (0, 2, CALLS - 1)]
NAMED.append(f"model_call:{CALLS}")  # after the last tool result, before the final answer
RANDOM_TRIALS = int(os.environ.get("TETHER_CRASH_TRIALS", "12"))


def run_child(db_url: str, journal: Path, *, crash_at: str | None = None,
              kill_after_s: float | None = None) -> int:
    env = {**os.environ, "TETHER_CRASH_FILE": str(journal), "PYTHONPATH": str(HERE)}
    if crash_at:
        env["TETHER_CRASH_AT"] = crash_at
    if kill_after_s is not None:
        env["TETHER_CRASH_JITTER"] = "1"
    child = subprocess.Popen([sys.executable, str(HERE / "child.py"), db_url], env=env,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    if kill_after_s is not None:
        time.sleep(kill_after_s)
        child.send_signal(signal.SIGKILL)
    return child.wait(timeout=60)


async def recover(db_url: str, journal: Path) -> tuple[str | None, int]:
    """Resume whatever the child left, answering `uncertain` pauses from the journal."""
    service = RunsService(SqlStore(db_url), lease_ttl_s=5)
    service.register(agent)
    runs = await service.list()
    if not runs:
        return None, 0
    run_id = runs[0].id
    answers = 0
    deadline = time.time() + 20
    while time.time() < deadline:
        view = await service.get(run_id)
        if view.status in ("completed", "failed", "cancelled"):
            return run_id, answers
        if view.status == "paused":
            item = view.pending[0]
            assert item.reason == "uncertain", item
            line = json.loads(item.arguments)["text"]
            present = line in journal.read_text().splitlines() if journal.exists() else False
            answers += 1
            if present:
                await service.resolve_uncertain(run_id, item.id, "supply", f"appended {line!r}")
            else:
                await service.resolve_uncertain(run_id, item.id, "rerun")
            continue
        try:
            await service.resume(run_id)
        except Exception as e:  # the dead child's lease has not expired yet
            assert "leased by" in str(e)
            await asyncio.sleep(0.1)
    raise AssertionError(f"run {run_id} did not finish")


async def check_whole(db_url: str, run_id: str, journal: Path) -> None:
    view = await RunsService(SqlStore(db_url)).get(run_id)
    assert view.status == "completed", (view.status, view.error)
    assert view.output == f"appended {CALLS} lines"
    lines = journal.read_text().splitlines()
    assert lines == [f"line {i}" for i in range(CALLS)], lines  # each exactly once, in order
    assert [r.seq for r in view.records] == list(range(1, len(view.records) + 1))
    tools = [s for s in view.steps if s.type == "tool"]
    assert len(tools) == CALLS and all(s.status == "completed" for s in tools)
    finished = [r.payload.call_id for r in view.records if isinstance(r.payload, ToolFinished)]
    assert len(finished) == len(set(finished))  # no call finished twice


def trial(tmp_path: Path, **kill) -> int:
    db_url = f"sqlite:///{tmp_path / 'runs.db'}"
    journal = tmp_path / "journal.txt"
    os.environ["TETHER_CRASH_FILE"] = str(journal)  # a rerun in this process writes there too
    code = run_child(db_url, journal, **kill)
    run_id, answers = asyncio.run(recover(db_url, journal))
    if run_id is None:  # killed before the run's first record committed: nothing happened
        assert not journal.exists() or journal.read_text() == ""
        return answers
    asyncio.run(check_whole(db_url, run_id, journal))
    return answers if code == -signal.SIGKILL else -1


@pytest.mark.parametrize("crash_at", NAMED)
def test_kill_at_named_points(tmp_path, crash_at):
    answers = trial(tmp_path, crash_at=crash_at)
    if crash_at.startswith(("before_effect", "after_effect")):
        assert answers == 1  # tool_started had committed, tool_finished had not: uncertain, asked once


def test_kill_at_random_moments(tmp_path):
    rng = random.Random(int(os.environ.get("TETHER_CRASH_SEED", "7")))
    killed_mid_run = 0
    for i in range(RANDOM_TRIALS):
        d = tmp_path / f"trial{i}"
        d.mkdir()
        if trial(d, kill_after_s=rng.uniform(0.0, 0.12)) >= 0:
            killed_mid_run += 1
    assert killed_mid_run >= RANDOM_TRIALS // 2  # most kills really landed mid-run


def test_an_uninterrupted_run_needs_no_answers(tmp_path):
    assert trial(tmp_path) == -1  # the child exited normally; recover found it completed
