"""Time-ordered, OpenAI-style prefixed ids (`run_…`, `call_…`)."""

from __future__ import annotations

import os
import threading
import time

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_lock = threading.Lock()
_last = 0


def _base36(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 36)
        out.append(_ALPHABET[r])
    return "".join(reversed(out))


def new_id(prefix: str) -> str:
    """`prefix_` + 10 chars of microsecond time (monotonic within a process) + 10 random chars."""
    global _last
    with _lock:
        now = max(time.time_ns() // 1000, _last + 1)
        _last = now
    rand = int.from_bytes(os.urandom(7), "big")
    return f"{prefix}_{_base36(now, 10)}{_base36(rand, 10)}"
