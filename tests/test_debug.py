"""Breakpoints, stepping, edits, approvals, budgets and forks, through the runs service."""

from __future__ import annotations

import asyncio
import json

import pytest

from tether.adapters.models.scripted import ScriptedModel, call_tool, calls, reply
from tether.adapters.store.memory import MemoryStore
from tether.adapters.tools.function import tool
from tether.domain.agents import Limits
from tether.domain.answers import EditArguments
from tether.domain.breakpoints import BreakpointError
from tether.domain.errors import AlreadyResumed, ConfigError, TetherError
from tether.domain.models import ModelRequest
from tether.domain.records import Decision, ModelCalled, ToolFinished
from tether.domain.usage import Usage
from tether.services.agents import Agent
from tether.services.runs import RunsService

pytestmark = pytest.mark.anyio

seen_args: list[dict] = []


@tool
async def add(a: int, b: int) -> int:
    """Add two integers."""
    seen_args.append({"a": a, "b": b})
    return a + b


def adder(k: int = 2):
    """Asks for add(n, 1) while fewer than k results; then answers with the last result."""

    def script(request: ModelRequest):
        results = [m.text for m in request.messages if m.role == "tool"]
        if len(results) < k:
            return call_tool("add", {"a": len(results), "b": 1}, usage=Usage(100, 10))
        return reply(f"result {results[-1]}", usage=Usage(100, 10))

    return script


class Recorder:
    """Wraps a script and keeps every request the model got."""

    def __init__(self, script):
        self.script, self.requests = script, []

    def __call__(self, request):
        self.requests.append(request)
        return self.script(request)


@pytest.fixture
def service() -> RunsService:
    seen_args.clear()
    return RunsService(MemoryStore())


def agent(script, **kw) -> Agent:
    return Agent("dbg", ScriptedModel(script), tools=kw.pop("tools", [add]), **kw)


async def test_every_stop_can_pause_and_continue(service):
    stops = ["before_model", "after_model", "before_tool", "after_tool", "before_finish"]
    run = await service.start(agent(adder(1)), "go", breakpoints=stops)
    seen = []
    while run.status == "paused":
        (item,) = run.pending
        seen.append((item.stop, item.step))
        run = await service.answer(run.id)
    assert run.status == "completed" and run.output == "result 1"
    assert seen == [("before_model", 1), ("after_model", 1), ("before_tool", 2), ("after_tool", 2),
                    ("before_model", 3), ("after_model", 3), ("before_finish", 3)]


async def test_tool_glob_and_condition_filters(service):
    @tool
    async def delete_file(path: str) -> str:
        """Delete a file."""
        return "deleted"

    script = Recorder(lambda r: calls([("delete_file", {"path": "/tmp/a"}), ("delete_file", {"path": "/etc/x"}),
                                      ("add", {"a": 1, "b": 1})]) if len(r.messages) == 1 else reply("ok"))
    run = await service.start(agent(script, tools=[delete_file, add]), "go",
                              breakpoints=['before_tool:delete_* if matches(args.path, "^/etc")'])
    # only the /etc call stops; the other calls of the batch finish meanwhile
    assert [(i.name, json.loads(i.arguments)["path"]) for i in run.pending] == [("delete_file", "/etc/x")]
    done = {s.arguments: s.result for s in run.steps if s.type == "tool"}
    assert done['{"path": "/tmp/a"}'] == "deleted" and done['{"a": 1, "b": 1}'] == "2"
    run = await service.answer(run.id)
    assert run.status == "completed"


async def test_step_conditions(service):
    run = await service.start(agent(adder(3)), "go", breakpoints=["before_tool:add if step >= 4"])
    assert run.pending[0].step == 4
    run = await service.answer(run.id)
    assert run.pending[0].step == 6  # "always": it stops again
    run = await service.answer(run.id)
    assert run.status == "completed"


