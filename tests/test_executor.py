"""The loop: every error path becomes a step the model sees; limits, structured output, pauses."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from tether.adapters.models.scripted import ScriptedModel, call_tool, calls, reply
from tether.adapters.store.memory import MemoryStore
from tether.adapters.tools.client import ClientTool
from tether.adapters.tools.function import tool
from tether.domain.agents import Limits
from tether.domain.errors import AlreadyResumed, ConfigError
from tether.domain.models import ModelRequest
from tether.domain.records import Finished, ToolStarted
from tether.domain.tools import ToolContext, ToolError
from tether.services.agents import Agent
from tether.services.runs import CONTROLS_POLL_S, RunsService

pytestmark = pytest.mark.anyio


@tool
async def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: the first
        b: the second
    """
    return a + b


def tool_results(request: ModelRequest) -> list[str]:
    return [m.text for m in request.messages if m.role == "tool"]


class Seen:
    """A scripted model that records what it was sent and answers from a list."""

    def __init__(self, *responses):
        self.requests: list[ModelRequest] = []
        self.responses = list(responses)

    def __call__(self, request: ModelRequest):
        self.requests.append(request)
        return self.responses.pop(0)


@pytest.fixture
def service() -> RunsService:
    return RunsService(MemoryStore())


async def run_with(service, script, tools=(add,), **agent_options):
    model = ScriptedModel(script)
    agent = Agent("t", model, tools=tools, **agent_options)
    return await service.start(agent, "go"), model


async def test_tool_loop_answers_from_tool_results(service):
    def script(req):
        n = len(tool_results(req))
        return call_tool("add", {"a": n, "b": 1}) if n < 3 else reply(f"The answer is {n}")

    run, model = await run_with(service, script)
    assert run.status == "completed" and run.output == "The answer is 3"
    assert [s.type for s in run.steps] == ["model", "tool"] * 3 + ["model"]
    assert [s.number for s in run.steps] == list(range(1, 8))
    assert [s.result for s in run.steps if s.type == "tool"] == ["1", "2", "3"]
    assert model.calls == 4
    # every call id is minted by Tether; the scripted id is kept as provider_id
    first = run.records[1].payload.response.tool_calls[0]
    assert first.id.startswith("call_") and first.provider_id.startswith("scripted_")


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (call_tool("add", '{"a": 1, "b": '), "not a valid JSON object"),
        (call_tool("add", "[1, 2]"), "not a valid JSON object"),
        (call_tool("nope", {"x": 1}), "unknown tool 'nope'; available tools: add"),
        (call_tool("add", {"a": "one", "b": 2}), "'a' Input should be a valid integer"),
        (call_tool("add", {"a": 1}), "'b' is required"),
        (call_tool("add", {"a": 1, "b": 2, "c": 3}), "'c' is not a parameter of this tool"),
    ],
)
async def test_bad_tool_calls_become_results_the_model_sees(service, response, expected):
    seen = Seen(response, reply("recovered"))
    run, _ = await run_with(service, seen)
    assert run.status == "completed" and run.output == "recovered"
    tool_step = run.steps[1]
    assert tool_step.status == "failed" and expected in tool_step.error
    assert expected in tool_results(seen.requests[1])[0]
    assert tool_step.attempts == 0  # nothing was started: the tool never ran


async def test_a_tool_that_raises_or_hangs_is_reported_to_the_model(service):
    @tool
    async def boom() -> str:
        """Explode."""
        raise RuntimeError("disk on fire")

    @tool(timeout_s=0.05)
    async def hang() -> str:
        """Never return."""
        await asyncio.sleep(30)
        return "late"

    @tool
    async def refuse() -> str:
        """Refuse politely."""
        raise ToolError("not today: try tomorrow")

    seen = Seen(calls([("boom", {}), ("hang", {}), ("refuse", {})]), reply("ok"))
    started = time.perf_counter()
    run, _ = await run_with(service, seen, tools=[boom, hang, refuse])
    assert time.perf_counter() - started < 5
    assert run.output == "ok"
    assert tool_results(seen.requests[1]) == [
        "Error: RuntimeError: disk on fire",
        "Error: the tool timed out after 0.05s",
        "Error: not today: try tomorrow",
    ]


