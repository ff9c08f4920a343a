"""Named fault points inside the commit pipeline, for kill tests.

`TETHER_FAULT_AT=POINT:N` makes the process kill itself with SIGKILL the N-th time (from 1) the
group-commit writer reaches POINT:

- `commit.before`: a transaction has written its rows and not committed them;
- `commit.after`: it committed, and nobody has been told (no sync woken, nothing remembered);
- `commit.wake`: the syncs that waited for it were woken, and the process dies two loop iterations
  later: their runs went on (a tool the sync was for has started), the next flush has not come.

N counts transactions of the writer (a flush, or one run's retry after a conflict). The variable is
read once, when this module is imported; a bad value is an error when a store opens. Unset, a fault
point costs the writer one attribute test per transaction.
"""

from __future__ import annotations

import asyncio
import os
import signal

from tether.domain.errors import ConfigError

POINTS = ("commit.before", "commit.after", "commit.wake")
WAKE_HOPS = 2  # loop iterations between waking the syncs and dying at commit.wake


class FaultPoint:
    """One named point and the hit at which the process dies."""

    def __init__(self, point: str, n: int) -> None:
        self.point, self.n, self.hits = point, n, 0

    def reached(self, point: str) -> bool:
        """True on the N-th time `point` is reached (the caller then calls `die`)."""
        if point != self.point:
            return False
        self.hits += 1
        return self.hits == self.n

    @staticmethod
    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    @staticmethod
    def die_later(loop: asyncio.AbstractEventLoop, hops: int = WAKE_HOPS) -> None:
        """Die after `hops` iterations of `loop` (callable from any thread)."""

        def hop(left: int) -> None:
            if left <= 0:
                FaultPoint.die()
            loop.call_soon(hop, left - 1)

        loop.call_soon_threadsafe(hop, hops)


def parse(spec: str | None) -> FaultPoint | None:
    if not spec:
        return None
    point, _, n = spec.partition(":")
    if point not in POINTS or not n.isdigit() or int(n) < 1:
        raise ConfigError(
            f"TETHER_FAULT_AT={spec!r} is not a fault point; use POINT:N with N ≥ 1 and POINT one of "
            f"{', '.join(POINTS)} (or unset it)"
        )
    return FaultPoint(point, int(n))


try:
    FAULT: FaultPoint | None = parse(os.environ.get("TETHER_FAULT_AT"))
    FAULT_ERROR: ConfigError | None = None
except ConfigError as e:
    FAULT, FAULT_ERROR = None, e


def fault_point() -> FaultPoint | None:
    """The fault point this process was started with (raises for a bad TETHER_FAULT_AT)."""
    if FAULT_ERROR is not None:
        raise FAULT_ERROR
    return FAULT
