"""Following a run: the one way every face (SSE streams, a terminal, a worker) watches a run.

A subscription gives the run's records after a seq, in order and each once: first the backlog
from the log, then live events from this process's bus (records and model text deltas), and,
for a run advanced by another process (whose events never reach this bus), records polled
from the log. Every read of the log asks only for records after the last one seen, so a poll
costs O(new records), not O(the run's history).
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

from tether.domain.events import Event
from tether.domain.records import Record

if TYPE_CHECKING:
    from tether.services.runs import RunsService


class EventBus:
    """Fan-out of run events to the subscriptions that follow a run in this process."""

    def __init__(self) -> None:
        self._subscribers: dict[str, list[asyncio.Queue[Event | None]]] = {}

    def subscribe(self, run_id: str) -> asyncio.Queue[Event | None]:
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._subscribers.setdefault(run_id, []).append(queue)
        return queue

    def unsubscribe(self, run_id: str, queue: asyncio.Queue[Event | None]) -> None:
        queues = self._subscribers.get(run_id, [])
        if queue in queues:
            queues.remove(queue)
        if not queues:
            self._subscribers.pop(run_id, None)

    def publish(self, event: Event) -> None:
        for queue in self._subscribers.get(event.run_id, ()):
            queue.put_nowait(event)

    def stopped(self, run_id: str) -> None:
        """This process stopped advancing the run (it paused, finished, or was handed on)."""
        for queue in self._subscribers.get(run_id, ()):
            queue.put_nowait(None)


@dataclass(frozen=True, slots=True)
class Quiet:
    """Nothing happened on the run for `seconds` (a stream sends a keep-alive)."""

    seconds: float


class Subscription:
    """One follower of one run. Subscribed on creation, so nothing the run does after that is
    missed (make it before handing the run to a dispatcher); `close()` (or `async with`) ends it."""

    def __init__(self, runs: RunsService, bus: EventBus, run_id: str, after: int) -> None:
        self.run_id = run_id
        self.seen = after  # the seq of the last record given out
        self._runs, self._bus = runs, bus
        self._queue = bus.subscribe(run_id)

    async def events(self, *, keepalive_s: float, poll_s: float = 1.0,
                     backlog: bool = True) -> AsyncIterator[Event | Quiet]:
        """The run's records after `seen` (the backlog from the log first), then live ones, model
        text deltas, and a `Quiet` after each `keepalive_s` without any. Ends only when the caller
        stops reading. `backlog=False`: the caller has the log up to `seen` and subscribed before
        the run was submitted, so live events come in their order (a model's text deltas before
        its record), none of them behind a record read from the log first."""
        if backlog:
            for record in await self._new_records():
                yield Event(record.run_id, "record", record)
        quiet = 0.0
        while True:
            try:
                event = await asyncio.wait_for(self._queue.get(), timeout=poll_s)
            except TimeoutError:
                event = None
                quiet += poll_s
            if event is not None:  # live, from this process
                quiet = 0.0
                if event.record is not None:
                    if event.record.seq <= self.seen:
                        continue  # already given (from the log)
                    if event.record.seq > self.seen + 1:
                        # Records written without a bus event (a decision from an HTTP answer, another
                        # process) come before this one: from the log, so none is skipped.
                        for record in await self._new_records(before=event.record.seq):
                            yield Event(record.run_id, "record", record)
                    self.seen = event.record.seq
                yield event
                continue
            # Nothing live (or this process stopped advancing it): what others wrote, from the log.
            for record in await self._new_records():
                quiet = 0.0
                yield Event(record.run_id, "record", record)
            if quiet >= keepalive_s:
                quiet = 0.0
                yield Quiet(keepalive_s)

    async def _new_records(self, before: int | None = None) -> builtins.list[Record]:
        records = [r for r in await self._runs.records_after(self.run_id, self.seen)
                   if before is None or r.seq < before]
        if records:
            self.seen = records[-1].seq
        return records

    def close(self) -> None:
        self._bus.unsubscribe(self.run_id, self._queue)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.close()


class RunEvents:
    """Subscriptions to runs, over the runs service's log and the dispatcher's bus."""

    def __init__(self, runs: RunsService, bus: EventBus) -> None:
        self.runs, self.bus = runs, bus

    def subscribe(self, run_id: str, *, after: int = 0) -> Subscription:
        """Follow `run_id` from the record after seq `after` (0: from its first record)."""
        return Subscription(self.runs, self.bus, run_id, after)
