"""The agents of tests/fixtures/decisions_v1.db, and the script that wrote it (with the code of
record format 1, before decisions were typed).

    python tests/decisions_v1_fixture.py    # writes tests/fixtures/decisions_v1.{db,json}

The database holds runs answered with every kind of decision: continue with raised limits, an
edit at each stop, step, skip, supply (a client tool, an uncertain call), approve (with and
without arguments), deny, rerun, abort, forks with edits; some left paused, some with their
decisions recorded but not yet acted on (queued). The JSON file holds what that code showed for
each run, and what answering, resuming and forking them gave, so that a test can check that the
new code reads the old records to the same results (tests/test_decisions_v1.py).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from tether.adapters.models.scripted import ScriptedModel, call_tool, reply
from tether.adapters.tools.client import ClientTool
from tether.adapters.tools.function import tool
from tether.domain.agents import Limits
from tether.domain.models import ModelRequest
from tether.services.agents import Agent

HERE = Path(__file__).parent / "fixtures"
SLOW = {"charge": False}  # the next `charge` call sleeps past its timeout (it becomes uncertain)


@tool
async def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool(requires_approval=True)
async def send_email(to: str) -> str:
    """Send an email."""
    return f"sent to {to}"


@tool(timeout_s=0.2)
def charge(amount: int) -> str:
    """Charge an amount (not idempotent)."""
    if SLOW["charge"]:
        SLOW["charge"] = False
        time.sleep(0.6)
    return f"charged {amount}"


def _adder(request: ModelRequest, k: int) -> Any:
    results = [m.text for m in request.messages if m.role == "tool"]
    if len(results) < k:
        return call_tool("add", {"a": len(results), "b": 1})
    return reply(f"result {results[-1]}")


def _one_call(name: str, args: dict[str, Any]) -> Any:
    def script(request: ModelRequest) -> Any:
        results = [m.text for m in request.messages if m.role == "tool"]
        return reply(f"done: {results[0]}") if results else call_tool(name, args)

    return script


ADD1 = Agent("adder1", ScriptedModel(lambda r: _adder(r, 1)), tools=[add], ref="decisions_v1_fixture:ADD1")
ADD3 = Agent("adder3", ScriptedModel(lambda r: _adder(r, 3)), tools=[add], ref="decisions_v1_fixture:ADD3")
BUDGET = Agent("budget", ScriptedModel(lambda r: _adder(r, 3)), tools=[add], limits=Limits(max_steps=2),
               ref="decisions_v1_fixture:BUDGET")
MAIL = Agent("mail", ScriptedModel(_one_call("send_email", {"to": "boss@example.com"})), tools=[send_email],
             ref="decisions_v1_fixture:MAIL")
LOOKUP = Agent("lookup", ScriptedModel(_one_call("lookup", {"q": "price"})),
               tools=[ClientTool("lookup", "Look a thing up (the client runs it).")], ref="decisions_v1_fixture:LOOKUP")
CHARGE = Agent("charge", ScriptedModel(_one_call("charge", {"amount": 5})), tools=[charge],
               ref="decisions_v1_fixture:CHARGE")
AGENTS = [ADD1, ADD3, BUDGET, MAIL, LOOKUP, CHARGE]


def summary(view: Any) -> dict[str, Any]:
    """What a run shows, without ids (a fork or an edit mints new ones)."""
    return {
        "status": view.status,
        "output": view.output,
        "error": view.error,
        "messages": [[m.role, m.text, [[c.name, c.arguments] for c in m.tool_calls]] for m in view.messages],
        "steps": [[s.number, s.type, s.status, s.text, [[n, a] for _, n, a in s.tool_calls], s.name, s.arguments,
                   s.result, s.error, s.supplied_by] for s in view.steps],
        "pending": [[i.reason, i.stop, i.step, i.name] for i in view.pending],
    }


async def make(service: Any) -> dict[str, str]:
    """Runs answered with every kind of decision; returns their ids by name."""
    runs: dict[str, str] = {}

    async def answer_one(run: Any, action: str, payload: Any = None, **kw: Any) -> Any:
        return await service.answer(run.id, {run.pending[0].id: (action, payload)}, by="fixture", **kw)

    run = await service.start(BUDGET, "go")  # on_budget: continue with raised limits
    runs["budget_raised"] = run.id
    await answer_one(run, "continue", {"limits": {"max_steps": 20}})

    stops = ["before_model", "after_model", "before_tool", "after_tool", "before_finish"]
    run = await service.start(ADD1, "go", breakpoints=stops)  # an edit at every stop, a step
    runs["edits"] = run.id
    run = await answer_one(run, "edit", [{"role": "user", "content": "add five and five"}])  # before_model 1
    run = await answer_one(run, "edit", {"text": "adding", "tool_calls": [
        {"name": "add", "arguments": {"a": 5, "b": 5}}]})  # after_model 1
    run = await answer_one(run, "edit", {"a": 6, "b": 6})  # before_tool 2
    run = await answer_one(run, "edit", "100")  # after_tool 2
    run = await answer_one(run, "continue")  # before_model 3
    run = await answer_one(run, "step")  # after_model 3
    run = await answer_one(run, "edit", "the edited answer")  # before_finish 3
    assert run.status == "completed", run

    run = await service.start(ADD1, "go", breakpoints=["before_tool"])
    runs["skip"] = run.id
    await answer_one(run, "skip", "77")

    run = await service.start(MAIL, "go")
    runs["approve"] = run.id
    await answer_one(run, "approve")
    run = await service.start(MAIL, "go")
    runs["approve_args"] = run.id
    await answer_one(run, "approve", {"arguments": {"to": "me@example.com"}})
    run = await service.start(MAIL, "go")
    runs["deny"] = run.id
    await answer_one(run, "deny", "not on a Sunday")

    run = await service.start(LOOKUP, "go")
    runs["client_supply"] = run.id
    await service.submit_tool_outputs(run.id, {run.pending[0].id: "42 EUR"}, pause_id=run.pause_id, by="fixture")

    SLOW["charge"] = True
    run = await service.start(CHARGE, "go")
    assert run.pending[0].reason == "uncertain", run
    runs["uncertain_rerun"] = run.id
    await service.resolve_uncertain(run.id, run.pending[0].id, "rerun", by="fixture")
    SLOW["charge"] = True
    run = await service.start(CHARGE, "go")
    runs["uncertain_supply"] = run.id
    await service.resolve_uncertain(run.id, run.pending[0].id, "supply", "charged 5 (checked by hand)", by="fixture")

    run = await service.start(ADD1, "go", breakpoints=["before_tool"])
    runs["abort"] = run.id
    await answer_one(run, "abort")

    parent = await service.start(ADD3, "go")
    runs["parent"] = parent.id
    runs["fork_result"] = (await service.fork(parent.id, 6, {"result": "10"})).id
    runs["fork_arguments"] = (await service.fork(parent.id, 4, {"arguments": {"a": 7, "b": 7}})).id
    runs["fork_messages"] = (await service.fork(parent.id, 3, {"messages": [
        {"role": "user", "content": "start over"}]})).id

    # Left paused, to be answered by the new code.
    run = await service.start(ADD1, "go", breakpoints=["before_tool"])
    runs["paused_before_tool"] = run.id
    run = await service.start(MAIL, "go")
    runs["paused_approval"] = run.id

    # Decisions recorded but not acted on yet: resuming folds them.
    run = await service.start(ADD1, "go", breakpoints=["before_tool"])
    runs["queued_edit_arguments"] = run.id
    await answer_one(run, "edit", {"a": 20, "b": 22}, drive=False)
    run = await service.start(ADD1, "go", breakpoints=["after_model if step == 1"])
    runs["queued_edit_response"] = run.id
    await answer_one(run, "edit", {"text": None, "tool_calls": [{"name": "add", "arguments": {"a": 2, "b": 3}}]},
                     drive=False)
    run = await service.start(BUDGET, "go")
    runs["queued_budget"] = run.id
    await answer_one(run, "continue", {"limits": {"max_steps": 20}}, drive=False)
    run = await service.start(MAIL, "go")
    runs["queued_deny"] = run.id
    await answer_one(run, "deny", "no", drive=False)
    run = await service.start(ADD1, "go", breakpoints=["after_tool"])
    runs["queued_edit_result"] = run.id
    await answer_one(run, "edit", "5", drive=False)
    run = await service.start(ADD1, "go", breakpoints=["before_model if step == 3"])
    runs["queued_edit_messages"] = run.id
    await answer_one(run, "edit", [{"role": "user", "content": "just say hi"}], drive=False)
    return runs


async def follow_ups(service: Any, runs: dict[str, str]) -> dict[str, Any]:
    """What each run shows, then: answer the paused ones, resume the queued ones, fork every
    finished one at its last step (reusing all before it, answers included) and at step 2."""
    out: dict[str, Any] = {"show": {}, "after": {}, "fork_last": {}, "fork_2": {}}
    for name, run_id in runs.items():
        out["show"][name] = summary(await service.get(run_id))
    out["after"]["paused_before_tool"] = summary(await service.answer(runs["paused_before_tool"], by="fixture"))
    view = await service.get(runs["paused_approval"])
    out["after"]["paused_approval"] = summary(await service.answer(
        view.id, {view.pending[0].id: ("approve", {"arguments": {"to": "ops@example.com"}})}, by="fixture"))
    for name, run_id in runs.items():
        if name.startswith("queued_"):
            out["after"][name] = summary(await service.resume(run_id))
    for name, run_id in runs.items():
        view = await service.get(run_id)
        if view.status in ("completed", "cancelled"):
            last = view.steps[-1].number
            out["fork_last"][name] = summary(await service.fork(run_id, last))
            if last >= 2:
                out["fork_2"][name] = summary(await service.fork(run_id, 2))
    return out


async def main(directory: Path) -> None:
    from tether.adapters.store.sql import SqlStore
    from tether.services.runs import RunsService

    directory.mkdir(parents=True, exist_ok=True)
    db = directory / "decisions_v1.db"
    db.unlink(missing_ok=True)
    store = SqlStore(f"sqlite:///{db}")
    service = RunsService(store)
    runs = await make(service)
    await store.close()
    # Fold everything into the main file so the fixture is one file (no -wal beside it).
    import sqlite3

    with sqlite3.connect(db) as c:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        c.execute("PRAGMA journal_mode=DELETE")
    copy = directory / "decisions_v1.scratch.db"
    shutil.copy(db, copy)
    scratch = SqlStore(f"sqlite:///{copy}")
    service = RunsService(scratch)
    for agent in AGENTS:
        service.register(agent)
    expected = await follow_ups(service, runs)
    await scratch.close()
    for p in directory.glob("decisions_v1.scratch.db*"):
        p.unlink()
    (directory / "decisions_v1.json").write_text(json.dumps({"runs": runs, **expected}, indent=1) + "\n")


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE))
