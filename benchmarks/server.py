"""The overhead of `tether serve`: run latency, run throughput and the cost of plain API calls.

A real `tether serve` subprocess (SQLite store in a temporary TETHER_HOME, `--concurrency 64`) is
driven through the official `openai` SDK (max_retries=0). Its model backend is the loopback fake of
tests/fake_openai.py answering every chat request at once with "ok", so the model's own time is
zero and every figure is Tether's overhead: HTTP in and out, the durable run log, the run
scheduler, and one loopback round trip to the fake per run (its cost is printed as a baseline).
The client, the fake and the server share the machine's cores.

    uv run python benchmarks/server.py

Figures:
  1. one run end to end, one client: `threads.create_and_run_poll` (polling every 10 ms) and a
     streamed `threads.create_and_run_stream` (time to the `thread.run.completed` event);
  2. throughput: 200 runs started from 32 client threads (create_and_run, then poll every 10 ms);
  3. plain calls: `messages.list` of a 50-message thread, `runs.retrieve` of a finished run.
"""

from __future__ import annotations

import itertools
import os
import platform
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent.parent / "tests"
for _p in (TESTS, TESTS / "sdk"):  # fake_openai.py; server.py (both stdlib only)
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import openai  # noqa: E402
from server import ServerFailedToStart, TetherServer  # noqa: E402
from timing import ms, timed  # noqa: E402  (benchmarks/timing.py)

import fake_openai  # noqa: E402
from fake_openai import FakeOpenAI  # noqa: E402

# The fake writes a reply's headers and body separately; with Nagle's algorithm on, a kept-alive
# connection then waits for the client's delayed ACK (~40 ms on Linux) before the body goes out.
# TCP_NODELAY (for this process only) makes its answers as instant as the benchmark assumes.
fake_openai._Handler.disable_nagle_algorithm = True

# Every Assistants method of the SDK warns that the API is deprecated.
warnings.filterwarnings("ignore", category=DeprecationWarning)

KEY = "sk-tether-bench"
MODEL = "gpt-bench"  # a bare name: goes to the fake through OPENAI_BASE_URL
CONCURRENCY = 64
POLL_MS = 10
LATENCY_RUNS = 50
THROUGHPUT_RUNS, CLIENT_THREADS = 200, 32
CALLS, THREAD_MESSAGES = 200, 50


