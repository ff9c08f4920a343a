"""Which records of a parent run a fork at step n reuses (pure: no calls, no I/O).

A fork reuses every step before n exactly as recorded, so nothing before n is called again:
model calls and tool results are copied and marked `reused`. Pauses and their answers come
along only when everything they concern lies before n.
"""

from __future__ import annotations

from dataclasses import replace

from tether.domain.records import (
    Decision,
    ForkOrigin,
    ModelCalled,
    Paused,
    Payload,
    Record,
    RunStarted,
    ToolFinished,
    ToolStarted,
)


def step_of(payload: Payload) -> int | None:
    if isinstance(payload, ModelCalled | ToolStarted | ToolFinished):
        return payload.step
    return None


def reused_prefix(parent: list[Record], at_step: int, new_run_id: str, now: float,
                  thread_id: str | None) -> list[Record]:
    """The fork's first records: its `run_started` (naming the parent) and the reused steps < n."""
    first = parent[0].payload
    assert isinstance(first, RunStarted)
    # A fork is not an attempt of the parent's batch case (the batch never sees it): no batch ref.
    start = replace(first, thread_id=thread_id, fork=ForkOrigin(parent[0].run_id, at_step), batch=None,
                    metadata={**first.metadata, "forked_from": parent[0].run_id, "fork_step": at_step})
    kept: list[Payload] = [start]
    kept_pauses: set[str] = set()
    for r in parent[1:]:
        p = r.payload
        step = step_of(p)
        if step is not None:
            if step < at_step:
                kept.append(replace(p, reused=True) if isinstance(p, ModelCalled | ToolFinished) else p)
        elif isinstance(p, Paused):
            if all(i.step is not None and i.step < at_step for i in p.items):
                kept.append(p)
                kept_pauses.add(p.pause_id)
        elif isinstance(p, Decision) and p.pause_id in kept_pauses:
            kept.append(p)
    return [Record(new_run_id, i + 1, now, p) for i, p in enumerate(kept)]


def later_side_effects(parent: list[Record], at_step: int, idempotent: set[str]) -> list[str]:
    """Non-idempotent tool calls the parent made at or after step n: their effects already happened."""
    return [
        f"step {p.step}: {p.name}({p.arguments})"
        for r in parent
        if isinstance(p := r.payload, ToolStarted) and p.step >= at_step and p.name not in idempotent
    ]
