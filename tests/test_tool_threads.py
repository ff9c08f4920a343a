"""Sync tools run in Tether's own threads: to_thread's semantics, results handed back in batches."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time

import pytest

from tether.adapters.models.scripted import ScriptedModel, call_tool, calls, reply
from tether.adapters.store.memory import MemoryStore
from tether.adapters.tools.function import tool
from tether.adapters.tools.threads import ToolThreads, tool_threads
from tether.domain.records import ToolFinished
from tether.services.agents import Agent
from tether.services.runs import RunsService

pytestmark = pytest.mark.anyio

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")


async def test_the_function_sees_a_copy_of_the_callers_context():
    pool = ToolThreads(2)
    request_id.set("req-1")

    def read_and_set() -> str:
        seen = request_id.get()
        request_id.set("changed in the thread")
        return seen

    assert await pool.start(read_and_set) == "req-1"
    assert request_id.get() == "req-1"  # a copy: the thread's change stays there
    pool.shutdown()


async def test_an_exception_is_raised_by_the_await():
    pool = ToolThreads(2)

    def boom() -> None:
        raise ValueError("disk on fire")

    with pytest.raises(ValueError, match="disk on fire"):
        await pool.start(boom)
    pool.shutdown()


async def test_a_cancelled_await_leaves_the_call_running_and_it_can_be_awaited_again():
    pool = ToolThreads(2)
    release, finished = threading.Event(), threading.Event()

    def slow() -> str:
        release.wait(5)
        finished.set()
        return "done"

    call = pool.start(slow)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(_await(call), 0.05)
    assert not call.done() and not finished.is_set()
    release.set()
    assert await call == "done" and finished.is_set()
    pool.shutdown()


async def _await(call):
    return await call


async def test_results_that_finish_together_wake_the_loop_once(monkeypatch):
    """to_thread wakes the loop (a write to its self-pipe) once per call; here once per batch."""
    pool = ToolThreads(4)
    loop = asyncio.get_running_loop()
    wakes = 0
    call_soon_threadsafe = loop.call_soon_threadsafe

    def counting(*args, **kwargs):
        nonlocal wakes
        wakes += 1
        return call_soon_threadsafe(*args, **kwargs)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
    started = [pool.start(lambda i=i: i * i) for i in range(50)]
    time.sleep(0.5)  # the loop is busy (blocked here) while every call finishes
    assert await asyncio.gather(*(_await(c) for c in started)) == [i * i for i in range(50)]
    assert wakes <= 2  # one wake-up settles all of them (two if one finished as the loop looked)
    pool.shutdown()


async def test_the_pool_is_bounded_and_starts_threads_only_as_needed():
    pool = ToolThreads(3)
    running, most = 0, 0
    lock = threading.Lock()

    def busy() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with lock:
            running -= 1

    await asyncio.gather(*(_await(pool.start(busy)) for _ in range(12)))
    assert most == 3 and len(pool._workers) == 3
    one = ToolThreads(3)
    for _ in range(5):
        await one.start(lambda: None)  # one at a time: one thread is enough
    assert len(one._workers) == 1
    pool.shutdown()
    one.shutdown()


async def test_sync_tools_that_run_sub_agents_never_wait_for_the_threads_their_callers_hold(monkeypatch):
    """As with to_thread (a default executor per loop): a sync tool that runs a sub-agent with run_sync
    (a loop of its own, in the tool's thread) gets threads for the sub-agent's sync tools even when its
    callers hold every thread of the bound (was: every thread waited for a sub-agent's tool, for ever)."""
    from tether.adapters.tools import threads

    monkeypatch.setattr(threads, "_pool", ToolThreads(2))

    @tool
    def leaf() -> str:
        """The sub-agent's sync tool."""
        return "leaf done"

    def sub_script(request):
        return call_tool("leaf") if not any(m.role == "tool" for m in request.messages) else reply("sub done")

    @tool(timeout_s=10)
    def delegate() -> str:
        """An orchestrator's sync tool: runs a sub-agent and waits for its answer."""
        sub = Agent("sub", ScriptedModel(sub_script), tools=[leaf])
        return sub.run_sync("go", service=RunsService(MemoryStore())).output or ""

    def top_script(request):
        return call_tool("delegate") if not any(m.role == "tool" for m in request.messages) else reply("top done")

    service = RunsService(MemoryStore())
    views = await asyncio.gather(*(service.start(Agent("top", ScriptedModel(top_script), tools=[delegate]), "go")
                                   for _ in range(4)))  # twice the bound, all waiting on sub-agents at once
    assert [v.status for v in views] == ["completed"] * 4
    assert all([s.result for s in v.steps if s.type == "tool"] == ["sub done"] for v in views)
    threads._pool.shutdown()


async def test_sync_tools_leave_the_loops_default_executor_alone():
    @tool
    def add(a: int, b: int) -> int:
        """Add."""
        return a + b

    model = ScriptedModel([calls([("add", {"a": i, "b": 1}) for i in range(10)]), reply("done")])
    run = await RunsService(MemoryStore()).start(Agent("t", model, tools=[add]), "go")
    assert run.status == "completed"
    assert [s.result for s in run.steps if s.type == "tool"] == [str(i + 1) for i in range(10)]
    assert asyncio.get_running_loop()._default_executor is None  # type: ignore[attr-defined]
    assert tool_threads()._workers


async def test_a_shutdown_during_a_sync_tool_waits_for_it_and_records_its_result():
    entered, release = threading.Event(), threading.Event()

    @tool
    def slow() -> str:
        """Wait."""
        entered.set()
        release.wait(5)
        return "it did finish"

    log = []
    service = RunsService(MemoryStore())
    model = ScriptedModel([call_tool("slow"), reply("never")])
    task = asyncio.ensure_future(service.start(Agent("t", model, tools=[slow]), "go",
                                               on_event=lambda e: log.append(e.record)))
    while not entered.is_set():
        await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.sleep(0.05)
    assert not task.done()  # it waits for the thread
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    finished = [r.payload for r in log if r is not None and isinstance(r.payload, ToolFinished)]
    assert [f.result for f in finished] == ["it did finish"]


FORK_AND_EXIT = """
import asyncio, os, sys, threading, time
from tether.adapters.tools.threads import tool_threads

async def main():
    pool = tool_threads()
    await pool.start(lambda: None)  # a worker exists, and the pool's shutdown is registered for exit
    return pool

pool = asyncio.run(main())
held, release = threading.Event(), threading.Event()

def hold():  # as a worker does for an instant, many times a second in a busy process
    with pool._lock:
        held.set()
        release.wait()

threading.Thread(target=hold, daemon=True).start()
held.wait()
pid = os.fork()
if pid == 0:
    sys.exit(0)  # a normal exit of the child: threading's exit hooks run, the pool's shutdown too
release.set()
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        print("exit", os.waitstatus_to_exitcode(status))
        break
    time.sleep(0.05)
else:
    os.kill(pid, 9)
    print("the child hung at exit")
"""


def test_a_forked_child_exits_without_waiting_for_its_parents_tool_threads():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", FORK_AND_EXIT], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "exit 0", out.stdout + out.stderr