def user(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


def run_polled(client: openai.OpenAI, assistant_id: str) -> None:
    run = client.beta.threads.create_and_run_poll(assistant_id=assistant_id, thread=user("hi"),
                                                  poll_interval_ms=POLL_MS)
    if run.status != "completed":
        raise RuntimeError(f"run {run.id} ended {run.status}: {run.last_error}")


def run_streamed(client: openai.OpenAI, assistant_id: str) -> float:
    """Seconds from the request to the `thread.run.completed` event (the rest of the stream is drained)."""
    t = time.perf_counter()
    took = None
    with client.beta.threads.create_and_run_stream(assistant_id=assistant_id, thread=user("hi")) as stream:
        for event in stream:
            if event.event == "thread.run.completed":
                took = time.perf_counter() - t
            elif event.event in ("thread.run.failed", "thread.run.incomplete", "thread.run.expired", "error"):
                raise RuntimeError(f"streamed run ended with {event.event}: {event.data}")
    if took is None:
        raise RuntimeError("the stream ended without thread.run.completed")
    return took


def throughput(client: openai.OpenAI, assistant_id: str, requests: itertools.count[int]
               ) -> tuple[float, list[float], int]:
    """(wall seconds, per-run latencies, HTTP requests sent) of THROUGHPUT_RUNS runs from CLIENT_THREADS threads."""

    def one(_: int) -> float:
        t = time.perf_counter()
        run = client.beta.threads.create_and_run(assistant_id=assistant_id, thread=user("hi"))
        run = client.beta.threads.runs.poll(run.id, thread_id=run.thread_id, poll_interval_ms=POLL_MS)
        if run.status != "completed":
            raise RuntimeError(f"run {run.id} ended {run.status}: {run.last_error}")
        return time.perf_counter() - t

    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        list(pool.map(one, range(CLIENT_THREADS)))  # warm-up: connections, threads
        sent = next(requests)
        t = time.perf_counter()
        latencies = list(pool.map(one, range(THROUGHPUT_RUNS)))
        wall = time.perf_counter() - t
        return wall, latencies, next(requests) - sent - 1


def bench(server: TetherServer, fake: FakeOpenAI) -> None:
    requests = itertools.count()  # requests sent to the server (next() is atomic under the GIL)
    http = openai.DefaultHttpxClient(timeout=60, event_hooks={"request": [lambda _: next(requests)]})
    client = openai.OpenAI(api_key=KEY, base_url=server.base_url, max_retries=0, timeout=60, http_client=http)
    model_client = openai.OpenAI(api_key="fake", base_url=fake.base_url, max_retries=0, timeout=60)
    assistant = client.beta.assistants.create(model=MODEL, instructions="Be brief.")

    def model_call() -> None:  # streamed, like the server's own calls
        for _ in model_client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                      stream=True):
            pass

    baseline = timed(model_call, CALLS, warmup=5)
    polled = timed(lambda: run_polled(client, assistant.id), LATENCY_RUNS, warmup=5)
    for _ in range(5):
        run_streamed(client, assistant.id)
    streamed = [run_streamed(client, assistant.id) for _ in range(LATENCY_RUNS)]
    wall, latencies, sent = throughput(client, assistant.id, requests)

    thread = client.beta.threads.create()
    for i in range(THREAD_MESSAGES):
        client.beta.threads.messages.create(thread.id, role="user", content=f"message {i}")
    listed = timed(lambda: client.beta.threads.messages.list(thread.id, limit=100), CALLS, warmup=10)
    if len(client.beta.threads.messages.list(thread.id, limit=100).data) != THREAD_MESSAGES:
        raise RuntimeError("messages.list did not return the thread's messages")
    run = client.beta.threads.create_and_run_poll(assistant_id=assistant.id, thread=user("hi"),
                                                  poll_interval_ms=POLL_MS)
    retrieved = timed(lambda: client.beta.threads.runs.retrieve(run.id, thread_id=run.thread_id), CALLS, warmup=10)

    print(f"tether serve overhead: {os.cpu_count()} cores ({platform.machine()}), Python {platform.python_version()}, "
          f"openai {openai.__version__}, SQLite store, --concurrency {CONCURRENCY}")
    print("model time: 0 (a loopback fake answers every chat request at once); client, fake and server share "
          "the cores")
    print()
    print(f"{'':44}{'median / p95':>24}")
    print(f"{'baseline: one streamed call to the fake':44}{ms(baseline):>24}   the model round trip each run makes")
    print(f"{'one run, create_and_run_poll (10 ms poll)':44}{ms(polled):>24}   {LATENCY_RUNS} runs, one after another")
    print(f"{'one run, streamed, to thread.run.completed':44}{ms(streamed):>24}   no polling: the run's own latency")
    print(f"{f'{THROUGHPUT_RUNS} runs from {CLIENT_THREADS} client threads':44}{ms(latencies):>24}   "
          f"create_and_run + poll: {THROUGHPUT_RUNS / wall:.0f} runs/s, {sent / wall:.0f} requests/s "
          f"({wall:.2f} s wall, {sent / THROUGHPUT_RUNS:.1f} requests per run)")
    print(f"{f'messages.list, {THREAD_MESSAGES}-message thread':44}{ms(listed):>24}   "
          f"{CALLS} calls, limit=100 (all {THREAD_MESSAGES} returned)")
    print(f"{'runs.retrieve, a finished run':44}{ms(retrieved):>24}   {CALLS} calls")
    print()
    print("A polled run's latency includes up to one poll interval of waiting; the streamed figure does not.")
    client.close()
    model_client.close()


def main() -> int:
    fake = FakeOpenAI().start()
    fake.respond_with(lambda body: "ok")
    server = TetherServer(model_base_url=fake.base_url, api_keys=[KEY],
                          extra_args=["--concurrency", str(CONCURRENCY)])
    try:
        try:
            server.start()
        except ServerFailedToStart as exc:
            print(f"tether serve failed to start: {str(exc).splitlines()[0]}", file=sys.stderr)
            print(server.stderr_text() or "(no stderr)", file=sys.stderr)
            return 1
        try:
            bench(server, fake)
        except Exception:
            if not server.running:
                print(f"tether serve exited with {server.returncode}; its stderr:", file=sys.stderr)
                print(server.stderr_text() or "(no stderr)", file=sys.stderr)
            raise
        return 0
    finally:
        server.close()
        fake.close()


if __name__ == "__main__":
    sys.exit(main())