async def test_a_once_breakpoint_hits_once_and_counts_hits(service):
    from tether.domain.breakpoints import parse_breakpoint

    run = await service.start(agent(adder(3)), "go",
                              breakpoints=[parse_breakpoint("before_tool:add", id="bp_1", once=True)])
    assert run.pending[0].breakpoint_id == "bp_1"
    run = await service.answer(run.id)
    assert run.status == "completed"
    (bp,) = await service.breakpoints(run.id)
    assert bp.hits == 1


async def test_unknown_cost_makes_cost_conditions_false_and_warns(service):
    class Unpriced(ScriptedModel):
        def cost_usd(self, response):
            return None

    unpriced = Agent("dbg", Unpriced(adder(1)), tools=[add])
    run = await service.start(unpriced, "go", breakpoints=["after_model if run.cost_usd > -1"])
    assert run.status == "completed"  # never true: the cost is unknown
    paused = await service.start(unpriced, "go", breakpoints=["before_model"])
    _, warnings = await service.add_breakpoint(paused.id, "after_model if run.cost_usd > 0.1")
    assert any("cost is unknown" in w for w in warnings)
    _, warnings = await service.add_breakpoint(paused.id, "before_tool if result == 'x'")
    assert any("result has no value at before_tool" in w for w in warnings)


async def test_bad_breakpoints_are_refused_when_set(service):
    with pytest.raises(BreakpointError, match="column"):
        await service.start(agent(adder(1)), "go", breakpoints=["after_model if run.cost_usd >"])
    with pytest.raises(BreakpointError, match="before_tool"):
        await service.start(agent(adder(1)), "go", breakpoints=["befor_tool"])
    assert await service.list() == []


async def test_step_goes_to_the_very_next_stop(service):
    run = await service.start(agent(adder(1)), "go", breakpoints=["before_model if step == 1"])
    stops = []
    while run.status == "paused":
        stops.append(run.pending[0].stop)
        run = await service.answer(run.id, default="step")
    assert stops == ["before_model", "after_model", "before_tool", "after_tool", "before_model",
                     "after_model", "before_finish"]


async def test_breakpoints_can_be_added_and_removed_while_paused(service):
    run = await service.start(agent(adder(2)), "go", breakpoints=["before_model if step == 1"])
    bp, _ = await service.add_breakpoint(run.id, "before_tool:add")
    run = await service.answer(run.id)
    assert run.pending[0].stop == "before_tool" and run.pending[0].breakpoint_id == bp.id
    await service.remove_breakpoint(run.id, bp.id)
    run = await service.answer(run.id)
    assert run.status == "completed"
    with pytest.raises(TetherError, match="has no breakpoint"):
        await service.remove_breakpoint(run.id, "bp_99")


async def test_a_breakpoint_added_while_running_is_picked_up_at_the_next_stop(service):
    gate = asyncio.Event()

    @tool
    async def wait() -> str:
        """Wait for the gate."""
        await gate.wait()
        return "opened"

    ag = agent(lambda r: reply("done") if any(m.role == "tool" for m in r.messages) else call_tool("wait"),
               tools=[wait])
    task = asyncio.create_task(service.start(ag, "go"))
    await asyncio.sleep(0.05)
    (run_id,) = service._active
    await service.add_breakpoint(run_id, "before_finish")
    gate.set()
    run = await task
    assert run.status == "paused" and run.pending[0].stop == "before_finish"


async def test_edit_arguments_reach_the_tool(service):
    run = await service.start(agent(adder(1)), "go", breakpoints=["before_tool:add"])
    assert json.loads(run.pending[0].arguments) == {"a": 0, "b": 1}
    run = await service.answer(run.id, {run.pending[0].id: ("edit", {"a": 40, "b": 2})})
    assert seen_args == [{"a": 40, "b": 2}]
    assert run.output == "result 42"
    edit = next(r.payload for r in run.records if isinstance(r.payload, Decision))
    assert edit.action == "edit" and isinstance(edit.answer, EditArguments) and edit.answer.old == '{"a": 0, "b": 1}'
    assert json.loads(edit.answer.arguments) == {"a": 40, "b": 2}


