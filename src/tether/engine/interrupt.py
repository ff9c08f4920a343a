"""A call that another task may interrupt, awaited in the caller's own task.

Running a model call in a task of its own, only so that `Executor.cancel()` can cancel it, costs a
task and two trips through the event loop per step. Instead the call is awaited where it is, and
`interrupt()` cancels the awaiting task; on leaving the block that cancellation is taken back and
swallowed, so the caller goes on (and sees `interrupted`). A cancellation from elsewhere (a
shutdown) still propagates, as with `asyncio.timeout`.
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class Interruptible:
    """`async with scope: await call` — `scope.interrupt()` from another task stops the call.

    `owner`, if set, is the task the calls run in (on CPython 3.11 `asyncio.current_task()` is
    Python code that looks the loop up with a getpid() system call)."""

    __slots__ = ("_cancelling", "_task", "interrupted", "owner")

    def __init__(self) -> None:
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self.interrupted = False
        self.owner: asyncio.Task[object] | None = None

    async def __aenter__(self) -> Interruptible:
        task = self.owner or asyncio.current_task()
        if task is None:
            raise RuntimeError("Interruptible must be used inside a task")
        self._task, self._cancelling, self.interrupted = task, task.cancelling(), False
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool:
        task, self._task = self._task, None
        if not self.interrupted or task is None:
            return False
        # Take our cancellation back (the call may have ended before it arrived); swallow the
        # CancelledError only if nobody else asked for one.
        return task.uncancel() <= self._cancelling and exc_type is not None \
            and issubclass(exc_type, asyncio.CancelledError)

    def interrupt(self) -> bool:
        """Cancel the call in flight, if any; False when there is none to stop from here (none in
        flight, or asked from inside the call's own task, which must see the request on return)."""
        task = self._task
        if task is None or self.interrupted or task is asyncio.current_task():
            return False
        self.interrupted = True
        task.cancel()
        return True
