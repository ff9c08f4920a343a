"""The HTTP interface's documents (assistants, threads, messages, run settings) in the `objects` table.

Lists are pages by id (ids sort by creation time), cut in SQL: the index `objects_list` (tenant,
kind, parent_id, id) finds the first row of a page, so a page costs its own size, not the list's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from tether.adapters.store.paging import check_page
from tether.adapters.store.sql.database import Call, Database
from tether.adapters.store.sql.schema import object_values, objects_table, stored_object
from tether.domain.objects import StoredObject


class Objects:
    def __init__(self, db: Database, call: Call) -> None:
        self._db, self._call = db, call

    async def put_object(self, obj: StoredObject) -> None:
        """Insert the object, or replace the one with its id."""
        values = object_values(obj)
        t = objects_table

        def op(conn: sa.Connection) -> None:
            with self._db.tx(conn, write=True):
                if conn.execute(t.update().where(t.c.id == obj.id).values(**values)).rowcount != 1:
                    conn.execute(t.insert(), values)

        await self._call(op)

    async def insert_object(self, obj: StoredObject) -> bool:
        """Insert the object only if no row has its id: one statement, so that of two writers racing
        for an id exactly one wins (`INSERT ... ON CONFLICT DO NOTHING`, on SQLite and Postgres)."""
        t = objects_table
        sqlite_db = self._db.sqlite
        statement: sa.Executable
        if sqlite_db:
            statement = sqlite.insert(t).values(object_values(obj)).on_conflict_do_nothing(index_elements=["id"])
        else:  # psycopg counts no row for it (-1): the id it returns says that the row was written
            statement = (postgresql.insert(t).values(object_values(obj)).on_conflict_do_nothing(index_elements=["id"])
                         .returning(t.c.id))

        def op(conn: sa.Connection) -> bool:
            with self._db.tx(conn, write=True):
                result = conn.execute(statement)
                return result.rowcount == 1 if sqlite_db else result.first() is not None

        return await self._call(op)

    async def replace_object(self, obj: StoredObject, old: StoredObject) -> bool:
        """Replace `old` by `obj` only if its row still has `old`'s kind and data (compared as stored:
        the JSON text a row read back serialises to again)."""
        if obj.id != old.id:
            return False
        t = objects_table
        statement = (t.update().where(t.c.id == old.id, t.c.kind == old.kind, t.c.data == object_values(old)["data"])
                     .values(**object_values(obj)))

        def op(conn: sa.Connection) -> bool:
            with self._db.tx(conn, write=True):
                return conn.execute(statement).rowcount == 1

        return await self._call(op)

    async def get_object(self, object_id: str) -> StoredObject | None:
        def op(conn: sa.Connection) -> Any:
            with self._db.tx(conn, write=False):
                return conn.execute(sa.select(objects_table).where(objects_table.c.id == object_id)).first()

        row = await self._call(op)
        return None if row is None else stored_object(row)

    async def list_objects(
        self,
        kind: str,
        tenant: str,
        parent_id: str | None = None,
        *,
        after: str | None = None,
        before: str | None = None,
        limit: int | None = None,
        order: Literal["asc", "desc"] = "asc",
    ) -> list[StoredObject]:
        """A page of the objects of a kind (of one parent, if given), by id: see `ObjectStore`."""
        check_page(limit, order)
        t = objects_table
        query = sa.select(t).where(t.c.tenant == tenant, t.c.kind == kind)
        if parent_id is not None:
            query = query.where(t.c.parent_id == parent_id)
        forward = order == "asc"
        if after is not None:
            query = query.where(t.c.id > after if forward else t.c.id < after)
        if before is not None:
            query = query.where(t.c.id < before if forward else t.c.id > before)
        # With `before`, the page is the rows nearest to it: read away from it, then turn them round.
        backwards = before is not None
        query = query.order_by(t.c.id if forward != backwards else t.c.id.desc())
        if limit is not None:
            query = query.limit(limit)

        def op(conn: sa.Connection) -> list[Any]:
            with self._db.tx(conn, write=False):
                return list(conn.execute(query))

        rows = await self._call(op)
        if backwards:
            rows.reverse()
        return [stored_object(row) for row in rows]

    async def delete_object(self, object_id: str) -> bool:
        def op(conn: sa.Connection) -> bool:
            with self._db.tx(conn, write=True):
                return bool(conn.execute(objects_table.delete().where(objects_table.c.id == object_id)).rowcount)

        return await self._call(op)

    async def delete_children(self, parent_id: str, kinds: Sequence[str]) -> int:
        def op(conn: sa.Connection) -> int:
            with self._db.tx(conn, write=True):
                t = objects_table
                return int(conn.execute(t.delete().where(t.c.parent_id == parent_id, t.c.kind.in_(list(kinds))))
                           .rowcount)

        return await self._call(op)