async def test_an_edited_result_is_what_the_model_sees_next(service):
    script = Recorder(adder(1))
    run = await service.start(agent(script), "go", breakpoints=["after_tool:add"])
    run = await service.answer(run.id, {run.pending[0].id: ("edit", "1000")})
    assert [m.text for m in script.requests[-1].messages if m.role == "tool"] == ["1000"]
    assert run.output == "result 1000"


async def test_edit_the_model_response_and_the_next_request(service):
    script = Recorder(adder(1))
    run = await service.start(agent(script), "go", breakpoints=["after_model if step == 1"])
    new = {"text": None, "tool_calls": [{"name": "add", "arguments": {"a": 5, "b": 5}}]}
    run = await service.answer(run.id, {run.pending[0].id: ("edit", new)})
    assert seen_args == [{"a": 5, "b": 5}] and run.output == "result 10"

    run = await service.start(agent(script), "go", breakpoints=["before_model if step == 1"])
    msgs = [{"role": "user", "content": "a different question"}]
    run = await service.answer(run.id, {run.pending[0].id: ("edit", msgs)})
    assert script.requests[-2].messages[-1].text == "a different question"


async def test_edit_the_final_answer(service):
    run = await service.start(agent(adder(1)), "go", breakpoints=["before_finish"])
    run = await service.answer(run.id, {run.pending[0].id: ("edit", "a better answer")})
    assert run.status == "completed" and run.output == "a better answer"


async def test_skip_a_tool_call_by_supplying_its_result(service):
    run = await service.start(agent(adder(1)), "go", breakpoints=["before_tool:add"])
    run = await service.answer(run.id, {run.pending[0].id: ("skip", "77")})
    assert seen_args == [] and run.output == "result 77"
    assert run.steps[1].result == "77"


async def test_abort_cancels_with_a_valid_history(service):
    run = await service.start(agent(adder(1)), "go", breakpoints=["before_tool:add"])
    run = await service.answer(run.id, default="abort")
    assert run.status == "cancelled" and seen_args == []
    assert [m.role for m in run.messages] == ["user", "assistant", "tool"]


async def test_racing_answers_one_wins(service):
    run = await service.start(agent(adder(1)), "go", breakpoints=["before_tool:add"])
    pause = run.pause_id
    await service.answer(run.id, pause_id=pause)
    with pytest.raises(AlreadyResumed):
        await service.answer(run.id, pause_id=pause)


async def test_approvals(service):
    @tool(requires_approval=True)
    async def send_email(to: str) -> str:
        """Send an email."""
        seen_args.append({"to": to})
        return f"sent to {to}"

    def script(r):
        results = [m.text for m in r.messages if m.role == "tool"]
        return reply(results[0]) if results else call_tool("send_email", {"to": "boss@example.com"})

    run = await service.start(agent(script, tools=[send_email]), "go")
    assert run.pending[0].reason == "approval"
    approved = await service.answer(run.id, {run.pending[0].id: ("approve", None)})
    assert approved.output == "sent to boss@example.com"

    run = await service.start(agent(script, tools=[send_email]), "go")
    edited = await service.answer(run.id, {run.pending[0].id: ("approve", {"arguments": {"to": "me@example.com"}})})
    assert edited.output == "sent to me@example.com"

    run = await service.start(agent(script, tools=[send_email]), "go")
    denied = await service.answer(run.id, {run.pending[0].id: ("deny", "not on a Sunday")})
    assert denied.output == "Error: a person denied this call: not on a Sunday"
    assert seen_args == [{"to": "boss@example.com"}, {"to": "me@example.com"}]
    with pytest.raises(TetherError, match="does not answer a approval"):
        run = await service.start(agent(script, tools=[send_email]), "go")
        await service.answer(run.id, default="continue")