async def test_a_timeout_error_the_tool_raises_itself_is_its_error_not_the_calls_timeout(service):
    @tool(timeout_s=None)
    async def no_limit() -> str:
        """A client library's own timeout."""
        raise TimeoutError("the server did not answer in 5 s")

    @tool(timeout_s=30)
    def sync_own() -> str:
        """The same in a sync tool, which did finish: not uncertain."""
        raise TimeoutError("read timed out")

    seen = Seen(calls([("no_limit", {}), ("sync_own", {})]), reply("ok"))
    run, _ = await run_with(service, seen, tools=[no_limit, sync_own])  # (was: a TypeError crashed the run)
    assert run.status == "completed" and run.output == "ok"
    assert tool_results(seen.requests[1]) == [
        "Error: TimeoutError: the server did not answer in 5 s",
        "Error: TimeoutError: read timed out",
    ]


async def test_tool_calls_of_one_turn_run_in_parallel_and_results_keep_call_order(service):
    both_running = asyncio.Event()
    running = 0

    @tool
    async def slow(name: str, delay: float) -> str:
        """Wait, then answer."""
        nonlocal running
        running += 1
        if running == 2:
            both_running.set()
        await asyncio.wait_for(both_running.wait(), 2)  # fails unless the other call runs meanwhile
        await asyncio.sleep(delay)
        return name

    seen = Seen(calls([("slow", {"name": "first", "delay": 0.05}), ("slow", {"name": "second", "delay": 0})]),
                reply("done"))
    run, _ = await run_with(service, seen, tools=[slow])
    assert run.output == "done"
    assert tool_results(seen.requests[1]) == ["first", "second"]  # call order, not finish order
    assert [s.number for s in run.steps] == [1, 2, 3, 4]


async def test_per_tool_concurrency_limit_is_never_exceeded(service):
    running, peak = 0, 0

    @tool(max_concurrency=2, idempotent=True)
    async def fetch(i: int) -> int:
        """Fetch."""
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        return i

    seen = Seen(calls([("fetch", {"i": i}) for i in range(6)]), reply("done"))
    run, _ = await run_with(service, seen, tools=[fetch])
    assert run.output == "done" and peak == 2


async def test_idempotent_retryable_tool_is_retried_and_each_attempt_recorded(service):
    attempts = []

    @tool(idempotent=True, retryable=True, max_retries=2)
    async def flaky(ctx: ToolContext) -> str:
        """Fails twice."""
        attempts.append(ctx.attempt)
        if len(attempts) < 3:
            raise ConnectionError("flaky network")
        return f"ok after {ctx.attempt}"

    run, _ = await run_with(service, Seen(call_tool("flaky"), reply("done")), tools=[flaky])
    assert attempts == [1, 2, 3]
    started = [r.payload.attempt for r in run.records if isinstance(r.payload, ToolStarted)]
    assert started == [1, 2, 3]
    assert run.steps[1].result == "ok after 3"
    assert "ctx" not in flaky.parameters["properties"]  # the context is not shown to the model


async def test_non_idempotent_tool_is_never_retried(service):
    tries = 0

    @tool
    async def pay() -> str:
        """Pay."""
        nonlocal tries
        tries += 1
        raise ConnectionError("gateway down")

    run, _ = await run_with(service, Seen(call_tool("pay"), reply("done")), tools=[pay])
    assert tries == 1 and run.steps[1].error == "ConnectionError: gateway down"


async def test_tool_context_carries_a_stable_idempotency_key(service):
    keys = []

    @tool
    async def note(ctx: ToolContext) -> str:
        """Note."""
        keys.append((ctx.run_id, ctx.call_id, ctx.idempotency_key, ctx.step))
        return "noted"

    run, _ = await run_with(service, Seen(call_tool("note"), reply("done")), tools=[note])
    run_id, call_id, key, step = keys[0]
    assert run_id == run.id and key == f"{run.id}:{call_id}" and step == 2


async def test_huge_results_are_truncated_with_a_notice(service):
    @tool(max_result_chars=100)
    async def dump() -> str:
        """Dump."""
        return "x" * 1000

    seen = Seen(call_tool("dump"), reply("done"))
    await run_with(service, seen, tools=[dump])
    result = tool_results(seen.requests[1])[0]
    assert result.startswith("x" * 100) and "[truncated: 900 more characters not shown]" in result


