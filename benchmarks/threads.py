"""Listing a page of a long thread: `messages.list(limit=20)` on a thread of N messages.

A thread of N messages (half written by the client, half answers its runs wrote: N/2 finished
runs of one model step each) is written straight into a SQLite store, as `tether serve` would
have written it; then a real `tether serve` subprocess on that database is asked, through the
official `openai` SDK (max_retries=0), for pages of 20 messages: the newest page, a page at a
cursor in the middle, and a page before a cursor. The first listing is timed on its own (it may
do one-time work, e.g. a projection of finished runs), then each page CALLS times.

    uv run python benchmarks/threads.py [N [CALLS]]     (default N=500, CALLS=50; the issue's N is 10000)

Run it against another checkout (e.g. the code before a change) with
`PYTHONPATH=/path/to/checkout/src uv run python benchmarks/threads.py N`: the server subprocess
inherits PYTHONPATH.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent.parent / "tests"
for _p in (TESTS, TESTS / "sdk"):  # fake_openai.py; server.py (both stdlib only)
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import openai  # noqa: E402
from server import TetherServer  # noqa: E402
from timing import ms, timed  # noqa: E402  (benchmarks/timing.py)

from fake_openai import FakeOpenAI  # noqa: E402
from tether.adapters.store.sql import SqlStore  # noqa: E402
from tether.domain.agents import AgentSnapshot, Limits  # noqa: E402
from tether.domain.ids import new_id  # noqa: E402
from tether.domain.messages import Message  # noqa: E402
from tether.domain.models import ModelResponse  # noqa: E402
from tether.domain.objects import StoredObject  # noqa: E402
from tether.domain.records import Finished, ModelCalled, Record, RunStarted  # noqa: E402
from tether.domain.usage import Usage  # noqa: E402

warnings.filterwarnings("ignore", category=DeprecationWarning)  # the SDK's Assistants methods warn

KEY = "sk-tether-bench"
MODEL = "gpt-bench"
CALLS = 50
TENANT = "k_" + hashlib.sha256(KEY.encode()).hexdigest()[:24]  # how the server names the key's tenant


def _settings(assistant_id: str) -> dict[str, Any]:
    """A run's stored settings, as the server stores them for a run of a plain assistant."""
    return {"assistant_id": assistant_id, "model": MODEL, "instructions": "", "tools": [], "tether_tools": [],
            "tether_breakpoints": [], "tool_choice": "auto", "parallel_tool_calls": True, "response_format": "auto",
            "temperature": 1.0, "top_p": 1.0, "reasoning_effort": None, "max_prompt_tokens": None,
            "max_completion_tokens": None, "truncation_strategy": {"type": "auto", "last_messages": None},
            "metadata": {}}


async def seed(url: str, n: int) -> tuple[str, str]:
    """A thread of `n` messages in the store at `url`: its id, and the id of its middle message."""
    store = SqlStore(url)
    now = time.time()
    assistant_id = new_id("asst")
    await store.put_object(StoredObject(assistant_id, "assistant", TENANT, now, {
        "name": None, "description": None, "instructions": None, "tools": [], "tool_resources": {}, "metadata": {},
        "temperature": 1.0, "top_p": 1.0, "response_format": "auto", "reasoning_effort": None, "tether_tools": [],
        "tether_breakpoints": [], "model": MODEL}))
    thread_id = new_id("thread")
    await store.put_object(StoredObject(thread_id, "thread", TENANT, now, {"metadata": {}, "tool_resources": {}}))
    middle = ""
    for i in range(n // 2):
        text = f"question {i}"
        message_id = new_id("msg")
        if i == n // 4:
            middle = message_id
        await store.put_object(StoredObject(message_id, "message", TENANT, time.time(), {
            "role": "user", "content": [{"type": "text", "text": {"value": text, "annotations": []}}],
            "assistant_id": None, "run_id": None, "attachments": [], "metadata": {}, "status": "completed",
            "completed_at": int(time.time()), "incomplete_at": None, "incomplete_details": None}, thread_id))
        run_id = new_id("run")
        await store.put_object(StoredObject(run_id, "run", TENANT, time.time(), _settings(assistant_id), thread_id))
        snapshot = AgentSnapshot(assistant_id, MODEL, "", Limits(max_steps=50, on_max_steps="fail"),
                                 agent_ref=f"api:{run_id}")
        ts = time.time()
        usage = Usage(input_tokens=10, output_tokens=5)
        await store.create_run(Record(run_id, 1, ts, RunStarted(snapshot, [Message.user(text)], thread_id,
                                                                metadata={"api": "assistants"})), owner=None)
        store.append([
            Record(run_id, 2, ts + 0.001, ModelCalled(1, "fp", ModelResponse(f"answer {i}", usage=usage))),
            Record(run_id, 3, ts + 0.002, Finished("completed", f"answer {i}", usage=usage))])
        await store.sync()
    await store.close()
    return thread_id, middle


def bench(server: TetherServer, thread_id: str, cursor: str, n: int, calls: int) -> None:
    client = openai.OpenAI(api_key=KEY, base_url=server.base_url, max_retries=0, timeout=600)
    t = time.perf_counter()
    first = client.beta.threads.messages.list(thread_id, limit=20)
    first_s = time.perf_counter() - t
    if len(first.data) != 20 or not first.has_more:
        raise RuntimeError(f"the first page has {len(first.data)} messages (has_more {first.has_more})")
    newest = timed(lambda: client.beta.threads.messages.list(thread_id, limit=20), calls)
    after = timed(lambda: client.beta.threads.messages.list(thread_id, limit=20, after=cursor), calls)
    before = timed(lambda: client.beta.threads.messages.list(thread_id, limit=20, before=cursor), calls)
    if len(client.beta.threads.messages.list(thread_id, limit=20, after=cursor).data) != 20:
        raise RuntimeError("the page after the middle cursor is not full")
    load = os.getloadavg()
    print(f"messages.list(limit=20) of a thread of {n} messages ({n // 2} client messages, {n // 2} finished runs); "
          f"SQLite; {os.cpu_count()} cores; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{'':38}{'median / p95':>24}")
    print(f"{'the first listing (once)':38}{first_s * 1e3:>11.2f} ms")
    print(f"{'newest page':38}{ms(newest):>24}   {calls} calls")
    print(f"{'page after a middle cursor':38}{ms(after):>24}   {calls} calls")
    print(f"{'page before a middle cursor':38}{ms(before):>24}   {calls} calls")
    client.close()


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    calls = int(sys.argv[2]) if len(sys.argv) > 2 else CALLS
    home = Path(tempfile.mkdtemp(prefix="tether-bench-threads-"))
    url = f"sqlite:///{home / 't.db'}"
    t = time.perf_counter()
    thread_id, middle = asyncio.run(seed(url, n))
    print(f"(seeded {n} messages in {time.perf_counter() - t:.1f} s)")
    fake = FakeOpenAI().start()
    server = TetherServer(model_base_url=fake.base_url, api_keys=[KEY], database_url=url, home=home)
    try:
        server.start()
        bench(server, thread_id, middle, n, calls)
    finally:
        server.terminate()
        fake.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
