"""Kill -9 inside the commit pipeline while many runs make non-idempotent calls: no call runs before
its `tool_started` commits, and every run resumes to the end with each call done exactly once.

A child process starts RUNS runs of the ledger agent at once (tests/crash/ledger_agent.py: three
non-idempotent calls a run, two of them in parallel) and kills itself with SIGKILL at a named fault
point of the group-commit writer (TETHER_FAULT_AT, see tether/adapters/store/sql/faults.py): before
the N-th transaction commits, after it commits and before anyone is told, or once the syncs it woke
have gone on. The parent then checks what was committed:

- every effect in the ledger (a call that ran) has its `tool_started` in the committed log;
- resuming each run asks about exactly the calls that started and did not finish (`uncertain`); the
  test answers from the ledger (supply the result if the call took effect, else rerun);
- every run completes, and every call took effect exactly once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from pg import postgres, postgres_url  # noqa: F401  (fixtures)

HERE = Path(__file__).parent / "crash"
sys.path.insert(0, str(HERE))

from ledger_agent import CALLS, agent  # noqa: E402

from tether.adapters.store.sql import SqlStore  # noqa: E402
from tether.domain.answers import Supply  # noqa: E402
from tether.domain.errors import ConfigError, TetherError  # noqa: E402
from tether.domain.records import Decision, ToolFinished, ToolStarted  # noqa: E402
from tether.services.runs import RunsService  # noqa: E402

RUNS = int(os.environ.get("TETHER_WRITE_AHEAD_RUNS", "30"))
# The child's transactions on SQLite (its runs go in step): 1 creates the runs, 2 their first model
# calls, 3 the tool_started of the two parallel calls, 4 their tool_finished and the next model call,
# 5 the third call's tool_started, then the rest. So: killed before any call ran (before:3), with every
# call started and none run (after:3), started and run and not finished (wake:3, before:4), finished
# (after:4), and with the third call run and not finished (wake:5).
POINTS = ["commit.before:3", "commit.after:3", "commit.wake:3", "commit.before:4", "commit.after:4",
          "commit.wake:5"]  # fmt: skip


def run_child(db_url: str, ledger: Path, fault: str) -> int:
    env = {**os.environ, "TETHER_LEDGER_FILE": str(ledger), "TETHER_FAULT_AT": fault, "PYTHONPATH": str(HERE)}
    child = subprocess.run([sys.executable, str(HERE / "ledger_child.py"), db_url, str(RUNS)], env=env,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert child.stdout.startswith("ready"), child.stderr
    return child.returncode


def wait_until_the_server_is_done_with_the_child(db_url: str) -> None:
    """A COMMIT the child sent before it died still completes on the server: read after it did (once the
    child's sessions are gone), or a record could commit between what the test reads and the resume."""
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            for _ in range(200):
                others = conn.execute(sa.text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )).scalar()  # fmt: skip
                conn.rollback()
                if others == 0:
                    return
                time.sleep(0.05)
        raise AssertionError("the dead child's database sessions did not end")
    finally:
        engine.dispose()


def effects(ledger: Path) -> list[tuple[str, str]]:
    if not ledger.exists():
        return []
    return [(run_id, call_id) for run_id, call_id in (line.split() for line in ledger.read_text().splitlines())]


async def committed_calls(store: SqlStore) -> tuple[list[str], set[tuple[str, str]], set[tuple[str, str]]]:
    """The runs, and the (run, call) pairs whose tool_started / outcome (tool_finished, or the result
    supplied for an uncertain call) committed."""
    runs = [info.id for info in await store.list_runs(limit=100_000)]
    started, finished = set(), set()
    for run_id in runs:
        for r in await store.load(run_id):
            if isinstance(r.payload, ToolStarted):
                started.add((run_id, r.payload.call_id))
            elif isinstance(r.payload, ToolFinished):
                finished.add((run_id, r.payload.call_id))
            elif isinstance(r.payload, Decision) and isinstance(r.payload.answer, Supply):
                finished.add((run_id, r.payload.item_id))
    return runs, started, finished


