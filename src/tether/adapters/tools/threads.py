"""Tether's own threads for sync tools, handing results back to the event loop in batches.

`asyncio.to_thread` costs, per call, a concurrent future, an asyncio future chained to it and a
write to the loop's self-pipe when it completes, and the executor wrapped it in a task and a
shield; with thousands of runs in flight, these objects (alive while the call waits for a thread)
also make the garbage collector run more often over every live run.

Here a job is a tuple on a queue, and its result goes to its loop's inbox: only the first result
since the loop last looked wakes the loop (`call_soon_threadsafe`), and that one wake-up settles
every result that finished meanwhile. A call is a `ThreadCall` with one waiter future. (A separate
thread for the wake-ups, so that a worker never lets the GIL go mid-turn, measured no better.)

Semantics are those of `to_thread`: the function runs in a copy of the caller's context, and its
exception is raised by the await. Cancelling an await does not stop the thread, and a `ThreadCall`
can be awaited again after that (the executor relies on both: such a call may still take effect,
and on a shutdown it waits for the call to record its result). The pool has at most `max_threads`
workers, started as needed, for each event loop, as `to_thread` (a default executor per loop) had:
the pool is shared, but a loop with fewer than `max_threads` calls unfinished gets a thread when its
call would wait. So a sync tool that runs a sub-agent and waits for it (`run_sync`, a loop of its
own) never waits for a thread that its caller, or calls like it, hold. It is not the loop's default
executor, which stays the user's.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import queue
import threading
import weakref
from collections.abc import Callable, Generator
from typing import Any

_Job = tuple[Callable[[], Any], contextvars.Context, "ThreadCall", "_Inbox"]


class ThreadCall:
    """A function running in a pool thread. Await it for its value (from one task at a time), as
    many times as needed: an await that is cancelled leaves the call running, and a later await
    gets its outcome."""

    __slots__ = ("_done", "_error", "_loop", "_value", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiter: asyncio.Future[None] | None = None
        self._done = False
        self._value: Any = None
        self._error: BaseException | None = None

    def __await__(self) -> Generator[Any, None, Any]:
        if not self._done:
            self._waiter = self._loop.create_future()
            yield from self._waiter  # a cancelled await cancels this waiter only
        if self._error is not None:
            raise self._error
        return self._value

    def done(self) -> bool:
        return self._done

    def _settle(self, value: Any, error: BaseException | None) -> None:
        self._value, self._error, self._done = value, error, True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class _Inbox:
    """The results waiting for one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)  # the pool outlives loops (each asyncio.run makes one)
        self._lock = threading.Lock()
        self._results: list[tuple[ThreadCall, Any, BaseException | None]] = []
        self.unfinished = 0  # calls of this loop queued or running (under the pool's lock)

    def put(self, call: ThreadCall, value: Any, error: BaseException | None) -> bool:
        """From a worker: keep the result; True if it is the first since the loop last looked."""
        with self._lock:
            self._results.append((call, value, error))
            return len(self._results) == 1

    def wake(self) -> None:
        """From a worker: have the loop settle what came in."""
        if (loop := self._loop()) is not None:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody awaits these any more
                loop.call_soon_threadsafe(self._settle)

    def _settle(self) -> None:
        """On the loop: settle every result that came in since the last time."""
        with self._lock:
            results, self._results = self._results, []
        for call, value, error in results:
            call._settle(value, error)


class ToolThreads:
    """A bounded pool of threads for sync tools."""

    def __init__(self, max_threads: int | None = None) -> None:
        self.max_threads = max_threads or min(32, (os.cpu_count() or 1) + 4)  # as asyncio.to_thread's
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []
        self._waiting = 0  # workers waiting for a job
        self._inboxes: dict[int, _Inbox] = {}  # id(loop) → its inbox; dropped with the loop
        self._closed = False

    def start(self, fn: Callable[[], Any], /) -> ThreadCall:
        """Run `fn()` in a pool thread, in a copy of the current context; its outcome is handed
        to the running loop."""
        loop = asyncio.get_running_loop()
        inbox = self._inboxes.get(id(loop)) or self._inbox(loop)
        call = ThreadCall(loop)
        with self._lock:
            if self._closed:
                raise RuntimeError("the tool threads were shut down (the interpreter is exiting)")
            self._jobs.put((fn, contextvars.copy_context(), call, inbox))
            inbox.unfinished += 1
            # More jobs queued than workers waiting for one: a thread more, within the bound, or past
            # it for a loop of its own (a sub-agent's, which a thread of the pool may be waiting for).
            if self._jobs.qsize() > self._waiting and (
                len(self._workers) < self.max_threads or inbox.unfinished <= self.max_threads
            ):
                self._start_worker()
        return call

    def _inbox(self, loop: asyncio.AbstractEventLoop) -> _Inbox:
        inbox = self._inboxes[id(loop)] = _Inbox(loop)
        weakref.finalize(loop, self._inboxes.pop, id(loop), None)
        return inbox

    def _start_worker(self) -> None:
        t = threading.Thread(target=self._work, name=f"tether-tool-{len(self._workers)}", daemon=True)
        t.start()
        self._workers.append(t)

    def _work(self) -> None:
        with self._lock:
            self._waiting += 1
        while True:
            job = self._jobs.get()
            with self._lock:
                self._waiting -= 1
            if job is None:
                return
            fn, context, call, inbox = job
            del job
            error: BaseException | None = None
            try:
                value = context.run(fn)
            except BaseException as e:
                value, error = None, e
            with self._lock:  # waiting again before the caller learns the result: its next call takes this thread
                self._waiting += 1
                inbox.unfinished -= 1
            if inbox.put(call, value, error):
                inbox.wake()
            del fn, context, call, inbox, value, error

    def shutdown(self) -> None:
        """Let the threads end once the jobs queued so far are done; wait for them."""
        with self._lock:
            self._closed = True
            workers = list(self._workers)
        for _ in workers:
            self._jobs.put(None)
        for t in workers:
            t.join()


_pool: ToolThreads | None = None
_pool_lock = threading.Lock()


def _forget_pool() -> None:
    global _pool, _pool_lock
    if _pool is not None:  # its shutdown, registered for exit, must not wait for the parent's threads
        _pool._lock, _pool._workers = threading.Lock(), []  # nor for a lock one of them held
    _pool, _pool_lock = None, threading.Lock()  # a forked child has none of its parent's threads


os.register_at_fork(after_in_child=_forget_pool)


def tool_threads() -> ToolThreads:
    """The process's pool for sync tools, started on first use."""
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = ToolThreads()
                # As concurrent.futures does: at exit, a tool still running finishes first.
                register = getattr(threading, "_register_atexit", None)
                if register is not None:
                    register(_pool.shutdown)
    return _pool
