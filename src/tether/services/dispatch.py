"""Which process advances which run: the dispatcher protocol, and the in-process dispatcher.

A run is created queued (leased to this process) and submitted to a dispatcher, which advances
it through the runs service (`resume`, which takes the lease again) until it pauses or ends.
Runs whose lease expired (their process died) are found by a recovery loop and advanced the same
way, so two servers on one database share the work and a restarted one finishes what a killed
one left. Every face (the server, the CLI, batches, workers) reaches it through the services;
the composition root (`services/compose.py`) chooses which one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from tether.domain.errors import TetherError
from tether.services.events import EventBus
from tether.services.runs import RunsService

log = logging.getLogger("tether.server")


class Dispatcher(Protocol):
    """Advances submitted runs somewhere, and publishes the events of those it advances here."""

    @property
    def bus(self) -> EventBus:
        """The events of the runs this process advances (subscriptions read the rest from the log)."""
        ...

    def submit(self, run_id: str) -> None:
        """Have the run advanced until it pauses or ends (a run submitted already is left alone)."""
        ...

    def busy(self, run_id: str) -> bool:
        """Whether this process is advancing the run (or has it waiting for a slot)."""
        ...

    def start(self) -> None:
        """Begin recovering orphaned runs: those whose owner died (now and then, while open)."""
        ...

    async def close(self, grace_s: float = 5.0) -> None:
        """Stop: runs in flight get `grace_s`, then are interrupted with their leases released."""
        ...


class InProcessDispatcher:
    """Runs advanced by tasks of this process's event loop, `concurrency` at a time."""

    def __init__(self, runs: RunsService, *, concurrency: int = 16, recover_every_s: float | None = None) -> None:
        self.runs = runs
        self._bus = EventBus()
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._recover_every_s = recover_every_s or runs.lease_ttl_s / 2
        self._recovery: asyncio.Task[None] | None = None
        self.closing = False

    @property
    def bus(self) -> EventBus:
        return self._bus

    def submit(self, run_id: str) -> None:
        if self.closing or run_id in self._tasks:
            return
        self._tasks[run_id] = asyncio.create_task(self._advance(run_id), name=f"advance {run_id}")

    def busy(self, run_id: str) -> bool:
        return run_id in self._tasks

    async def _advance(self, run_id: str) -> None:
        try:
            async with self._slots:
                view = await self.runs.resume(run_id, on_event=self._bus.publish)
            log.info("run %s: %s%s", run_id, view.status, f" ({view.error})" if view.error else "")
        except TetherError as e:
            log.info("run %s not advanced here: %s", run_id, e)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("advancing run %s failed", run_id)
        finally:
            self._tasks.pop(run_id, None)
            self._bus.stopped(run_id)

    def start(self) -> None:
        self._recovery = asyncio.create_task(self._recover(), name="recover expired runs")

    async def _recover(self) -> None:
        """Advance runs whose owner died: at start (also those of a dead process of this machine,
        such as this server killed and started again), then now and then (expired leases)."""
        first = True
        while not self.closing:
            try:
                for run_id in await self.runs.orphaned_runs(dead_owners=first):
                    self.submit(run_id)
                first = False
            except Exception:
                log.exception("looking for runs to recover failed")
            await asyncio.sleep(self._recover_every_s)

    async def close(self, grace_s: float = 5.0) -> None:
        """Let runs in flight go on for `grace_s`, then interrupt them (their leases are released,
        so another process, or this one restarted, resumes them at once)."""
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