async def resume_all(db_url: str, ledger: Path, runs: list[str]) -> set[tuple[str, str]]:
    """Resume every run to its end, answering `uncertain` calls from the ledger; the calls asked about."""
    os.environ["TETHER_LEDGER_FILE"] = str(ledger)  # a rerun in this process writes there too
    service = RunsService(SqlStore(db_url), lease_ttl_s=5)
    service.register(agent)
    asked: set[tuple[str, str]] = set()

    async def finish(run_id: str) -> None:
        deadline = time.time() + 30
        while True:
            try:
                view = await service.resume(run_id)
                break
            except TetherError as e:  # the dead child's lease (0.3 s) has not expired yet
                assert "leased by" in str(e) and time.time() < deadline, e
                await asyncio.sleep(0.05)
        while view.status == "paused":
            done = set(effects(ledger))
            answers = {}
            for item in view.pending:
                assert item.reason == "uncertain", item
                asked.add((run_id, item.id))
                took_effect = (run_id, item.id) in done
                answers[item.id] = ("supply", "noted") if took_effect else ("rerun", None)
            assert view.pause_id is not None
            view = await service.decide(run_id, view.pause_id, answers)
        assert view.status == "completed", (run_id, view.status, view.error)

    try:
        await asyncio.gather(*(finish(run_id) for run_id in runs))
    finally:
        await service.store.close()
    return asked


@pytest.mark.parametrize("fault", POINTS)
def test_a_kill_inside_the_commit_pipeline_keeps_the_write_ahead(tmp_path: Path, fault: str) -> None:
    kill_and_recover(f"sqlite:///{tmp_path / 'runs.db'}", tmp_path / "ledger.txt", fault)


@pytest.mark.parametrize("fault", ["commit.before:3", "commit.after:4", "commit.wake:3"])
def test_a_kill_inside_the_postgres_commit_pipeline_keeps_the_write_ahead(
    tmp_path: Path, request: pytest.FixtureRequest, fault: str
) -> None:
    """On Postgres a worker thread commits while the loop goes on: syncs must wait for it all the same."""
    kill_and_recover(request.getfixturevalue("postgres_url"), tmp_path / "ledger.txt", fault)


def kill_and_recover(db_url: str, ledger: Path, fault: str) -> None:
    assert run_child(db_url, ledger, fault) == -signal.SIGKILL  # the fault point was reached
    if db_url.startswith("postgresql"):
        wait_until_the_server_is_done_with_the_child(db_url)

    async def check() -> None:
        store = SqlStore(db_url)
        try:
            runs, started, finished = await committed_calls(store)
        finally:
            await store.close()
        assert len(runs) == RUNS
        ran = effects(ledger)
        assert set(ran) <= started, "a call ran before its tool_started committed"
        assert len(ran) == len(set(ran))
        asked = await resume_all(db_url, ledger, runs)
        assert asked == started - finished  # each started, unfinished call is uncertain, and only those

        store = SqlStore(db_url)
        try:
            _, started_after, finished_after = await committed_calls(store)
        finally:
            await store.close()
        final = effects(ledger)
        assert len(final) == len(set(final)) == RUNS * CALLS  # every call took effect exactly once
        assert set(final) == finished_after == started_after

    asyncio.run(check())


def test_a_bad_fault_point_is_refused_when_a_store_opens() -> None:
    from tether.adapters.store.sql.faults import parse

    assert parse(None) is None and parse("") is None
    assert parse("commit.wake:2") is not None
    for bad in ("commit.during:1", "commit.before", "commit.before:0", "commit.before:x"):
        with pytest.raises(ConfigError, match="TETHER_FAULT_AT"):
            parse(bad)
    code = "from tether.adapters.store.sql import SqlStore; SqlStore('sqlite:///:memory:')"
    child = subprocess.run([sys.executable, "-c", code], env={**os.environ, "TETHER_FAULT_AT": "commit.never:1"},
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert child.returncode != 0 and "TETHER_FAULT_AT='commit.never:1' is not a fault point" in child.stderr