async def test_sync_tools_run_in_a_thread_and_a_stuck_one_becomes_uncertain(service):
    release = threading.Event()

    @tool(timeout_s=0.1)
    def stuck() -> str:
        """Block."""
        release.wait(5)
        return "finally"

    run, _ = await run_with(service, Seen(call_tool("stuck"), reply("done")), tools=[stuck])
    release.set()
    assert run.status == "paused"
    assert [i.reason for i in run.pending] == ["uncertain"] and "may still be running" in run.pending[0].detail
    done = await service.resolve_uncertain(run.id, run.pending[0].id, "supply", "it did finish")
    assert done.status == "completed" and done.steps[1].result == "it did finish"


@pytest.mark.parametrize("policy", ["fail", "finish"])
async def test_max_steps(service, policy):
    def script(req):
        if not req.tools:
            return reply("best effort answer")
        return call_tool("add", {"a": 1, "b": 1})

    model = ScriptedModel(script)
    agent = Agent("t", model, tools=[add], limits=Limits(max_steps=3, on_max_steps=policy))
    run = await service.start(agent, "go")
    if policy == "fail":
        assert run.status == "failed" and "max_steps (3 model calls)" in run.error
        assert model.calls == 3
    else:
        assert run.status == "completed" and run.output == "best effort answer"
        assert model.calls == 4
        final = run.records[-2].payload
        assert final.final and not final.response.tool_calls


async def test_structured_output_is_validated_and_corrected(service):
    schema = {"type": "object", "properties": {"price": {"type": "number"}}, "required": ["price"]}
    seen = Seen(reply("about ten dollars"), reply('{"price": "ten"}'), reply('```json\n{"price": 10.5}\n```'))
    run, _ = await run_with(service, seen, output_schema=schema)
    assert run.status == "completed" and run.structured == {"price": 10.5}
    corrections = [m.text for m in seen.requests[2].messages if m.role == "user"][1:]
    assert "not valid JSON" in corrections[0] and "'ten' is not of type 'number'" in corrections[1]


async def test_structured_output_gives_up_after_the_retry_budget(service):
    schema = {"type": "object", "required": ["price"]}
    seen = Seen(reply("no"), reply("still no"))
    run, _ = await run_with(service, seen, output_schema=schema, limits=Limits(max_output_retries=1))
    assert run.status == "failed" and "did not match the output schema" in run.error


async def test_client_tools_pause_the_run_until_outputs_are_submitted(service):
    weather = ClientTool("weather", "Weather for a city", {"type": "object", "properties": {"city": {}}})
    seen = Seen(calls([("weather", {"city": "Oslo"}), ("add", {"a": 2, "b": 2})]), reply("sunny, and 4"))
    run, _ = await run_with(service, seen, tools=[weather, add])
    assert run.status == "paused"
    assert [(i.reason, i.name) for i in run.pending] == [("client_tool", "weather")]
    assert run.steps[2].result == "4"  # the server-side call ran while the client one waits
    done = await service.submit_tool_outputs(run.id, {run.pending[0].id: "sunny"})
    assert done.status == "completed" and done.output == "sunny, and 4"
    assert tool_results(seen.requests[1]) == ["sunny", "4"]
    with pytest.raises(AlreadyResumed):
        await service.decide(run.id, run.pause_id, {run.pending[0].id: ("supply", "again")})


async def test_cancel_gives_every_open_call_a_result_and_a_thread_goes_on(service):
    gate = asyncio.Event()

    @tool
    async def wait_forever() -> str:
        """Wait."""
        await gate.wait()
        return "never"

    agent = Agent("t", ScriptedModel([call_tool("wait_forever"), reply("second answer")]), tools=[wait_forever])
    task = asyncio.create_task(service.start(agent, "first", thread_id="thread_1"))
    await asyncio.sleep(0.05)
    run_id = next(iter(service._active))
    cancelling = asyncio.create_task(service.cancel(run_id))
    await asyncio.sleep(0.01)
    gate.set()
    cancelled = await cancelling
    await task
    assert cancelled.status == "cancelled"
    # the history stays valid: the pending call got a result before the run ended
    roles = [m.role for m in cancelled.messages]
    assert roles == ["user", "assistant", "tool"]
    nxt = await service.continue_thread("thread_1", "again")
    assert nxt.status == "completed" and nxt.output == "second answer"
    assert [m.text for m in nxt.messages if m.role == "user"] == ["first", "again"]


