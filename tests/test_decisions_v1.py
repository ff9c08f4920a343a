"""Records of format 1 (decisions with an untyped payload) still fold, show, resume and fork.

tests/fixtures/decisions_v1.db was written by the code before typed decisions (the script is
tests/decisions_v1_fixture.py), with runs answered by every kind of decision, some left paused and
some queued with their answers recorded; decisions_v1.json holds what that code showed for them and
what answering, resuming and forking them gave. The new code must give the same.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import decisions_v1_fixture as fixture
from tether.adapters.store.sql import SqlStore
from tether.domain.answers import (
    Abort,
    Approve,
    Continue,
    Deny,
    EditArguments,
    EditMessages,
    EditOutput,
    EditResponse,
    EditResult,
    Rerun,
    Skip,
    Step,
    Supply,
)
from tether.domain.codec import dump_payload, load_payload
from tether.domain.records import FORMAT_VERSION, Decision
from tether.services.runs import RunsService

pytestmark = pytest.mark.anyio

FIXTURES = Path(__file__).parent / "fixtures"
EXPECTED = json.loads((FIXTURES / "decisions_v1.json").read_text())


@pytest.fixture
async def service(tmp_path: Path) -> Any:
    db = tmp_path / "old.db"
    shutil.copy(FIXTURES / "decisions_v1.db", db)
    store = SqlStore(f"sqlite:///{db}")
    service = RunsService(store)
    for agent in fixture.AGENTS:
        service.register(agent)
    yield service
    await store.close()


def as_now(expected: Any) -> Any:
    """The old summaries with the two things the steps view now shows differently: the arguments
    of a call approved with other arguments are JSON text (a dict before, unlike every other
    step's), and a denied call's error reads as what the model saw."""
    if isinstance(expected, dict):
        if "steps" in expected:
            expected = {**expected, "steps": [_step_now(s) for s in expected["steps"]]}
        return {k: as_now(v) for k, v in expected.items()}
    return expected


def _step_now(s: list[Any]) -> list[Any]:
    s = list(s)
    if isinstance(s[6], dict):
        s[6] = json.dumps(s[6])
    if isinstance(s[8], str) and s[8].startswith("denied: "):
        s[8] = "a person denied this call: " + s[8].removeprefix("denied: ")
    return s


async def test_old_runs_show_resume_answer_and_fork_as_before(service: Any) -> None:
    runs = EXPECTED["runs"]
    got = await fixture.follow_ups(service, runs)
    for part in ("show", "after", "fork_last", "fork_2"):
        for name, expected in EXPECTED[part].items():
            assert got[part][name] == as_now(expected), (part, name)


async def test_old_decisions_read_as_typed_answers(service: Any) -> None:
    runs = EXPECTED["runs"]
    kinds: dict[str, list[Any]] = {}
    for name, run_id in runs.items():
        view = await service.get(run_id)
        decisions = [r for r in view.records if isinstance(r.payload, Decision)]
        assert all(r.v == 1 for r in decisions)
        kinds[name] = [r.payload for r in decisions]
    (budget,) = kinds["budget_raised"]
    assert budget.answer == Continue({"max_steps": 20}) and budget.stop == "on_budget" and budget.step == 5
    assert [type(d.answer) for d in kinds["edits"]] == [EditMessages, EditResponse, EditArguments, EditResult,
                                                        Continue, Step, EditOutput]
    response = kinds["edits"][1]
    assert response.step == 1 and response.call_id is None and response.answer.tool_calls[0].name == "add"
    arguments = kinds["edits"][2]
    assert arguments.call_id == arguments.item_id and arguments.answer.old == '{"a": 5, "b": 5}'
    assert kinds["skip"][0].answer == Skip("77")
    assert kinds["approve"][0].answer == Approve()
    assert kinds["approve_args"][0].answer == Approve('{"to": "me@example.com"}')
    assert kinds["deny"][0].answer == Deny("not on a Sunday")
    assert kinds["client_supply"][0].answer == Supply("42 EUR")
    assert kinds["uncertain_rerun"][0].answer == Rerun()
    assert kinds["uncertain_supply"][0].answer == Supply("charged 5 (checked by hand)")
    assert kinds["abort"][0].answer == Abort()
    (fork_messages,) = kinds["fork_messages"][-1:]
    assert fork_messages.pause_id == "fork" and fork_messages.step == 3 and fork_messages.stop == "before_model"
    assert isinstance(fork_messages.answer, EditMessages) and fork_messages.answer.old is None
    assert kinds["fork_result"][-1].answer == Skip("10")


async def test_new_decisions_are_written_in_the_new_format(service: Any, tmp_path: Path) -> None:
    run_id = EXPECTED["runs"]["paused_before_tool"]
    await service.answer(run_id, by="test")
    with sqlite3.connect(tmp_path / "old.db") as db:
        rows = db.execute("SELECT v, payload FROM records WHERE run_id = ? AND kind = 'decision'",
                          (run_id,)).fetchall()
    (v, payload), = rows
    assert v == FORMAT_VERSION == 2
    assert json.loads(payload)["answer"] == {"type": "continue", "limits": {}}
    decision = load_payload(payload, v)
    assert isinstance(decision, Decision) and decision.answer == Continue() and decision.call_id is not None


def test_every_answer_round_trips() -> None:
    from tether.domain.messages import Message, ToolCall

    answers = [Continue({"max_steps": 9, "max_cost_usd": None}), Step(), Skip("x"), Supply("y"), Approve(),
               Approve('{"a": 1}'), Deny(), Deny("no"), Rerun(), Abort(),
               EditMessages([Message.user("hi")], [Message.user("old")]),
               EditResponse("t", [ToolCall("call_1", "add", "{}")], Message.assistant("old")),
               EditArguments("{}", "{\"a\": 1}"), EditResult("r", None), EditOutput("o", "old")]
    for a in answers:
        d = Decision("pause_1", "call_1", a, "me", "call_1", 2, "before_tool")
        assert load_payload(dump_payload(d)) == d, a
        assert load_payload(dump_payload(d), 2) == d
        assert d.action == a.action
