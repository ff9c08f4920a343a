"""Ownership across processes: racing answers to one pause, and a pause that outlives its process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent / "crash"
sys.path.insert(0, str(HERE))

from race_agent import agent  # noqa: E402

from tether.adapters.store.sql import SqlStore  # noqa: E402
from tether.domain.records import Decision  # noqa: E402
from tether.services.runs import RunsService  # noqa: E402


def test_two_processes_racing_to_continue_a_paused_run_exactly_one_wins(tmp_path):
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    for _ in range(3):  # three races, each on a fresh paused run
        run = asyncio.run(RunsService(SqlStore(url)).start(agent, "weather?"))
        assert run.status == "paused"
        env = {**os.environ, "PYTHONPATH": str(HERE)}
        children = [
            subprocess.Popen([sys.executable, str(HERE / "race_child.py"), url, run.id, label], env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for label in ("sunny", "rainy")
        ]
        for c in children:
            assert c.stdout is not None and c.stdout.readline().strip() == "ready"
        for c in children:  # go: as close together as two writes can be
            assert c.stdin is not None
            c.stdin.write("go\n")
            c.stdin.flush()
        outs = [c.communicate(timeout=60) for c in children]
        results = [o.strip() for o, _ in outs]
        assert all(c.returncode == 0 for c in children), [e for _, e in outs]
        winners = [r for r in results if r.startswith("won")]
        losers = [r for r in results if r.startswith("lost")]
        assert len(winners) == 1 and len(losers) == 1, results
        assert "already resumed" in losers[0]
        final = asyncio.run(RunsService(SqlStore(url)).get(run.id))
        assert final.status == "completed"
        decisions = [r for r in final.records if isinstance(r.payload, Decision)]
        assert len(decisions) == 1  # the loser wrote nothing
        assert final.output == f"the weather is {decisions[0].payload.answer.result}"
        assert winners[0] == f"won completed {final.output}"


def test_a_pause_outlives_its_process_and_is_continued_by_another(tmp_path):
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    code = (
        "import asyncio, sys; from race_agent import agent; from tether.adapters.store.sql import SqlStore;"
        "from tether.services.runs import RunsService;"
        f"print(asyncio.run(RunsService(SqlStore({url!r})).start(agent, 'weather?')).id)"
    )
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(HERE)},
                         capture_output=True, text=True, check=True)
    run_id = out.stdout.strip()
    service = RunsService(SqlStore(url))  # this process never saw the run start
    view = asyncio.run(service.get(run_id))
    assert view.status == "paused" and view.pending[0].name == "weather"
    done = asyncio.run(service.submit_tool_outputs(run_id, {view.pending[0].id: "cloudy"}))
    assert done.status == "completed" and done.output == "the weather is cloudy"
