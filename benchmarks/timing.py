"""What the benchmark scripts share: timing a call, and printing a median and a percentile."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any


def pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1)."""
    s = sorted(xs)
    return s[max(0, math.ceil(q * len(s)) - 1)]


def ms(xs: list[float]) -> str:
    """'median / p95' of seconds, in ms."""
    return f"{statistics.median(xs) * 1e3:8.2f} / {pct(xs, 0.95) * 1e3:8.2f} ms"


def timed(fn: Callable[[], Any], n: int, warmup: int = 2) -> list[float]:
    """`n` wall times of `fn()` in seconds, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out