async def test_a_paused_run_can_be_cancelled(service):
    weather = ClientTool("weather")
    run, _ = await run_with(service, Seen(call_tool("weather", {}), reply("x")), tools=[weather])
    cancelled = await service.cancel(run.id)
    assert cancelled.status == "cancelled" and cancelled.pending == []
    assert cancelled.messages[-1].role == "tool" and "not run" in cancelled.messages[-1].text


class CountedStore(MemoryStore):
    """A store that counts the reads of what other processes set on runs (cancels, breakpoints)."""

    def __init__(self) -> None:
        super().__init__()
        self.control_reads = 0

    async def cancel_requested(self, run_id: str) -> str | None:
        self.control_reads += 1
        return await super().cancel_requested(run_id)

    async def controls(self, run_ids):
        self.control_reads += 1
        return await super().controls(run_ids)


async def asked_elsewhere(store: MemoryStore) -> None:
    """What `tether runs cancel` in another process records (this one's lease renewal is 10 s away)."""
    (run,) = await store.list_runs(limit=1)
    await store.request_cancel(run.id, "cancelled by cli")


async def test_a_cancel_asked_elsewhere_interrupts_a_slow_model_call_within_a_poll():
    store = CountedStore()
    returned = []

    async def slow(request: ModelRequest):
        await asked_elsewhere(store)
        await asyncio.sleep(60)  # far past the poll: only the interruption ends it
        returned.append(True)
        return call_tool("add", {"a": 1, "b": 2})

    model = ScriptedModel(slow)
    run = await asyncio.wait_for(RunsService(store).start(Agent("t", model, tools=[add]), "go"), 10)
    assert run.status == "cancelled" and run.error == "cancelled by cli"
    assert returned == [] and model.calls == 1
    assert [r.payload.kind for r in run.records] == ["run_started", "finished"]  # nothing of the call kept


async def test_a_cancel_asked_elsewhere_during_slow_tool_calls_ends_the_run_when_they_return():
    store = CountedStore()

    @tool
    async def slow_add(a: int, b: int) -> int:
        """Add slowly."""
        await asked_elsewhere(store)
        await asyncio.sleep(CONTROLS_POLL_S * 2)
        return a + b

    model = ScriptedModel([calls([("slow_add", {"a": 1, "b": 2}), ("slow_add", {"a": 3, "b": 4})]), reply("x")])
    run = await RunsService(store).start(Agent("t", model, tools=[slow_add]), "go")
    assert run.status == "cancelled" and run.error == "cancelled by cli"
    assert model.calls == 1
    assert [s.result for s in run.steps if s.type == "tool"] == ["3", "7"]  # both finished first


async def test_the_reads_of_controls_do_not_grow_with_steps_or_runs():
    """Fast steps read nothing; however many runs go on, one read a poll interval serves them all."""
    store = CountedStore()

    def script(req):
        n = len(tool_results(req))
        return call_tool("add", {"a": n, "b": 1}) if n < 3 else reply("done")

    run = await RunsService(store).start(Agent("t", ScriptedModel(script), tools=[add]), "go")
    assert run.status == "completed" and store.control_reads == 0

    async def sleepy(req):
        await asyncio.sleep(CONTROLS_POLL_S * 2.5)  # two or three polls while 50 runs wait
        return reply("done")

    service = RunsService(store)
    runs = await asyncio.gather(*(service.start(Agent("t", ScriptedModel(sleepy)), "go") for _ in range(50)))
    assert all(r.status == "completed" for r in runs)
    assert 1 <= store.control_reads <= 4


async def test_one_active_run_per_thread(service):
    # a paused run is still the thread's active run
    agent = Agent("t", ScriptedModel([call_tool("weather", {})]), tools=[ClientTool("weather")])
    first = await service.start(agent, "hi", thread_id="thread_x")
    assert first.status == "paused"
    with pytest.raises(Exception, match="active run"):
        await service.start(agent, "again", thread_id="thread_x")