@pytest.mark.parametrize("budget", ["max_steps", "max_tokens", "max_cost_usd"])
async def test_budgets_pause_by_default_and_continue_when_raised(service, budget):
    limit = {"max_steps": 2, "max_tokens": 200, "max_cost_usd": 0.0002}[budget]
    model = ScriptedModel(adder(4), input_price_per_mtok=1.0, output_price_per_mtok=1.0)
    ag = Agent("dbg", model, tools=[add], limits=Limits(**{budget: limit}))
    run = await service.start(ag, "go")
    assert run.status == "paused" and run.pending[0].reason == "budget"
    assert budget in run.pending[0].detail
    run = await service.answer(run.id, {run.pending[0].id: ("continue", {"limits": {budget: limit * 100}})})
    assert run.status == "completed" and run.output == "result 4"


async def test_budget_policies_finish_and_fail(service):
    def script(r):
        return reply("forced answer") if not r.tools else call_tool("add", {"a": 1, "b": 1}, usage=Usage(100, 10))

    finish = await service.start(Agent("x", ScriptedModel(script), tools=[add],
                                       limits=Limits(max_tokens=250, on_max_tokens="finish")), "go")
    assert finish.status == "completed" and finish.output == "forced answer"
    fail = await service.start(Agent("x", ScriptedModel(script), tools=[add],
                                     limits=Limits(max_tokens=250, on_max_tokens="fail")), "go")
    assert fail.status == "failed" and "max_tokens" in fail.error


async def test_wall_time_budget_does_not_count_time_paused(service):
    run = await service.start(agent(adder(1), limits=Limits(max_wall_s=0.3)), "go", breakpoints=["before_tool"])
    await asyncio.sleep(0.5)  # a person thinking: not the run's time
    run = await service.answer(run.id)
    assert run.status == "completed"


async def test_a_cost_budget_on_an_unpriced_model_is_refused(service):
    class Unpriced(ScriptedModel):
        def cost_usd(self, response):
            return None

    with pytest.raises(ConfigError, match="price of model"):
        await service.start(Agent("x", Unpriced(adder(1)), limits=Limits(max_cost_usd=1.0)), "go")


async def test_fork_reuses_earlier_steps_without_calling_anything(service):
    model = ScriptedModel(adder(3))
    parent = await service.start(Agent("dbg", model, tools=[add]), "go")
    assert parent.output == "result 3" and model.calls == 4 and len(seen_args) == 3
    calls_before = model.calls
    seen_args.clear()
    # step 6 is the last add call: give it another result, without calling it
    fork = await service.fork(parent.id, 6, {"result": "10"})
    assert fork.status == "completed" and fork.output == "result 10"
    assert model.calls - calls_before == 1 and seen_args == []  # only step 7 (the answer) is live
    first = fork.records[0].payload
    assert first.fork.parent_run_id == parent.id and first.fork.at_step == 6
    reused = [r.payload.step for r in fork.records
              if isinstance(r.payload, ModelCalled | ToolFinished) and r.payload.reused]
    assert reused == [1, 2, 3, 4, 5]
    assert first.metadata["fork_warnings"] == ['step 6: add({"a": 2, "b": 1})']  # the parent's step 6 happened

    # edited arguments at step 4: that call runs live with them, and everything after it too
    fork2 = await service.fork(parent.id, 4, {"arguments": {"a": 7, "b": 7}})
    assert seen_args == [{"a": 7, "b": 7}, {"a": 2, "b": 1}] and fork2.output == "result 3"
    assert [s.result for s in fork2.steps if s.type == "tool"] == ["1", "14", "3"]


