"""The Postgres store pings a pooled connection only after it sat idle: a busy store pays no round trip
a statement for it, and a connection the server dropped meanwhile is still replaced unseen."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from pg import postgres, postgres_url  # noqa: F401  (fixtures)
from test_store import Run
from tether.adapters.store.sql import SqlStore
from tether.adapters.store.sql import database as database_module

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


async def test_a_pooled_connection_is_pinged_only_after_sitting_idle(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = request.getfixturevalue("postgres_url")
    store = SqlStore(url)
    try:
        dialect = store._db.engine.dialect
        pings: list[int] = []
        real_ping = dialect.do_ping

        def counted(dbapi_conn: Any) -> bool:
            pings.append(1)
            return real_ping(dbapi_conn)

        monkeypatch.setattr(dialect, "do_ping", counted)
        run = Run()
        await store.create_run(run.first, owner=None)
        for _ in range(5):
            assert await store.get_run(run.id) is not None
        assert pings == []  # busy: no ping

        # The server drops every other session; then the store's connections count as idle.
        with sa.create_engine(url).connect() as admin:
            admin.execute(sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ))  # fmt: skip
        monkeypatch.setattr(database_module, "PING_AFTER_IDLE_S", 0.0)
        info = await store.get_run(run.id)  # the dead connection is pinged, dropped and replaced
        assert info is not None and info.id == run.id
        assert pings
    finally:
        await store.close()


async def test_the_flushs_own_connection_dropped_while_idle_is_replaced_unseen(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = request.getfixturevalue("postgres_url")
    store = SqlStore(url)
    try:
        run = Run()
        await store.create_run(run.first, owner=None)
        store.append([run.model()])
        await store.sync()  # the flush has its connection now
        with sa.create_engine(url).connect() as admin:  # a server restart, or its idle timeout
            admin.execute(sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ))  # fmt: skip
        monkeypatch.setattr(database_module, "PING_AFTER_IDLE_S", 0.0)
        store.append([run.finish()])
        await store.sync()  # (was: StoreError "the connection is lost", and the run broken)
        assert [r.kind for r in await store.load(run.id)] == ["run_started", "model_call", "finished"]
    finally:
        await store.close()
