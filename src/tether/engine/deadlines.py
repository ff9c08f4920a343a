"""Tool-call deadlines on a few coarse loop timers, instead of one loop timer per call.

`asyncio.timeout` puts a timer in the loop's heap for every call and cancels it almost every time
(a tool's default timeout is 60 s): with thousands of runs in flight that heap, rebuilt as the
cancelled timers pile up, costs a noticeable share of each step. Here the deadlines of one event
loop are kept in buckets, rounded up, with one loop timer per bucket: arming and disarming a
deadline is a dict insert and delete. A bucket is `GRANULARITY_S` wide, or for a short timeout a
power-of-two fraction of it no wider than an eighth of the timeout, so a call is cancelled at
most min(`GRANULARITY_S`, timeout / 8) after its deadline, and never before it.

`deadline(seconds)` behaves as `asyncio.timeout(seconds)` does: on expiry it cancels the task,
and on exit it turns that cancellation into a `TimeoutError`; a cancellation from elsewhere (a
shutdown, Ctrl-C) still propagates as `CancelledError`.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from types import TracebackType
from typing import Any

GRANULARITY_S = 0.25


class _Keeper:
    """The armed deadlines of one event loop, by bucket; one loop timer per bucket."""

    def __init__(self) -> None:
        self.buckets: dict[float, dict[deadline, None]] = {}  # its time → its deadlines (an ordered set)

    def arm(self, loop: asyncio.AbstractEventLoop, d: deadline, when: float, width: float) -> float:
        if not math.isfinite(when / width):  # timeout_s=inf (or astronomically far): it never comes
            return math.inf
        slot = math.ceil(when / width) * width  # rounded up (exactly: width is a power of two)
        bucket = self.buckets.get(slot)
        if bucket is None:
            bucket = self.buckets[slot] = {}
            loop.call_at(slot, self._expire, slot)
        bucket[d] = None
        return slot

    def disarm(self, d: deadline, slot: float) -> None:
        bucket = self.buckets.get(slot)
        if bucket is not None:
            bucket.pop(d, None)  # an emptied bucket stays until its timer fires: at most one per GRANULARITY_S

    def _expire(self, slot: float) -> None:
        for d in self.buckets.pop(slot, ()):
            d.expire()


_keepers: dict[int, _Keeper] = {}  # id(loop) → its keeper; dropped with the loop


def _width(seconds: float) -> float:
    """The bucket width for a timeout: GRANULARITY_S, halved down to an eighth of the timeout."""
    width = GRANULARITY_S
    while width > seconds / 8 and width > 2 ** -10:
        width /= 2
    return width


def _keeper(loop: asyncio.AbstractEventLoop) -> _Keeper:
    keeper = _keepers.get(id(loop))
    if keeper is None:
        keeper = _keepers[id(loop)] = _Keeper()
        weakref.finalize(loop, _keepers.pop, id(loop), None)
    return keeper


class deadline:
    """`async with deadline(seconds):` — the body is cancelled once `seconds` have passed (up to
    min(`GRANULARITY_S`, seconds / 8) later), and the block then raises `TimeoutError`.

    `task`, if the caller knows it, is the task the block runs in: on CPython 3.11
    `asyncio.current_task()` is Python code that looks the loop up with a getpid() system call."""

    __slots__ = ("_cancelling", "_expired", "_keeper", "_known", "_seconds", "_slot", "_task")

    def __init__(self, seconds: float, task: asyncio.Task[Any] | None = None) -> None:
        self._seconds = seconds
        self._expired = False
        self._known = task

    async def __aenter__(self) -> deadline:
        task = self._known or asyncio.current_task()
        if task is None:
            raise RuntimeError("deadline() must be used inside a task")
        loop = task.get_loop()
        self._task, self._cancelling = task, task.cancelling()
        self._keeper = _keeper(loop)
        self._slot = self._keeper.arm(loop, self, loop.time() + self._seconds, _width(self._seconds))
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if not self._expired:
            self._keeper.disarm(self, self._slot)
            return
        # Our own cancellation becomes a TimeoutError; one asked for by someone else goes on.
        if self._task.uncancel() <= self._cancelling and exc_type is not None \
                and issubclass(exc_type, asyncio.CancelledError):
            raise TimeoutError from exc

    @property
    def expired(self) -> bool:
        return self._expired

    def expire(self) -> None:
        self._expired = True
        self._task.cancel()
