"""Opt-in tuning of the process for a long-lived Tether server or batch (never done on import).

Tether's runs make no reference cycles in their steps, yet CPython's cyclic garbage collector
still walks the live objects of every in-flight run each time enough containers were allocated:
at 10,000 concurrent runs that walk is a large share of the process's CPU. A process that owns
its interpreter (`tether serve` calls `tune_gc`; a batch script may) can make it cheaper; a
library must not change it in its user's process, so nothing here runs unless called.
"""

from __future__ import annotations

import gc

# Containers allocated (net) between two young-generation collections; CPython's default is 700.
# Tether's steps make no cycles, so collecting less often frees nothing later that matters.
GC_THRESHOLD0 = 50_000


def tune_gc(threshold0: int = GC_THRESHOLD0) -> None:
    """Collect once, freeze what start-up made (modules, classes, configuration: never garbage)
    so later collections skip it, and collect the young generation every `threshold0` net
    allocations instead of every 700. Call it once, after start-up, in a process of your own."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(threshold0, older, oldest)
