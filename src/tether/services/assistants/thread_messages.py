"""The messages of a thread: the ones clients wrote, and the answers its runs wrote, listed a page
at a time in SQL.

A run's answers live in its log (the source of truth). Once a run is finished they never change,
so its messages are *projected* into the objects table as message rows (their `run_id` says which
run wrote them), the first time a listing meets the finished run; a row per thread (kind
`projection`) remembers up to which run (runs of a thread are ordered by id, and one ends
before the next starts) every run is projected, so a listing finds the runs to project with one
query. The projection is idempotent and can be rebuilt from the logs: a client's metadata for a
run's message not projected yet is kept in a `message_override` row beside it (id
`MESSAGE_ID.change`) that the projection folds in, and a deleted run message leaves a tombstone at
its own id (a `message_override` row saying `deleted`), which no listing sees. The run still going
on (at most one per thread) is merged in memory. A page costs O(page).

Several processes project, change and delete at once (two servers on one database). The row at a
message's id is where they meet, and the projection never overwrites it: it writes only where no
row is (`insert_object`), or over the very row it read (`replace_object`), so a row someone else
wrote there meanwhile (a projection, a client's metadata, a tombstone) wins. Every interleaving of
"A projects message M" with "B changes M":

- B deletes M: B's tombstone replaces whatever is at M. Before it, A's write lands and is replaced;
  after it, A's write finds a row and is dropped. No later write of A's can remove a tombstone.
- B sets M's metadata, M projected (B read a message row at M): B replaces the row it read, so
  A's insert (after) is dropped, and A's row (before) is what B replaces; if a tombstone came in
  between, B's write is dropped and B answers 404.
- B sets M's metadata, M not projected yet (B read no message at M, as while the run was going on):
  B writes `M.change`, then reads M again; A inserts M, then reads `M.change` again. Each writes
  before it reads, so at least one of them sees the other: B finds the message and replaces it, or
  A finds the new metadata and replaces the row it inserted (only if no one changed it since).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from tether.domain.errors import NotFound
from tether.domain.objects import ObjectKind, StoredObject
from tether.domain.protocols import ObjectStore
from tether.services.assistants.documents import MessageChange
from tether.services.assistants.thread_runs import ThreadMessage, ThreadRun
from tether.services.pages import Cursor, Page, paged

PROJECTION: ObjectKind = "projection"  # the row that says through which run a thread's runs are projected
OVERRIDE: ObjectKind = "message_override"  # a change to a run's message not projected yet, or a deletion

LoadRun = Callable[[StoredObject], Awaitable[ThreadRun | None]]  # None: the run has no records (yet)


def _change_id(message_id: str) -> str:
    return f"{message_id}.change"


def _change_of(row: StoredObject | None) -> MessageChange | None:
    """The change an override row holds (rows of older versions are messages marked `override`,
    with the message's own id)."""
    if row is None or not (row.kind == OVERRIDE or (row.kind == "message" and row.data.get("override"))):
        return None
    return MessageChange.model_validate(row.data)


def _is_message(row: StoredObject | None) -> bool:
    return row is not None and row.kind == "message" and not row.data.get("override")


class ThreadMessages:
    def __init__(self, objects: ObjectStore, load_run: LoadRun) -> None:
        self.objects, self.load_run = objects, load_run

    # -- read ------------------------------------------------------------------------------------

    async def page(self, tenant: str, thread_id: str, cursor: Cursor, run_id: str | None = None
                   ) -> Page[ThreadMessage]:
        if run_id is not None:
            return paged(await self._of_run(tenant, thread_id, run_id), cursor, lambda m: m.id)
        live = await self.project(tenant, thread_id)
        rows = await self._rows(tenant, thread_id, cursor)
        return paged(_merged(rows, live), cursor, lambda m: m.id)

    async def all(self, tenant: str, thread_id: str) -> list[ThreadMessage]:
        """Every message of the thread, oldest first (what a new run of the thread starts from)."""
        live = await self.project(tenant, thread_id)
        rows = await self.objects.list_objects("message", tenant, thread_id)
        return _merged([ThreadMessage.of_row(r) for r in rows if _is_message(r)], live)

    async def get(self, tenant: str, thread_id: str, message_id: str) -> ThreadMessage:
        """One message, by its id (a run's answer not projected yet: after projecting its thread)."""
        for attempt in range(2):
            row = await self.objects.get_object(message_id)
            if row is not None and _is_message(row):
                if row.tenant != tenant or row.parent_id != thread_id:
                    break
                return ThreadMessage.of_row(row)
            if attempt == 0:
                live = await self.project(tenant, thread_id)
                found = next((m for m in live if m.id == message_id), None)
                if found is not None:
                    return found
        raise NotFound("message", message_id)

    async def _rows(self, tenant: str, thread_id: str, cursor: Cursor) -> list[ThreadMessage]:
        """The stored messages nearest to the cursor: one more than a page (so `has_more` is known)."""
        want = cursor.limit + 1
        while True:
            fetched = await self.objects.list_objects("message", tenant, thread_id, after=cursor.after,
                                                      before=cursor.before, limit=want, order=cursor.order)
            rows = [r for r in fetched if _is_message(r)]
            if len(rows) > cursor.limit or len(fetched) < want:
                return [ThreadMessage.of_row(r) for r in rows]
            want *= 2  # rows of an older version (changes marked `override`) took places: fetch more

    async def _of_run(self, tenant: str, thread_id: str, run_id: str) -> list[ThreadMessage]:
        """The messages one run wrote, with the changes made to them."""
        row = await self.objects.get_object(run_id)
        if row is None or row.kind != "run" or row.tenant != tenant or row.parent_id != thread_id:
            return []
        run = await self.load_run(row)
        return [] if run is None else await self._changed(run.thread_messages())

    async def _changed(self, messages: Sequence[ThreadMessage]) -> list[ThreadMessage]:
        """`messages` (derived from a log) as they are now: projected, changed or deleted."""
        out = []
        for m in messages:
            row = await self.objects.get_object(m.id)
            if _is_message(row):
                assert row is not None
                out.append(ThreadMessage.of_row(row))
                continue
            change = await self._change(m.id, row)
            if change is not None and change.deleted:
                continue
            if change is not None:
                m.fields.metadata = change.metadata
            out.append(m)
        return out

    async def _change(self, message_id: str, row: StoredObject | None) -> MessageChange | None:
        """The change made to a run's message (`row`: what is stored at its id, if anything): a
        tombstone there wins over metadata kept beside it."""
        at_id = _change_of(row)
        if at_id is not None and at_id.deleted:
            return at_id
        change = _change_of(await self.objects.get_object(_change_id(message_id)))
        return change if change is not None else at_id

    # -- project ---------------------------------------------------------------------------------

    async def project(self, tenant: str, thread_id: str) -> list[ThreadMessage]:
        """Project the thread's finished runs that are not yet; return the messages of the runs
        still going on (with their changes), which are not stored."""
        mark_id = f"{thread_id}.projected"
        mark = await self.objects.get_object(mark_id)
        through = mark.data.get("through") if mark is not None and mark.kind == PROJECTION else None
        rows = await self.objects.list_objects("run", tenant, thread_id, after=through)
        live: list[ThreadMessage] = []
        done = through
        contiguous = True  # every run up to this one is projected
        for row in rows:
            run = await self.load_run(row)
            if run is None or run.finished() is None:
                contiguous = False
                if run is not None:
                    live += await self._changed(run.thread_messages())
                continue
            await self._project_run(tenant, run)
            if contiguous:
                done = row.id
        if done != through:
            await self.objects.put_object(StoredObject(mark_id, PROJECTION, tenant, rows[0].created_at,
                                                       {"through": done}, thread_id))
        return live

    async def _project_run(self, tenant: str, run: ThreadRun) -> None:
        for m in run.thread_messages():
            row = await self.objects.get_object(m.id)
            if _is_message(row):
                continue  # projected already (and maybe changed since)
            change = await self._change(m.id, row)
            if change is not None and change.deleted:
                if row is not None and row.kind == "message":  # an older version's tombstone, listed as a
                    await self.objects.replace_object(_tombstone(tenant, m, change), row)  # message: unlisted
                continue
            if change is not None:
                m.fields.metadata = change.metadata
            written = m.row(tenant)
            # Only where no row is, or over an older version's change at its id if still as read.
            if await (self.objects.insert_object(written) if row is None
                      else self.objects.replace_object(written, row)):
                await self._fold_late_change(m.id, written)

    async def _fold_late_change(self, message_id: str, written: StoredObject) -> None:
        """Metadata a client kept beside the message after this projection read it (see the module
        docstring): put into the row just written, unless someone changed that row since."""
        change = _change_of(await self.objects.get_object(_change_id(message_id)))
        if change is None or change.deleted or change.metadata == written.data.get("metadata"):
            return
        await self.objects.replace_object(_with_metadata(written, change.metadata), written)

    # -- change ----------------------------------------------------------------------------------

    async def set_metadata(self, tenant: str, thread_id: str, message_id: str, metadata: dict[str, str]
                           ) -> ThreadMessage:
        m = await self.get(tenant, thread_id, message_id)
        m.fields.metadata = metadata
        kept_beside = False
        while True:
            row = await self.objects.get_object(m.id)
            if _is_message(row):
                assert row is not None
                changed = _with_metadata(row, metadata)
                if await self.objects.replace_object(changed, row):
                    return ThreadMessage.of_row(changed)
                continue  # changed since it was read (or deleted): read it again
            at_id = _change_of(row)
            if m.fields.run_id is None or (at_id is not None and at_id.deleted) or (row is not None and at_id is None):
                raise NotFound("message", message_id)  # deleted meanwhile
            if kept_beside:
                return m  # not projected yet: whoever projects it reads the change after writing it
            # An answer of a run not projected yet: kept beside its log until it is projected; then
            # read its id again, as a projection may have read the change before this write.
            await self.objects.put_object(_override(tenant, m, MessageChange(metadata=metadata)))
            kept_beside = True

    async def delete(self, tenant: str, thread_id: str, message_id: str) -> None:
        m = await self.get(tenant, thread_id, message_id)
        if m.fields.run_id is None:
            await self.objects.delete_object(m.id)
            return
        # A run's message: its log still has it, so a tombstone takes its place (unconditionally: a
        # deletion wins), which listings skip and which keeps any projection from writing it again.
        change = MessageChange(metadata=m.fields.metadata, deleted=True)
        await self.objects.put_object(_tombstone(tenant, m, change))


def _override(tenant: str, m: ThreadMessage, change: MessageChange) -> StoredObject:
    return StoredObject(_change_id(m.id), OVERRIDE, tenant, m.created_at, change.stored(), m.thread_id)


def _tombstone(tenant: str, m: ThreadMessage, change: MessageChange) -> StoredObject:
    return StoredObject(m.id, OVERRIDE, tenant, m.created_at, change.stored(), m.thread_id)


def _with_metadata(row: StoredObject, metadata: dict[str, str]) -> StoredObject:
    return StoredObject(row.id, row.kind, row.tenant, row.created_at, {**row.data, "metadata": metadata},
                        row.parent_id)


def _merged(rows: list[ThreadMessage], live: list[ThreadMessage]) -> list[ThreadMessage]:
    """Stored messages and those of the runs going on, oldest first (a stored one wins a tie)."""
    ids = {m.id for m in rows}
    return sorted([*rows, *(m for m in live if m.id not in ids)], key=lambda m: m.id)
