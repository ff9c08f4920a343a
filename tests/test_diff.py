"""`diff_runs` and `tether runs diff`: the first step where two runs part ways, then both side by side."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tether.adapters.models.scripted import ScriptedModel, call_tool, reply
from tether.adapters.store.memory import MemoryStore
from tether.adapters.tools.function import tool
from tether.domain.agents import AgentSnapshot
from tether.domain.diff import IDENTICAL, diff_runs
from tether.domain.messages import Message, ToolCall
from tether.domain.models import ModelRequest, ModelResponse
from tether.domain.records import (
    Finished,
    ForkOrigin,
    ModelCalled,
    Record,
    RunStarted,
    ToolFinished,
    ToolStarted,
)
from tether.domain.usage import Usage
from tether.services.agents import Agent
from tether.services.runs import RunsService, open_service

pytestmark = pytest.mark.anyio

PRICE = {"roses": "2.40"}


@tool
def price_lookup(flower: str) -> str:
    """Market price of a flower per stem."""
    return PRICE[flower]


def florist(request: ModelRequest) -> ModelResponse:
    results = [m.text for m in request.messages if m.role == "tool"]
    usage = Usage(100 + 10 * len(results), 20)
    if not results:
        return call_tool("price_lookup", {"flower": "roses"}, usage=usage)
    if len(results) == 1:
        return call_tool("calculator", {"expression": f"{results[0]} * 1.15"}, usage=usage)
    return reply(f"Roses cost ${results[0]}; charge ${results[1]}.", usage=usage)


def agent(script=florist) -> Agent:
    model = ScriptedModel(script, input_price_per_mtok=1.0, output_price_per_mtok=2.0)
    return Agent("florist", model, instructions="Help the florist.", tools=[price_lookup, "calculator"])


@pytest.fixture
def service() -> RunsService:
    PRICE["roses"] = "2.40"
    return RunsService(MemoryStore())


async def test_identical_runs_do_not_diverge(service):
    a = await service.start(agent(), "What do roses cost?")
    b = await service.start(agent(), "What do roses cost?")
    assert a.status == b.status == "completed"
    d = diff_runs(a.records, b.records)
    assert d.first_divergence is None and d.identical and d.reason == IDENTICAL
    assert [r.step for r in d.rows] == [1, 2, 3, 4, 5]
    assert all(r.same and r.reason == "" for r in d.rows)
    # the call ids Tether minted differ, and do not count
    a_ids = {s.call_id for s in a.steps if s.call_id}
    assert a_ids and not a_ids & {s.call_id for s in b.steps if s.call_id}
    assert d.status_a == d.status_b == "completed"
    assert d.totals_a.live_tokens == d.totals_b.live_tokens == (100 + 110 + 120) + 3 * 20
    assert d.totals_a.live_cost_usd == pytest.approx(330e-6 + 60 * 2e-6)
    assert d.totals_a.reused_steps == 0 and d.totals_a.reused_cost_usd == 0


async def test_a_changed_tool_result_diverges_at_the_tool_step_then_the_model_step_after_it(service):
    a = await service.start(agent(), "What do roses cost?")
    PRICE["roses"] = "3.00"
    b = await service.start(agent(), "What do roses cost?")
    d = diff_runs(a.records, b.records)
    assert d.first_divergence == 2
    assert d.reason == "tool result differs"
    same = {r.step: r.same for r in d.rows}
    assert same == {1: True, 2: False, 3: False, 4: False, 5: False}
    row2, row3, row4, row5 = d.rows[1:]
    assert row2.a.result == "2.40" and row2.b.result == "3.00" and row2.differs == ("result",)
    # the model saw a different conversation, so its request differs, and so does what it asked for
    assert row3.reason == "request fingerprint differs"
    assert "tool_calls" in row3.differs
    assert row4.reason == "tool arguments differ"
    assert row5.reason == "request fingerprint differs"


async def test_a_different_model_answer_to_the_same_request(service):
    a = await service.start(agent(), "What do roses cost?")

    def other(request):
        out = florist(request)
        return reply("Roses are expensive.") if out.text else out

    b = await service.start(agent(other), "What do roses cost?")
    d = diff_runs(a.records, b.records)
    assert (d.first_divergence, d.reason) == (5, "model output differs")
    assert d.rows[4].differs == ("text",)


async def test_a_different_task_diverges_at_the_first_request(service):
    a = await service.start(agent(), "What do roses cost?")
    b = await service.start(agent(), "What do roses cost, please?")
    d = diff_runs(a.records, b.records)
    assert (d.first_divergence, d.reason) == (1, "request fingerprint differs")
    assert d.rows[0].differs == ("fingerprint",)  # same answer to a different request


async def test_a_run_with_an_extra_step(service):
    a = await service.start(agent(), "What do roses cost?")

    def longer(request):
        results = [m.text for m in request.messages if m.role == "tool"]
        if len(results) == 2:
            return call_tool("calculator", {"expression": "1 + 1"})
        return florist(request) if len(results) < 2 else reply("done")

    b = await service.start(agent(longer), "What do roses cost?")
    d = diff_runs(a.records, b.records)
    assert d.first_divergence == 5 and d.reason == "model output differs"
    assert [r.step for r in d.rows] == [1, 2, 3, 4, 5, 6, 7]
    assert d.rows[5].a is None and d.rows[5].reason == "run A has no step 6"
    assert d.rows[6].reason == "run A has no step 7"

    d = diff_runs(b.records, a.records)
    assert d.rows[5].b is None and d.rows[5].reason == "run B has no step 6"
    # a run that is a prefix of the other diverges where the shorter one stops
    cut = [r for r in b.records if not (isinstance(r.payload, (ModelCalled, ToolStarted, ToolFinished))
                                        and r.payload.step > 4) and not isinstance(r.payload, Finished)]
    d = diff_runs(b.records, cut)
    assert (d.first_divergence, d.reason) == (5, "run B has no step 5")
    assert d.status_a == "completed" and d.status_b is None


# -- reused steps ---------------------------------------------------------------------------------


def _log(run_id: str, *, reused_upto: int, price: str, fork: ForkOrigin | None = None) -> list[Record]:
    """A hand-built log of the florist run; steps <= `reused_upto` were copied from a parent."""
    snap = AgentSnapshot(name="florist", model="scripted", instructions="Help the florist.")
    out: list[Record] = [Record(run_id, 1, 1000.0, RunStarted(snap, [Message.user("roses?")], fork=fork))]

    def add(payload) -> None:
        out.append(Record(run_id, len(out) + 1, 1000.0 + len(out), payload))

    c1 = ToolCall(f"call_{run_id}_1", "price_lookup", '{"flower": "roses"}')
    add(ModelCalled(1, "fp1", ModelResponse(None, [c1], "tool_calls", Usage(100, 20)), cost_usd=0.001,
                    duration_s=0.5, reused=reused_upto >= 1))
    if reused_upto < 2:
        add(ToolStarted(2, c1.id, c1.name, c1.arguments))
    add(ToolFinished(2, c1.id, c1.name, result=price, duration_s=0.1, reused=reused_upto >= 2))
    add(ModelCalled(3, "fp3-" + price, ModelResponse(f"Roses cost ${price}.", usage=Usage(150, 30)),
                    cost_usd=0.002, duration_s=0.7, reused=reused_upto >= 3))
    add(Finished("completed", f"Roses cost ${price}.", usage=Usage(250, 50), cost_usd=0.003))
    return out


def test_reused_steps_are_marked_and_not_counted_as_live():
    parent = _log("run_parent", reused_upto=0, price="2.40")
    fork = _log("run_fork", reused_upto=2, price="3.00", fork=ForkOrigin("run_parent", 2))
    d = diff_runs(parent, fork)
    assert (d.first_divergence, d.reason) == (2, "tool result differs")
    assert [r.b.reused for r in d.rows] == [True, True, False]
    assert [r.a.reused for r in d.rows] == [False, False, False]
    assert d.rows[0].same and d.rows[0].b.live is False

    assert (d.totals_a.live_steps, d.totals_a.reused_steps) == (3, 0)
    assert d.totals_a.live_tokens == 300 and d.totals_a.live_cost_usd == pytest.approx(0.003)
    assert (d.totals_b.live_steps, d.totals_b.reused_steps) == (1, 2)
    assert d.totals_b.live_tokens == 180 and d.totals_b.live_cost_usd == pytest.approx(0.002)
    assert d.totals_b.reused_tokens == 120 and d.totals_b.reused_cost_usd == pytest.approx(0.001)


def test_a_full_replay_reuses_every_step_and_costs_nothing_live():
    original = _log("run_a", reused_upto=0, price="2.40")
    replay = _log("run_b", reused_upto=3, price="2.40")
    d = diff_runs(original, replay)
    assert d.identical  # reused or live, the steps are the same
    assert d.totals_b.live_steps == 0 and d.totals_b.live_tokens == 0 and d.totals_b.live_cost_usd == 0
    assert d.totals_b.reused_cost_usd == pytest.approx(0.003)


def test_an_unknown_price_is_not_a_zero_cost():
    a = _log("run_a", reused_upto=0, price="2.40")
    a[1].payload.cost_usd = None
    d = diff_runs(a, a)
    assert d.identical and d.totals_a.live_cost_usd is None


def test_the_table_marks_divergence_reused_and_totals():
    from rich.console import Console

    from tether.interfaces.cli.render import diff_header, diff_table

    d = diff_runs(_log("run_parent", reused_upto=0, price="2.40"),
                  _log("run_fork", reused_upto=2, price="3.00"))
    console = Console(width=160, record=True, color_system=None)
    console.print(diff_header(d))
    console.print(diff_table(d, "run_parent", "run_fork"))
    out = console.export_text()
    assert out.startswith("runs diverge at step 2: tool result differs")
    assert "2 ≠" in out and "first" in out
    assert "→ 2.40" in out and "→ 3.00" in out
    assert "reused" in out and "live" in out
    assert "spent by the parent run, not this one" in out
    assert "$0.003000" in out and "$0.002000" in out  # live cost of A, live cost of B


# -- the command ------------------------------------------------------------------------------------


async def test_tether_runs_diff_on_a_sqlite_file(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("TETHER_HOME", str(home))
    monkeypatch.delenv("TETHER_DATABASE_URL", raising=False)
    PRICE["roses"] = "2.40"
    service = open_service()
    try:
        a = await service.start(agent(), "What do roses cost?")
        b = await service.start(agent(), "What do roses cost?")
        PRICE["roses"] = "3.00"
        c = await service.start(agent(), "What do roses cost?")
    finally:
        await service.store.close()  # type: ignore[union-attr]
    assert a.status == b.status == c.status == "completed"

    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR", "TETHER_DATABASE_URL")}
    env.update(TETHER_HOME=str(home), NO_COLOR="1")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tether.interfaces.cli.app", "runs", "diff", *args],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)

    same = cli(a.id, b.id)
    assert same.returncode == 0, same.stdout + same.stderr
    assert same.stdout.startswith("no divergence: the runs took the same steps")
    assert a.id in same.stdout and b.id in same.stdout and "total" in same.stdout
    assert "≠" not in same.stdout

    differs = cli(a.id, c.id)
    assert differs.returncode == 0, differs.stdout + differs.stderr
    assert differs.stdout.startswith("runs diverge at step 2: tool result differs")
    assert "→ 2.40" in differs.stdout and "→ 3.00" in differs.stdout

    as_json = cli(a.id, c.id, "--json")
    data = json.loads(as_json.stdout)
    assert data["first_divergence"] == 2 and data["run_b"] == c.id and len(data["rows"]) == 5

    unknown = cli(a.id, "run_nope")
    assert unknown.returncode == 2
    assert "error: no run 'run_nope'" in unknown.stderr and "Traceback" not in unknown.stderr
