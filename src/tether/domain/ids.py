"""Time-ordered, OpenAI-style prefixed ids (`run_…`, `call_…`)."""

from __future__ import annotations

import os
import threading
import time

_lock = threading.Lock()
_last = 0


def new_id(prefix: str) -> str:
    """`prefix_` + 14 hex digits of microsecond time (monotonic within a process) + 12 random ones.

    Fixed width, so ids sort by creation time as plain strings (cursor pagination relies on it).
    """
    global _last
    with _lock:
        now = max(time.time_ns() // 1000, _last + 1)
        _last = now
    return f"{prefix}_{now:014x}{int.from_bytes(os.urandom(6), 'big'):012x}"
