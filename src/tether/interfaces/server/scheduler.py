"""Runs advanced in this process, a bounded number at a time, and their events for live streams.

A run is created queued (leased to this process) and submitted here; a task advances it through
the runs service (`resume`), which takes the lease again. Runs whose lease expired (their server
died) are found by a recovery loop and advanced the same way, so two servers on one database
share the work and a restarted server finishes what a killed one left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from tether.domain.errors import TetherError
from tether.domain.events import Event
from tether.services.runs import RunsService

log = logging.getLogger("tether.server")


class EventBus:
    """Fan-out of run events to the streams that follow a run in this process."""

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


class Scheduler:
    def __init__(self, service: RunsService, *, concurrency: int = 16, recover_every_s: float | None = None) -> None:
        self.service = service
        self.bus = EventBus()
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._recover_every_s = recover_every_s or service.lease_ttl_s / 2
        self._recovery: asyncio.Task[None] | None = None
        self.closing = False

    def submit(self, run_id: str) -> None:
        """Advance the run in the background (once: a run already scheduled here is left alone)."""
        if self.closing or run_id in self._tasks:
            return
        self._tasks[run_id] = asyncio.create_task(self._advance(run_id), name=f"advance {run_id}")

    def busy(self, run_id: str) -> bool:
        return run_id in self._tasks

    async def _advance(self, run_id: str) -> None:
        try:
            async with self._slots:
                view = await self.service.resume(run_id, on_event=self.bus.publish)
            log.info("run %s: %s%s", run_id, view.status, f" ({view.error})" if view.error else "")
        except TetherError as e:
            log.info("run %s not advanced here: %s", run_id, e)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("advancing run %s failed", run_id)
        finally:
            self._tasks.pop(run_id, None)
            self.bus.stopped(run_id)

    def start(self) -> None:
        self._recovery = asyncio.create_task(self._recover(), name="recover expired runs")

    async def _recover(self) -> None:
        """Advance runs whose owner died: at start (also those of a dead process of this machine,
        such as this server killed and started again), then now and then (expired leases)."""
        first = True
        while not self.closing:
            try:
                for run_id in await self.service.orphaned_runs(dead_owners=first):
                    self.submit(run_id)
                first = False
            except Exception:
                log.exception("looking for runs to recover failed")
            await asyncio.sleep(self._recover_every_s)

    async def close(self, grace_s: float = 5.0) -> None:
        """Stop: let runs in flight go on for `grace_s`, then interrupt them (their
        leases are released, so another server, or this one restarted, resumes them at once)."""
        self.closing = True
        if self._recovery is not None:
            self._recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recovery
        tasks = list(self._tasks.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_s)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
