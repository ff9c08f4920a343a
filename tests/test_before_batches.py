"""A database written before batches and the governor (schema 4) is migrated, and its old runs still
fold, show, answer, resume and fork.

tests/fixtures/before_batches.db was written by tests/before_batches_fixture.py with the code of the
commit before batches. Its budget-paused run paused under the old rule (after the spend reached the
budget); answered with a raised budget, it goes on under the governor.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import before_batches_fixture as fixture
from tether.adapters.store.migrations import LATEST
from tether.adapters.store.sql import SqlStore
from tether.domain.answers import Continue
from tether.services.runs import RunsService

pytestmark = pytest.mark.anyio

FIXTURES = Path(__file__).parent / "fixtures"
RUNS: dict[str, str] = json.loads((FIXTURES / "before_batches.json").read_text())


@pytest.fixture
async def service(tmp_path: Path) -> Any:
    db = tmp_path / "old.db"
    shutil.copy(FIXTURES / "before_batches.db", db)
    store = SqlStore(f"sqlite:///{db}")
    service = RunsService(store)
    for agent in fixture.AGENTS:
        service.register(agent)
    yield service
    await store.close()


def _schema(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0])


async def test_the_old_database_is_migrated_and_its_runs_show_as_before(service: Any, tmp_path: Path) -> None:
    assert _schema(FIXTURES / "before_batches.db") == 4
    completed = await service.get(RUNS["completed"])
    assert _schema(tmp_path / "old.db") == LATEST
    assert completed.status == "completed" and completed.output == "result 3"
    assert completed.cost_usd == pytest.approx(0.08)
    assert [s.type for s in completed.steps] == ["model", "tool"] * 3 + ["model"]
    paused = await service.get(RUNS["paused_budget"])
    assert paused.status == "paused" and paused.pending[0].reason == "budget"
    assert "max_cost_usd" in (paused.pending[0].detail or "")
    listed = {r.id: r.status for r in await service.list(limit=20)}
    assert listed == {RUNS["completed"]: "completed", RUNS["paused_budget"]: "paused",
                      RUNS["paused_before_tool"]: "paused", RUNS["queued"]: "queued",
                      RUNS["thread_first"]: "completed", RUNS["thread_second"]: "completed"}


async def test_an_old_budget_pause_answered_with_a_raised_budget_goes_on(service: Any) -> None:
    run_id = RUNS["paused_budget"]
    view = await service.get(run_id)
    # The call the answer continues past is made; the next one is reserved at its worst case (its input
    # by byte count plus the default 4,096-token output cap at $0.002 a token), which $1.00 cannot hold.
    again = await service.answer(run_id, {view.pending[0].id: Continue({"max_cost_usd": 1.0})}, by="test")
    assert again.status == "paused" and again.pending[0].reason == "budget", again
    assert "may cost up to" in (again.pending[0].detail or "")
    assert again.cost_usd == pytest.approx(0.08)
    done = await service.answer(run_id, {again.pending[0].id: Continue({"max_cost_usd": 50.0})}, by="test")
    assert done.status == "completed" and done.output == "result 5", done
    assert done.cost_usd == pytest.approx(0.12)


async def test_old_paused_and_queued_runs_go_on_and_old_runs_fork(service: Any) -> None:
    done = await service.answer(RUNS["paused_before_tool"], by="test")
    assert done.status == "completed" and done.output == "result 3"
    resumed = await service.resume(RUNS["queued"])
    assert resumed.status == "completed" and resumed.output == "result 3"
    fork = await service.fork(RUNS["completed"], 4, {"result": "41"})
    assert fork.status == "completed" and fork.output == "result 3"
    assert (await service.store.get_run(fork.id)).parent_run_id == RUNS["completed"]
    assert "41" in [m.text for m in fork.messages if m.role == "tool"]
    nxt = await service.continue_thread("thread_before_batches", "once more", agent=fixture.ADD3)
    assert nxt.status == "completed"
    assert [m.text for m in nxt.messages if m.role == "user"] == ["hello", "again", "once more"]
