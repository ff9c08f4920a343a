"""A batch budget cannot be overshot: 64 concurrent cases against a priced fake model share $1.00, with
at least 48 model calls in flight at once (a serialising lock would not pass); the total spend read
from the runs' logs never passes $1.00, the cases that cannot be paid for pause saying why, and raising
the budget continues them. The same through the CLI with a SIGKILL mid-way and a resume.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tether.adapters.store.sql import SqlStore
from tether.domain.batches import BatchOptions, CaseStatus, cases_of
from tether.domain.records import ModelCalled, RunStarted
from tether.services.agents import load_agent_file
from tether.services.batches import BatchesService
from tether.services.runs import RunsService

CRASH = Path(__file__).parent / "crash"
sys.path.insert(0, str(CRASH))
import budget_batch_tools  # noqa: E402

CASES = 64


async def _logged_spend(store: SqlStore, batch_id: str) -> tuple[float, int]:
    """The dollars of every model call the batch's runs recorded, and how many calls."""
    total, calls = 0.0, 0
    for info in await store.list_runs(limit=100_000):
        records = await store.load(info.id)
        start = records[0].payload
        if not isinstance(start, RunStarted) or start.batch is None or start.batch.batch_id != batch_id:
            continue
        for r in records:
            if isinstance(r.payload, ModelCalled):
                total += r.payload.cost_usd or 0.0
                calls += 1
    return total, calls


@pytest.mark.anyio
async def test_64_concurrent_cases_never_spend_past_the_batch_budget(tmp_path: Path) -> None:
    store = SqlStore(f"sqlite:///{tmp_path / 'tether.db'}")
    try:
        batches = BatchesService(RunsService(store))
        agent = load_agent_file(CRASH / "budget_batch.toml")
        info = await batches.create(agent, cases_of(f"case {i}" for i in range(CASES)),
                                    BatchOptions(concurrency=CASES, max_cost_usd=1.00))
        budget_batch_tools.IN_FLIGHT[:] = [0, 0]
        done = await batches.run(info.id)
        assert budget_batch_tools.IN_FLIGHT[1] >= 48, budget_batch_tools.IN_FLIGHT  # truly concurrent
        spent, calls = await _logged_spend(store, info.id)
        assert spent <= 1.00 + 1e-9, spent
        assert spent >= 0.9, spent  # the budget is used, not left idle by reservations
        paused = await batches.cases(info.id, status=CaseStatus.PAUSED, limit=CASES)
        assert paused and done.counts[CaseStatus.COMPLETED] + len(paused) == CASES
        for case in paused:
            assert (case.pause_reason or "").startswith("budget"), case
            assert info.id in (case.pause_reason or "") and "$1.00" in (case.pause_reason or "")
        budget = await store.get_budget(info.id)
        assert budget is not None and budget.spent_usd == pytest.approx(spent)
        assert budget.reserved_usd == pytest.approx(0.0)

        # Raising the budget continues them.
        answered = await batches.answer(info.id, action="continue", max_cost_usd=3.00)
        assert answered == len(paused)
        done = await batches.run(info.id)
        assert done.counts[CaseStatus.COMPLETED] == CASES, done.counts
        spent, calls = await _logged_spend(store, info.id)
        assert calls == 2 * CASES and spent <= 3.00
    finally:
        await store.close()


def test_a_batch_killed_mid_spend_and_resumed_stays_within_its_budget(cli: Any, tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps(f"case {i}") + "\n" for i in range(CASES)))
    proc = cli.popen("batch", "run", str(CRASH / "budget_batch.toml"), str(tasks), "--concurrency", str(CASES),
                     "--max-cost", "1.00")
    db = tmp_path / "home" / "tether.db"
    deadline = time.monotonic() + 60
    while not (db.exists() and _model_calls(db) >= 40):  # kill it mid-way through its spending
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no model calls were recorded"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    listed = cli("batch", "list")
    batch_id = listed.stdout.split("batch_", 1)[1].split()[0]
    batch_id = f"batch_{batch_id}"

    resumed = cli("batch", "resume", batch_id)
    assert resumed.returncode == 3, resumed.all  # ended with cases paused on the budget
    assert f"batch answer {batch_id} --continue --max-cost" in resumed.all

    async def spend() -> tuple[float, int]:
        store = SqlStore(f"sqlite:///{db}")
        try:
            return await _logged_spend(store, batch_id)
        finally:
            await store.close()

    spent, _ = asyncio.run(spend())
    assert 0.9 <= spent <= 1.00 + 1e-9, spent

    answered = cli("batch", "answer", batch_id, "--continue", "--max-cost", "3")
    assert answered.returncode == 0, answered.all
    finished = cli("batch", "resume", batch_id)
    assert finished.returncode == 0, finished.all
    spent, calls = asyncio.run(spend())
    assert calls == 2 * CASES and spent <= 3.00


def _model_calls(db: Path) -> int:
    import sqlite3

    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM records WHERE kind = 'model_call'").fetchone()[0])
    except sqlite3.Error:
        return 0


@pytest.mark.anyio
async def test_a_call_that_fits_once_the_calls_in_flight_settle_waits_and_says_so(tmp_path: Path) -> None:
    from tether.adapters.models.scripted import ScriptedModel, reply
    from tether.domain.models import ModelRequest
    from tether.domain.usage import Usage
    from tether.services.agents import Agent

    async def slow(request: ModelRequest):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0.1)
        return reply("ok", usage=Usage(150, 60))  # $0.009 at $20 / $100 per million

    store = SqlStore(f"sqlite:///{tmp_path / 'tether.db'}")
    try:
        service = RunsService(store)
        # Each call's worst case (its input by byte count + 100 output tokens) is about $0.0105: two do not
        # fit $0.02 at once, but the second fits once the first has settled for $0.009.
        await store.put_budget("b", max_usd=0.02, max_tokens=None)
        agent = Agent("w", ScriptedModel(slow, input_price_per_mtok=20.0, output_price_per_mtok=100.0),
                      settings={"max_tokens": 100})
        events: list[Any] = []
        views = await asyncio.gather(*(service.start(agent, "go", budgets=["b"], on_event=events.append)
                                       for _ in range(2)))
        assert [v.status for v in views] == ["completed", "completed"], views
        waits = [e.detail for e in events if e.type == "budget_wait"]
        assert len(waits) == 1 and waits[0].startswith("waiting for the calls in flight to settle: budget b: $"), waits
        budget = await store.get_budget("b")
        assert budget is not None and budget.spent_usd == pytest.approx(0.018)
    finally:
        await store.close()