async def test_fork_at_a_model_step_with_edited_messages(service):
    script = Recorder(adder(1))
    parent = await service.start(agent(script), "go")
    n = len(script.requests)
    fork = await service.fork(parent.id, 3, {"messages": [{"role": "user", "content": "start over"}]})
    assert [m.text for m in script.requests[n].messages] == ["start over"]  # the first live request
    assert fork.status == "completed"
    with pytest.raises(TetherError, match=r"steps 1\.\.3"):
        await service.fork(parent.id, 9)


async def test_pause_in_one_service_continue_in_another(service):
    run = await service.start(agent(adder(1), ref="test_debug:shared_agent"), "go", breakpoints=["before_tool"])
    other = RunsService(service.store)  # a second process, sharing the store
    done = await other.answer(run.id)
    assert done.status == "completed" and done.output == "result 1"


shared_agent = agent(adder(1), ref="test_debug:shared_agent")


async def test_runs_without_breakpoints_take_no_pause(service):
    run = await service.start(agent(adder(5)), "go")
    assert run.status == "completed" and not any(r.kind == "paused" for r in run.records)


async def test_agent_file_breakpoints(tmp_path):
    from tether.services.agents import load_agent_file

    (tmp_path / "agent.toml").write_text(
        'model = "scripted:x:y"\ntools = ["calculator"]\n[[breakpoints]]\nspec = "before_tool:calc*"\n'
        '[[breakpoints]]\nspec = "after_model if output == \'done\'"\nonce = true\n'
    )
    agent_ = load_agent_file(tmp_path / "agent.toml")
    assert [(b.id, b.spec(), b.once) for b in agent_.breakpoints] == [
        ("bp_1", "before_tool:calc*", False), ("bp_2", "after_model if output == 'done'", True)]
    (tmp_path / "bad.toml").write_text('model = "m"\nbreakpoints = ["before_tool:x", "before_tool if (("]\n')
    with pytest.raises(ConfigError, match="breakpoint 2"):
        load_agent_file(tmp_path / "bad.toml")


async def test_a_breakpoint_set_by_another_process_is_picked_up_while_running():
    store = MemoryStore()
    owner = RunsService(store, lease_ttl_s=0.15)  # heartbeat every 50 ms
    gate = asyncio.Event()

    @tool
    async def slow() -> str:
        """Wait for the gate."""
        await gate.wait()
        return "opened"

    ag = agent(lambda r: reply("done") if any(m.role == "tool" for m in r.messages) else call_tool("slow"),
               tools=[slow])
    task = asyncio.create_task(owner.start(ag, "go"))
    await asyncio.sleep(0.05)
    (run_id,) = owner._active
    other = RunsService(store)  # another process: it cannot reach the executor, only the store
    other.register(ag)
    await other.add_breakpoint(run_id, "before_finish")
    await asyncio.sleep(0.2)  # a heartbeat passes
    gate.set()
    run = await task
    assert run.status == "paused" and run.pending[0].stop == "before_finish"


async def test_steps_show_edits_and_a_failing_listener_does_not_stop_the_run(service):
    def broken_listener(event):
        raise RuntimeError("a buggy live view")

    run = await service.start(agent(adder(1)), "go", breakpoints=["after_model if step == 1"],
                              on_event=broken_listener)
    new = {"text": "let me add", "tool_calls": [{"name": "add", "arguments": {"a": 20, "b": 1}}]}
    run = await service.answer(run.id, {run.pending[0].id: ("edit", new)}, on_event=broken_listener)
    assert run.status == "completed" and run.output == "result 21"
    model_step, tool_step = run.steps[0], run.steps[1]
    assert model_step.text == "let me add" and model_step.tool_calls[0][1] == "add"
    assert json.loads(tool_step.arguments) == {"a": 20, "b": 1} and tool_step.result == "21"

    run = await service.start(agent(adder(1)), "go", breakpoints=["before_tool"])
    run = await service.answer(run.id, {run.pending[0].id: ("edit", {"a": 5, "b": 5})})
    assert json.loads(run.steps[1].arguments) == {"a": 5, "b": 5}  # what ran, not what was first asked


