"""Following a run (services/events.py): each record once and in order, from the log and the bus,
and every poll of the log reads only the records it has not seen (O(new), not O(history))."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from tether.adapters.store.memory import MemoryStore
from tether.domain.agents import AgentSnapshot
from tether.domain.events import Event
from tether.domain.messages import Message
from tether.domain.models import ModelResponse
from tether.domain.records import ModelCalled, Record, RunStarted
from tether.services.compose import services_for
from tether.services.dispatch import Dispatcher, InProcessDispatcher
from tether.services.events import EventBus, Quiet, RunEvents, Subscription
from tether.services.runs import RunsService


class CountingStore(MemoryStore):
    """A memory store that counts the records its `load` hands out."""

    def __init__(self) -> None:
        super().__init__()
        self.rows_read = 0

    async def load(self, run_id: str, after: int = 0) -> list[Record]:
        records = await super().load(run_id, after)
        self.rows_read += len(records)
        return records


def model_call(run_id: str, seq: int) -> Record:
    return Record(run_id, seq, time.time(), ModelCalled(seq, "fp", ModelResponse(f"text {seq}")))


async def a_run(store: MemoryStore, records: int) -> str:
    run_id = "run_follow"
    first = Record(run_id, 1, time.time(), RunStarted(AgentSnapshot("a", "scripted:x"), [Message.user("hi")]))
    await store.create_run(first, owner=None)
    store.append([model_call(run_id, seq) for seq in range(2, records + 1)])
    return run_id


async def take(events: AsyncIterator[Event | Quiet], n: int) -> list[Event | Quiet]:
    return [await anext(events) for _ in range(n)]


def seqs(items: list[Event | Quiet]) -> list[int | None]:
    return [i.record.seq if isinstance(i, Event) and i.record else None for i in items]


def test_a_poll_reads_only_the_records_it_has_not_seen() -> None:
    async def go() -> None:
        store = CountingStore()
        run_id = await a_run(store, 2000)
        sub = RunEvents(RunsService(store), EventBus()).subscribe(run_id, after=0)
        events = sub.events(keepalive_s=60, poll_s=0.001)
        assert seqs(await take(events, 2000)) == list(range(1, 2001))  # the backlog, once
        store.rows_read = 0
        for new in (1, 10, 0, 3):
            store.append([model_call(run_id, sub.seen + i + 1) for i in range(new)])
            before = sub.seen
            got = await take(events, new) if new else []
            assert seqs(got) == list(range(before + 1, before + new + 1))
            assert store.rows_read == new, f"{new} new records, {store.rows_read} read"
            store.rows_read = 0
        await asyncio.sleep(0.02)  # polls with nothing new read nothing
        assert store.rows_read == 0
        sub.close()

    asyncio.run(go())


def test_live_events_come_in_order_once_with_a_gap_filled_from_the_log() -> None:
    async def go() -> None:
        store = MemoryStore()
        run_id = await a_run(store, 1)
        bus = EventBus()
        async with RunEvents(RunsService(store), bus).subscribe(run_id, after=1) as sub:
            events = sub.events(keepalive_s=60, poll_s=30, backlog=False)
            store.append([model_call(run_id, 2), model_call(run_id, 3)])  # 2: written with no bus event
            bus.publish(Event(run_id, "delta", delta="hel"))
            bus.publish(Event(run_id, "record", model_call(run_id, 3)))
            bus.publish(Event(run_id, "record", model_call(run_id, 3)))  # again: dropped
            bus.publish(Event(run_id, "record", model_call(run_id, 1)))  # before `after`: dropped
            store.append([model_call(run_id, 4)])
            bus.publish(Event(run_id, "record", model_call(run_id, 4)))
            got = await take(events, 4)
            first = got[0]
            assert isinstance(first, Event) and (first.type, first.delta) == ("delta", "hel")
            assert seqs(got)[1:] == [2, 3, 4]
            assert sub.seen == 4
        assert not bus._subscribers  # closed: unsubscribed

    asyncio.run(go())


def test_a_quiet_run_gives_a_keep_alive_and_its_stop_a_poll_of_the_log() -> None:
    async def go() -> None:
        store = MemoryStore()
        run_id = await a_run(store, 2)
        bus = EventBus()
        sub = RunEvents(RunsService(store), bus).subscribe(run_id, after=2)
        events = sub.events(keepalive_s=0.02, poll_s=0.01, backlog=False)
        assert isinstance(await anext(events), Quiet)
        store.append([model_call(run_id, 3)])  # written by another process: no bus event
        bus.stopped(run_id)  # ... or this process stopped advancing it: read the log at once
        assert seqs(await take(events, 1)) == [3]
        sub.close()

    asyncio.run(go())


def test_without_a_backlog_only_what_comes_after_is_given() -> None:
    async def go() -> None:
        store = MemoryStore()
        run_id = await a_run(store, 5)
        bus = EventBus()
        sub = Subscription(RunsService(store), bus, run_id, after=3)
        events = sub.events(keepalive_s=60, poll_s=30, backlog=False)
        store.append([model_call(run_id, 6)])
        bus.publish(Event(run_id, "record", model_call(run_id, 6)))
        assert seqs(await take(events, 3)) == [4, 5, 6]  # the gap before 6, from the log
        sub.close()

    asyncio.run(go())


def test_the_in_process_dispatcher_is_a_dispatcher_reached_through_the_services() -> None:
    async def go() -> None:
        services = services_for(RunsService(MemoryStore()), concurrency=2)
        dispatcher: Dispatcher = services.dispatcher
        assert isinstance(dispatcher, InProcessDispatcher)
        assert services.events.bus is dispatcher.bus  # subscriptions see what the dispatcher advances
        assert "api" in services.runs.resolvers  # runs a server made can be rebuilt from any face
        dispatcher.submit("run_unknown")  # a run it cannot advance: logged, never raised
        assert dispatcher.busy("run_unknown")
        await services.close()
        assert not dispatcher.busy("run_unknown")

    asyncio.run(go())


@pytest.mark.parametrize("after", [0, 2])
def test_a_subscription_of_a_finished_run_gives_its_records_after_a_seq(after: int) -> None:
    async def go() -> list[int | None]:
        store = MemoryStore()
        run_id = await a_run(store, 4)
        sub = RunEvents(RunsService(store), EventBus()).subscribe(run_id, after=after)
        got = await take(sub.events(keepalive_s=60, poll_s=30), 4 - after)
        sub.close()
        return seqs(got)

    assert asyncio.run(go()) == list(range(after + 1, 5))
