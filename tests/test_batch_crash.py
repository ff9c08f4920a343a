"""`tether batch run` killed with SIGKILL again and again: `batch resume` finishes the batch with every
case run exactly once, no side effect done twice, and `--out` holding each case once; `--retry-failed`
then reruns only the failed cases.

The size is a parameter: TETHER_BATCH_KILL_CASES (default 60 in the suite; the issue's figure is 200:
`TETHER_BATCH_KILL_CASES=200 uv run pytest tests/test_batch_crash.py`).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from collections import Counter
from pathlib import Path

CRASH = Path(__file__).parent / "crash"
CASES = int(os.environ.get("TETHER_BATCH_KILL_CASES", "60"))
KILLS = 3


def _ledger(folder: Path) -> list[list[str]]:
    path = folder / "ledger"
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def _kill_when(proc, folder: Path, effects: int, timeout_s: float = 90) -> bool:  # type: ignore[no-untyped-def]
    """SIGKILL `proc` once the ledger holds `effects` lines; False if it ended first."""
    deadline = time.monotonic() + timeout_s
    while len(_ledger(folder)) < effects:
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, "the batch made no progress"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    return True


def _case_runs(db: Path, batch_id: str) -> dict[str, list[tuple[int, str, str]]]:
    """Each case key -> its runs (attempt, run id, status), read from the store."""
    from tether.adapters.store.sql import SqlStore
    from tether.services.compose import services_for
    from tether.services.runs import RunsService

    async def read() -> dict[str, list[tuple[int, str, str]]]:
        store = SqlStore(f"sqlite:///{db}")
        try:
            services = services_for(RunsService(store))
            cases = await services.batches.cases(batch_id, limit=100_000)
            runs: dict[str, list[tuple[int, str, str]]] = {}
            for info in await store.list_runs(limit=100_000):
                p = (await store.load(info.id))[0].payload
                ref = getattr(p, "batch", None)
                if ref is not None and ref.batch_id == batch_id:
                    runs.setdefault(ref.case_key, []).append((ref.attempt, info.id, str(info.status)))
            assert {c.key for c in cases} == {f"c{i}" for i in range(CASES)}
            return runs
        finally:
            await store.close()

    return asyncio.run(read())


def test_a_batch_killed_again_and_again_finishes_every_case_once(cli, tmp_path):
    folder = tmp_path / "effects"
    (folder / "calls").mkdir(parents=True)
    (folder / "failing").touch()
    tasks = tmp_path / "tasks.jsonl"
    lines = [{"id": f"c{i}", "input": f"{'fail' if i % 10 == 3 else 'case'} {i}"} for i in range(CASES)]
    tasks.write_text("".join(json.dumps(line) + "\n" for line in lines))
    failing = {f"c{i}" for i in range(CASES) if i % 10 == 3}
    out = tmp_path / "out.jsonl"
    env = {"TETHER_LEDGER_DIR": str(folder)}

    proc = cli.popen("batch", "run", str(CRASH / "batch_agent.toml"), str(tasks), "--concurrency", "8",
                     "--out", str(out), extra_env=env)
    step = max(1, (CASES - len(failing)) // (KILLS + 2))
    killed = _kill_when(proc, folder, step)
    assert killed, "the batch finished before the first kill: make it bigger"
    listed = cli("batch", "list")
    batch_id = re.search(r"batch_[0-9a-z]+", listed.stdout).group(0)  # type: ignore[union-attr]

    for k in range(2, KILLS + 1):
        proc = cli.popen("batch", "resume", batch_id, "--out", str(out), extra_env=env)
        killed = _kill_when(proc, folder, step * k)
        assert killed, f"resume {k} finished before its kill"
    final = cli("batch", "resume", batch_id, "--out", str(out), extra_env=env)
    while final.returncode == 3:  # a kill during an effect left its call uncertain: the case paused
        assert "--rerun-uncertain" in final.all, final.all  # the exit says how to answer them
        answered = cli("batch", "answer", batch_id, "--rerun-uncertain")
        assert answered.returncode == 0, answered.all
        assert re.search(r"answered \d+ paused case", answered.stdout), answered.all
        final = cli("batch", "resume", batch_id, "--out", str(out), extra_env=env)
    assert final.returncode == 1, final.all  # done, with failed cases
    assert "--retry-failed" in final.all  # says how to rerun them

    # Every case ran once: one run (attempt 1) a case, ended; every effect done once.
    db = tmp_path / "home" / "tether.db"
    runs = _case_runs(db, batch_id)
    assert sorted(runs) == sorted(f"c{i}" for i in range(CASES))
    for key, its in runs.items():
        assert [(a, s) for a, _, s in its] == [(1, "failed" if key in failing else "completed")], (key, its)
    effects = Counter(f"{e[0]} {e[1]}" for e in _ledger(folder))  # "case 5 RUN CALL" -> "case 5"
    assert effects == Counter(f"case {i}" for i in range(CASES) if f"c{i}" not in failing), effects
    # The results file: each case once, every line whole JSON, as the store says.
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert Counter(r["key"] for r in rows) == Counter(f"c{i}" for i in range(CASES))
    assert {r["key"]: r["status"] for r in rows} == {
        f"c{i}": "failed" if f"c{i}" in failing else "completed" for i in range(CASES)}

    # --retry-failed reruns only the failed cases, as attempt 2 (now they succeed).
    (folder / "failing").unlink()
    retried = cli("batch", "resume", batch_id, "--retry-failed", "--out", str(out), extra_env=env)
    assert retried.returncode == 0, retried.all
    after = _case_runs(db, batch_id)
    for key, its in after.items():
        if key in failing:
            assert sorted((a, s) for a, _, s in its) == [(1, "failed"), (2, "completed")], (key, its)
        else:
            assert its == runs[key], (key, its)  # untouched: the same run, not run again
    effects = Counter(f"{e[0]} {e[1]}" for e in _ledger(folder))
    assert effects == Counter(f"{'fail' if i % 10 == 3 else 'case'} {i}" for i in range(CASES))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert Counter(r["key"] for r in rows) == Counter(f"c{i}" for i in range(CASES))
    assert all(r["status"] == "completed" for r in rows)