async def test_raised_limits_are_checked(service):
    run = await service.start(agent(adder(3), limits=Limits(max_steps=1)), "go")
    with pytest.raises(TetherError, match="not a budget"):
        await service.answer(run.id, {run.pending[0].id: ("continue", {"limits": {"max_stepz": 5}})})
    with pytest.raises(TetherError, match="positive number"):
        await service.answer(run.id, {run.pending[0].id: ("continue", {"limits": {"max_steps": -1}})})
    assert (await service.get(run.id)).status == "paused"  # nothing was written


async def test_a_run_continued_elsewhere_keeps_the_model_it_started_with(service):
    other_model = ScriptedModel(adder(1), ref="scripted:other")
    started_with = agent(adder(1), ref="test_debug:shared_agent").with_model(other_model)
    run = await service.start(started_with, "go", breakpoints=["before_tool"])
    fresh = RunsService(service.store)
    found = await fresh.agent_for(run.agent)
    assert found.model_ref == "scripted:other"


async def test_a_fork_with_edited_messages_resumes_with_the_same_conversation(service):
    script = Recorder(adder(1))
    parent = await service.start(agent(script, ref="test_debug:shared_agent"), "go")
    fork = await service.fork(parent.id, 3, {"messages": [{"role": "user", "content": "hi"}]})
    from tether.domain.state import fold

    resumed = fold(fork.id, fork.records)  # what another process folds from the log
    assert [(m.role, m.text) for m in resumed.messages] == [(m.role, m.text) for m in fork.messages]
    assert [m.text for m in script.requests[-2].messages] == ["hi"]  # the parent's tool result is gone


