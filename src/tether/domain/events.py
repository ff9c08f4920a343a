"""Events: every state change of a run, for live views, streams and telemetry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tether.domain.records import Record


@dataclass(slots=True)
class Event:
    """`record`: a record was appended (replayable from the log); `delta`: model text, live only;
    `budget_warning`: a shared budget covering the run passed 80 % (`detail` says which, with its
    figures), once per budget, live only; `budget_wait`: the run's next call waits for other calls'
    reservations in a shared budget to settle (`detail` says which), live only."""

    run_id: str
    type: Literal["record", "delta", "budget_warning", "budget_wait"]
    record: Record | None = None
    delta: str | None = None
    detail: str | None = None