async def test_model_failure_fails_the_run_with_its_message(service):
    run, _ = await run_with(service, [])
    assert run.status == "failed" and "no responses left" in run.error


async def test_finished_record_carries_usage_and_cost(service):
    from tether.domain.usage import Usage

    model = ScriptedModel([reply("hi", usage=Usage(1000, 500))], input_price_per_mtok=2.0,
                          output_price_per_mtok=8.0)
    run = await service.start(Agent("t", model), "go")
    fin = run.records[-1].payload
    assert isinstance(fin, Finished) and fin.usage.total_tokens == 1500
    assert run.cost_usd == pytest.approx(0.006)


async def test_resume_needs_to_find_the_agent_and_its_tools_unchanged(service):
    weather = ClientTool("weather")
    agent = Agent("code-only", ScriptedModel([call_tool("weather", {}), reply("x")]), tools=[weather])
    run = await service.start(agent, "go")
    other = RunsService(service.store)  # a second process, sharing the store, without the agent
    with pytest.raises(ConfigError, match="defined in code without a ref"):
        await other.submit_tool_outputs(run.id, {run.pending[0].id: "sunny"})
    changed = Agent("code-only", ScriptedModel([reply("x")]),
                    tools=[ClientTool("weather", parameters={"type": "object", "properties": {"c": {}}})])
    other.register(changed)
    with pytest.raises(ConfigError, match="tool 'weather' changed since the run started"):
        await other.submit_tool_outputs(run.id, {run.pending[0].id: "sunny"})


async def test_events_are_emitted_for_every_record(service):
    events = []
    agent = Agent("t", ScriptedModel([call_tool("add", {"a": 1, "b": 2}), reply("3")]), tools=[add])
    run = await service.start(agent, "go", on_event=events.append)
    kinds = [e.record.kind for e in events if e.type == "record"]
    assert kinds == [r.kind for r in run.records]
    assert [e.delta for e in events if e.type == "delta"] == ["3"]
    assert json.loads(run.records[1].payload.response.tool_calls[0].arguments) == {"a": 1, "b": 2}


async def test_a_cancel_interrupts_a_model_call_in_flight_and_records_nothing_of_it(service):
    calling = asyncio.Event()

    async def slow(request: ModelRequest):
        calling.set()
        await asyncio.sleep(30)
        return reply("never")

    task = asyncio.create_task(service.start(Agent("t", ScriptedModel(slow)), "go"))
    await calling.wait()
    cancelled = await service.cancel(next(iter(service._active)))
    run = await task
    assert cancelled.status == run.status == "cancelled" and run.steps == []
    assert task.cancelling() == 0  # the interruption was taken back: the run's task is not being cancelled


async def test_the_model_is_called_in_the_runs_own_task(service):
    tasks = []

    def script(request: ModelRequest):
        tasks.append(asyncio.current_task())
        return reply("done")

    async def start():
        tasks.append(asyncio.current_task())
        return await service.start(Agent("t", ScriptedModel(script)), "go")

    run = await asyncio.create_task(start())
    assert run.status == "completed" and tasks[0] is tasks[1]  # no task of its own per model call


async def test_a_cancel_from_inside_the_model_call_ends_the_run_cancelled(service):
    """A listener of the model's text that cancels runs in the run's own task: the call returns,
    is not recorded, and the task goes on with no cancellation left pending."""
    def on_event(event):
        if event.type == "delta":
            service._active[event.run_id].cancel("enough")

    task = asyncio.create_task(service.start(Agent("t", ScriptedModel([reply("hello")])), "go", on_event=on_event))
    run = await task
    assert run.status == "cancelled" and run.error == "enough" and run.steps == []
    assert task.cancelling() == 0
    await asyncio.sleep(0)  # the test's own task is not cancelled either


async def test_a_shutdown_during_a_model_call_cancels_the_task_even_with_a_cancel_asked(service):
    calling = asyncio.Event()

    async def slow(request: ModelRequest):
        calling.set()
        await asyncio.sleep(30)
        return reply("never")

    task = asyncio.create_task(service.start(Agent("t", ScriptedModel(slow)), "go"))
    await calling.wait()
    next(iter(service._active.values())).cancel("by the user")  # and at the same time, a shutdown:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