async def test_failures_change_nothing(service, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    unreachable = Agent("dbg", "qwen2.5:7b", tools=[add], ref="test_debug:shared_agent")
    run = await service.start(agent(adder(1), ref="test_debug:shared_agent"), "go", breakpoints=["before_tool"])
    fresh = RunsService(service.store)
    fresh.register(unreachable)  # this process only knows the agent with a model it cannot reach
    runs_before = len(await service.list())
    with pytest.raises(ConfigError):
        await fresh.fork(run.id, 2, {"result": "5"})
    assert len(await service.list()) == runs_before  # no half-made fork
    with pytest.raises(ConfigError):
        await fresh.add_breakpoint(run.id, "after_model")
    assert [b.spec() for b in await service.breakpoints(run.id)] == ["before_tool"]


async def test_message_edits_are_checked(service):
    run = await service.start(agent(adder(1)), "go", breakpoints=["before_model if step == 1"])
    for bad in ([], [{"role": "bogus", "content": "x"}], "not a list"):
        with pytest.raises(TetherError, match="message"):
            await service.answer(run.id, {run.pending[0].id: ("edit", bad)})
        with pytest.raises(TetherError, match="message"):
            await service.fork(run.id, 1, {"messages": bad})
    assert (await service.get(run.id)).status == "paused"


async def test_cancel_a_run_another_process_is_advancing():
    store = MemoryStore()
    owner = RunsService(store, lease_ttl_s=0.3)  # heartbeat every 100 ms

    @tool
    async def slow() -> str:
        """Take a while."""
        await asyncio.sleep(0.4)
        return "done"

    ag = agent(lambda r: call_tool("slow"), tools=[slow], ref="test_debug:shared_agent")  # would loop for ever
    task = asyncio.create_task(owner.start(ag, "go"))
    await asyncio.sleep(0.1)
    (run_id,) = owner._active
    other = RunsService(store, lease_ttl_s=0.3)  # another process: it cannot take the lease
    other.register(ag)
    await other.cancel(run_id)  # returns within about a heartbeat and a second, cancelled or not yet
    finished = await task  # the owner cancels at its next transition: after the slow call
    assert finished.status == "cancelled" and "cancelled by api" in finished.error
    assert [s.name for s in finished.steps if s.type == "tool"] == ["slow"]  # it did not go on calling


# -- typed decisions: one table of answers, decisions that name what they concern ------------------


def test_one_table_says_which_answers_fit_which_item():
    from tether.domain.decisions import actions_for, check_action, needs_answer
    from tether.domain.records import PendingItem

    def item(reason, stop=None, call=True):
        return PendingItem("call_1" if call else f"{stop}:3", reason, "call_1" if call else None, stop=stop, step=3)

    assert actions_for(item("breakpoint", "before_tool")) == ["continue", "step", "edit", "skip", "abort"]
    assert actions_for(item("breakpoint", "after_tool")) == ["continue", "step", "edit", "abort"]
    assert actions_for(item("breakpoint", "before_model", call=False)) == ["continue", "step", "edit", "abort"]
    assert actions_for(item("breakpoint", "on_budget", call=False)) == ["continue", "step", "abort"]
    assert actions_for(item("budget", "on_budget", call=False)) == ["continue", "step", "abort"]
    assert actions_for(item("approval", "before_tool")) == ["skip", "approve", "deny", "abort"]
    assert actions_for(item("client_tool")) == ["supply", "abort"]
    assert actions_for(item("uncertain", "on_uncertain")) == ["continue", "rerun", "supply", "abort"]
    assert [needs_answer(item(r)) for r in ("breakpoint", "budget", "approval", "client_tool", "uncertain")] == [
        False, False, True, True, True]
    with pytest.raises(TetherError, match="'skip' does not answer a breakpoint item"):
        check_action(item("breakpoint", "after_model", call=False), "skip")
    with pytest.raises(TetherError, match="nothing to edit at on_budget"):
        check_action(item("breakpoint", "on_budget", call=False), "edit")


async def test_decisions_name_what_they_concern(service):
    from tether.domain.answers import EditResponse

    run = await service.start(agent(adder(1)), "go", breakpoints=["after_model if step == 1", "before_tool"])
    new = {"text": None, "tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 1}}]}
    run = await service.answer(run.id, {run.pending[0].id: ("edit", new)})
    call_id = run.pending[0].call_id
    run = await service.answer(run.id, {run.pending[0].id: ("edit", {"a": 2, "b": 2})})
    edits = [r.payload for r in run.records if isinstance(r.payload, Decision)]
    assert [(d.stop, d.step, d.call_id) for d in edits] == [("after_model", 1, None), ("before_tool", 2, call_id)]
    assert isinstance(edits[0].answer, EditResponse) and edits[0].answer.tool_calls[0].id == call_id
    assert run.output == "result 4"


async def test_typed_answers_are_taken_as_they_are_and_checked(service):
    from tether.domain.answers import Approve, EditArguments, Skip

    run = await service.start(agent(adder(1)), "go", breakpoints=["before_tool"])
    run = await service.answer(run.id, {run.pending[0].id: EditArguments('{"a": 3, "b": 3}')})
    assert run.output == "result 6"
    run = await service.start(agent(adder(1)), "go", breakpoints=["after_model"])
    with pytest.raises(TetherError, match="'skip' does not answer"):
        await service.answer(run.id, {run.pending[0].id: Skip("1")})
    with pytest.raises(TetherError, match="'approve' does not answer"):
        await service.answer(run.id, {run.pending[0].id: Approve()})
    assert (await service.get(run.id)).status == "paused"


async def test_answers_to_a_pause_that_never_was_or_to_items_it_lacks_name_the_field(service):
    from tether.domain.errors import InvalidRequest

    run = await service.start(agent(adder(1)), "go", breakpoints=["before_tool"])
    with pytest.raises(InvalidRequest, match="has no pause 'pause_never'") as e:
        await service.answer(run.id, pause_id="pause_never")
    assert e.value.param == "pause_id"
    with pytest.raises(InvalidRequest, match=r"has no items \['call_nope'\]") as e:
        await service.answer(run.id, {"call_nope": ("continue", None)}, pause_id=run.pause_id)
    assert e.value.param == "answers"
    first = run.pause_id
    run = await service.answer(run.id, pause_id=first)
    with pytest.raises(AlreadyResumed, match="already resumed"):
        await service.answer(run.id, pause_id=first)


async def test_steps_show_an_approval_with_other_arguments_and_a_denial_as_the_model_saw_them(service):
    @tool(requires_approval=True)
    async def send_email(to: str) -> str:
        """Send an email."""
        return f"sent to {to}"

    def script(r):
        results = [m.text for m in r.messages if m.role == "tool"]
        return reply(results[0]) if results else call_tool("send_email", {"to": "boss@example.com"})

    run = await service.start(agent(script, tools=[send_email]), "go")
    run = await service.answer(run.id, {run.pending[0].id: ("approve", {"arguments": {"to": "me@example.com"}})})
    assert run.steps[1].arguments == '{"to": "me@example.com"}'  # JSON text, like every step's arguments
    run = await service.start(agent(script, tools=[send_email]), "go")
    run = await service.answer(run.id, {run.pending[0].id: ("deny", "no")})
    assert run.steps[1].error == "a person denied this call: no" == run.output.removeprefix("Error: ")


def test_how_to_answer_offers_what_fits():
    from tether.domain.records import PendingItem
    from tether.interfaces.cli.render import how_to_answer

    approval = PendingItem("call_1", "approval", "call_1", "send_email", stop="before_tool", step=2)
    uncertain = PendingItem("call_2", "uncertain", "call_2", "charge", stop="on_uncertain", step=2)
    lines = how_to_answer("run_1", [approval, uncertain])
    assert "--continue" not in lines[0] and "--abort" in lines[0] and "approve, deny" in lines[0]
    assert lines[1].endswith("--rerun | --supply RESULT | --abort")


async def test_a_budget_can_be_lifted_and_raised_limits_must_be_whole_where_they_count(service):
    run = await service.start(agent(adder(3), limits=Limits(max_steps=1, max_tokens=150)), "go")
    with pytest.raises(TetherError, match="max_steps must be a positive number, a whole one"):
        await service.answer(run.id, {run.pending[0].id: ("continue", {"limits": {"max_steps": 2.5}})})
    with pytest.raises(TetherError, match="max_steps must be a positive number"):
        await service.answer(run.id, {run.pending[0].id: ("continue", {"limits": {"max_steps": None}})})
    run = await service.answer(run.id, {run.pending[0].id: ("continue", {"limits": {"max_steps": 10,
                                                                                   "max_tokens": None}})})
    assert run.status == "completed" and run.output == "result 3"


def test_the_log_shows_what_an_edit_replaced():
    """`runs show` prints an edit with the value it replaced (recorded as `old`), as it did before
    decisions were typed."""
    import io

    from rich.console import Console

    from tether.domain.answers import EditArguments, EditOutput
    from tether.domain.events import Event
    from tether.domain.records import Decision, Record
    from tether.interfaces.cli.render import RunPrinter

    out = io.StringIO()
    printer = RunPrinter(Console(file=out, width=200), limit=None)
    edits = [EditArguments('{"expression": "1+2"}', old='{"expression": "6*7"}'), EditOutput("forty-two", old="42")]
    for seq, answer in enumerate(edits, 1):
        decision = Decision("pause_1", "call_1", answer, "cli", call_id="call_1", step=2, stop="before_tool")
        printer.on_event(Event("run_1", "record", Record("run_1", seq, 1.0, decision)))
    text = out.getvalue()
    assert '"arguments": {"expression": "1+2"}, "old": {"expression": "6*7"}' in text, text
    assert '"output": "forty-two", "old": "42"' in text, text
