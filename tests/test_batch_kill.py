"""`tether batch run` killed with SIGKILL several times, then `tether batch resume`: every case is run
exactly once, a side-effecting tool's effect happens once a case, the --out file holds each case once,
and `--retry-failed` runs only the failed cases again.

The size is a parameter: TETHER_BATCH_KILL_CASES (default 40; the issue's figure is 200), with
TETHER_BATCH_KILLS kills (default 3).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

CASES = int(os.environ.get("TETHER_BATCH_KILL_CASES", "40"))
KILLS = int(os.environ.get("TETHER_BATCH_KILLS", "3"))

TOOLS = '''
import asyncio
import os

from tether import tool
from tether.adapters.models.scripted import call_tool, reply
from tether.domain.errors import ModelError
from tether.domain.tools import ToolContext


@tool(idempotent=True)
async def charge(case: str, ctx: ToolContext) -> str:
    """Charge a case, once: a retried call (same idempotency key) finds its line and does nothing."""
    path = os.environ["BATCH_LEDGER"]
    key = ctx.idempotency_key
    if os.path.exists(path) and any(line.split(" ", 1)[0] == key for line in open(path).read().splitlines()):
        return f"already charged {case}"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{key} {case}\\n".encode())  # one write: a whole line or none
    finally:
        os.close(fd)
    return f"charged {case}"


async def model(request):
    await asyncio.sleep(0.05)
    task = [m for m in request.messages if m.role == "user"][-1].text
    if task.startswith("flaky") and not os.environ.get("BATCH_HEAL"):
        raise ModelError(f"{task} is flaky today")
    if not any(m.role == "tool" for m in request.messages):
        return call_tool("charge", {"case": task})
    return reply(f"done {task}")
'''


def _lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def test_sigkill_several_times_then_resume_runs_every_case_once(cli, tmp_path):
    (tmp_path / "kill_tools.py").write_text(TOOLS)
    agent = tmp_path / "charger.toml"
    agent.write_text('name = "charger"\nmodel = "scripted:kill_tools:model"\ntools = ["kill_tools:charge"]\n')
    names = [f"flaky {i}" if i % 10 == 3 else f"case {i}" for i in range(CASES)]
    cases = tmp_path / "cases.jsonl"
    cases.write_text("".join(json.dumps(n) + "\n" for n in names))
    out, ledger = tmp_path / "results.jsonl", tmp_path / "ledger.txt"
    env = {"BATCH_LEDGER": str(ledger)}

    batch_id = None
    for kill in range(KILLS):
        args = ["batch", "run", str(agent), str(cases)] if batch_id is None else ["batch", "resume", batch_id]
        proc = cli.popen(*args, "--concurrency", "8", "--out", str(out), extra_env=env)
        target = (kill + 1) * CASES // (KILLS + 2)
        deadline = time.monotonic() + 120
        while _lines(out) < target and proc.poll() is None:
            assert time.monotonic() < deadline, "the batch made no progress"
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()  # killed mid-way, not after the end
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        if batch_id is None:
            listed = json.loads(cli("batch", "list", "--json").stdout)
            assert len(listed) == 1
            batch_id = listed[0]["id"]

    finished = cli("batch", "resume", batch_id, "--out", str(out), extra_env=env)
    assert finished.returncode == 1, finished.all  # the flaky cases failed
    flaky = {n for n in names if n.startswith("flaky")}
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert Counter(r["key"] for r in results) == Counter(str(i) for i in range(CASES))  # each case once
    assert {names[int(r["key"])] for r in results if r["status"] == "failed"} == flaky
    shown = {c["key"]: c for c in json.loads(cli("batch", "show", batch_id, "--json", "--limit", "1000").stdout)
             ["cases"]}
    assert all(c["attempt"] == 1 for c in shown.values())  # one run an attempt, whatever the kills

    healed = cli("batch", "resume", batch_id, "--retry-failed", "--out", str(out),
                 extra_env={**env, "BATCH_HEAL": "1"})
    assert healed.returncode == 0, healed.all
    after = {c["key"]: c for c in json.loads(cli("batch", "show", batch_id, "--json", "--limit", "1000").stdout)
             ["cases"]}
    for key, case in after.items():
        again = names[int(key)] in flaky
        assert case["status"] == "completed" and case["attempt"] == (2 if again else 1), case
        assert (case["run_id"] == shown[key]["run_id"]) != again  # only the failed ones ran again
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert Counter(r["key"] for r in results) == Counter(str(i) for i in range(CASES))
    assert all(r["status"] == "completed" for r in results)
    charged = Counter(line.split(" ", 1)[1] for line in ledger.read_text().splitlines())
    assert charged == Counter(names), charged  # no duplicated effect, none missing
