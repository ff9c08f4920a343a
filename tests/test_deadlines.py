"""Tool-call deadlines: coarse buckets with asyncio.timeout's semantics, and a hanging tool still
stops within a second of its deadline (a correctness bound, not a speed)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from tether.adapters.models.scripted import ScriptedModel, call_tool, calls, reply
from tether.adapters.store.memory import MemoryStore
from tether.adapters.tools.function import tool
from tether.engine import deadlines
from tether.engine.deadlines import GRANULARITY_S, deadline
from tether.services.agents import Agent
from tether.services.runs import RunsService

pytestmark = pytest.mark.anyio


async def test_a_deadline_cancels_the_body_and_raises_timeout_error_no_earlier_than_it():
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with deadline(0.1):
            await asyncio.sleep(30)
    took = time.monotonic() - started
    assert 0.1 <= took < 0.1 + GRANULARITY_S + 1.0
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # its own cancellation was taken back


async def test_a_short_deadline_is_kept_to_an_eighth_of_itself():
    with pytest.raises(TimeoutError):  # a quarter-second bucket would let the body finish first
        async with deadline(0.2):
            await asyncio.sleep(0.2 + 0.2 / 8 + 0.01)


async def test_a_body_that_ends_in_time_is_left_alone_and_disarmed():
    async with deadline(0.05) as d:
        await asyncio.sleep(0)
    await asyncio.sleep(0.05 + GRANULARITY_S + 0.05)  # past the bucket's timer: nothing is cancelled
    assert not d.expired
    keeper = deadlines._keepers[id(asyncio.get_running_loop())]
    assert all(d not in bucket for bucket in keeper.buckets.values())


async def test_a_cancellation_from_elsewhere_propagates_as_cancelled_error():
    entered = asyncio.Event()

    async def body() -> None:
        async with deadline(30):
            entered.set()
            await asyncio.sleep(30)

    task = asyncio.ensure_future(body())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancellation_from_elsewhere_at_expiry_is_not_swallowed():
    armed: list[deadline] = []

    async def body() -> None:
        async with deadline(30) as d:
            armed.append(d)
            await asyncio.sleep(30)

    task = asyncio.ensure_future(body())
    await asyncio.sleep(0)
    armed[0].expire()  # the deadline and a shutdown cancel the task in the same loop iteration
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_many_deadlines_share_a_few_loop_timers(monkeypatch):
    loop = asyncio.get_running_loop()
    armed = 0
    call_at = loop.call_at

    def counting(*args, **kwargs):
        nonlocal armed
        armed += 1
        return call_at(*args, **kwargs)

    monkeypatch.setattr(loop, "call_at", counting)

    async def one() -> None:
        async with deadline(60):
            await asyncio.sleep(0)

    await asyncio.gather(*(one() for _ in range(200)))
    assert armed <= 2  # one bucket (two if the calls straddle a bucket's edge), not 200 timers


@tool(timeout_s=0.3)
async def hang() -> str:
    """Never return."""
    await asyncio.sleep(30)
    return "late"


async def test_a_hanging_tool_times_out_within_a_second_of_its_deadline():
    model = ScriptedModel([call_tool("hang"), reply("ok")])
    service = RunsService(MemoryStore())
    started = time.monotonic()
    run = await service.start(Agent("t", model, tools=[hang]), "go")
    took = time.monotonic() - started
    assert run.steps[1].error == "the tool timed out after 0.3s"
    assert 0.3 <= took <= 1.3


async def test_a_stuck_sync_tool_times_out_within_a_second_of_its_deadline():
    release = threading.Event()

    @tool(timeout_s=0.3)
    def stuck() -> str:
        """Block."""
        release.wait(10)
        return "finally"

    model = ScriptedModel([call_tool("stuck"), reply("ok")])
    service = RunsService(MemoryStore())
    started = time.monotonic()
    run = await service.start(Agent("t", model, tools=[stuck]), "go")
    took = time.monotonic() - started
    release.set()
    assert [i.reason for i in run.pending] == ["uncertain"]
    assert 0.3 <= took <= 1.3


async def test_tool_calls_arm_no_loop_timer_each(monkeypatch):
    loop = asyncio.get_running_loop()
    armed = 0
    call_at = loop.call_at

    def counting(*args, **kwargs):
        nonlocal armed
        armed += 1
        return call_at(*args, **kwargs)

    @tool
    async def add(a: int, b: int) -> int:
        """Add."""
        return a + b

    model = ScriptedModel([calls([("add", {"a": i, "b": 1}) for i in range(50)]), reply("done")])
    service = RunsService(MemoryStore())
    monkeypatch.setattr(loop, "call_at", counting)
    run = await service.start(Agent("t", model, tools=[add]), "go")
    assert run.status == "completed" and len(run.steps) == 52
    assert armed <= 4  # the bucket of their 60 s deadline (and the run's heartbeat), not one per call


async def test_an_infinite_timeout_never_expires_and_the_tool_runs_once():
    async with deadline(float("inf")) as d:  # as asyncio.timeout(inf) (was: OverflowError on entry)
        await asyncio.sleep(0)
    assert not d.expired
    ran = []

    @tool(timeout_s=float("inf"))
    def forever_allowed(x: int) -> int:
        """Takes as long as it takes."""
        ran.append(x)
        return x + 1

    def script(req):
        return call_tool("forever_allowed", {"x": 1}) if len(req.messages) < 3 else reply("done")

    view = await RunsService(MemoryStore()).start(Agent("a", ScriptedModel(script), tools=[forever_allowed]), "go")
    assert view.status == "completed" and [s.result for s in view.steps if s.type == "tool"] == ["2"]
    assert ran == [1]
