"""Time-ordered, OpenAI-style prefixed ids (`run_…`, `call_…`)."""

from __future__ import annotations

import os
import threading
import time

_lock = threading.Lock()
_last = 0
_random = ""  # hex digits from os.urandom, drawn 12 at a time: one system call per 512 ids
_at = 0


def new_id(prefix: str) -> str:
    """`prefix_` + 14 hex digits of microsecond time (monotonic within a process) + 12 random ones.

    Fixed width, so ids sort by creation time as plain strings (cursor pagination relies on it).
    """
    global _last, _random, _at
    with _lock:
        now = max(time.time_ns() // 1000, _last + 1)
        _last = now
        if _at >= len(_random):
            _random, _at = os.urandom(6 * 512).hex(), 0
        rand = _random[_at:_at + 12]
        _at += 12
    return f"{prefix}_{now:014x}{rand}"


def _forget_random() -> None:
    global _random, _at, _lock
    _random, _at = "", 0  # a forked child must not repeat its parent's digits
    _lock = threading.Lock()  # nor wait for a lock another thread of its parent held


os.register_at_fork(after_in_child=_forget_random)
