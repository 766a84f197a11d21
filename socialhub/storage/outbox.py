"""SQL for the outbox and its readers' positions.

A row holds the event's parts (topic, key, type, actor_id, data as JSON); read back, they
are put together into the SPEC's value and read as a typed event (`events.read_event`),
so a row this version cannot read (written by a newer one, or by hand) comes out as an
`Unreadable` for the dead-letter machinery instead of failing the reader.

A reader (infra/events/outbox.py) also holds a session of its own here: a connection
outside the pool that holds the reader's advisory lock and LISTENs for the insert
trigger's NOTIFY (`OutboxStore.reader_session`).
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import asyncpg
import msgspec

from socialhub.domain.delivery import OutboxEntry, Position
from socialhub.domain.events import Envelope, NewEvent, Unreadable, read_event
from socialhub.domain.time import rfc3339
from socialhub.storage.database import Database
from socialhub.storage.units import UnitOfWork

OUTBOX_CHANNEL = "socialhub_outbox"  # NOTIFY channel, see migrations/0002
LOCK_NAMESPACE = 0x5EED  # first key of pg_try_advisory_lock(int, int); the second is the name's CRC
CLOSE_TIMEOUT_SECONDS = 5.0  # closing a reader's connection; a dead server must not hold a shutdown


async def insert_event(uow: UnitOfWork, event: NewEvent) -> int:
    """Write `event` in the caller's unit of work; it is published only if that commits."""
    event_id: int = await uow.fetchval(
        "INSERT INTO outbox (topic, key, type, actor_id, data) VALUES ($1, $2, $3, $4, $5) RETURNING id",
        event.topic,
        event.key,
        event.type,
        event.actor_id,
        msgspec.to_builtins(event.data),
    )
    return event_id


def _envelope(row: asyncpg.Record) -> Envelope | Unreadable:
    value = {
        "id": str(row["id"]),
        "type": row["type"],
        "occurred_at": rfc3339(row["occurred_at"]),
        "actor_id": str(row["actor_id"]),
        "data": row["data"],
    }
    return read_event(row["topic"], row["key"], row["id"], value)


class ReaderConnection:
    """One reader's session (`OutboxStore.reader_session`): its own connection, on which
    the session-level advisory lock lives and dies, and the LISTEN."""

    def __init__(self, conn: asyncpg.Connection, name: str) -> None:
        self._conn = conn
        self._lock_key = zlib.crc32(name.encode()) & 0x7FFFFFFF

    async def try_lock(self) -> bool:
        return bool(await self._conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", LOCK_NAMESPACE, self._lock_key))

    async def listen(self, notify: Callable[[], None]) -> None:
        def notified(*args: object) -> None:
            notify()

        await self._conn.add_listener(OUTBOX_CHANNEL, notified)

    def is_closed(self) -> bool:
        return bool(self._conn.is_closed())


class OutboxStore:
    """The outbox table read in commit-safe order, and reader positions."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @asynccontextmanager
    async def reader_session(self, name: str) -> AsyncIterator[ReaderConnection]:
        """A connection of reader `name`'s own, closed on the way out (which lets go of its
        lock). Unavailable when the database cannot be reached."""
        conn = await self.db.connect_dedicated()
        try:
            yield ReaderConnection(conn, name)
        finally:
            if not conn.is_closed():
                await conn.close(timeout=CLOSE_TIMEOUT_SECONDS)

    async def get_position(self, name: str) -> Position:
        row = await self.db.fetchrow(
            """INSERT INTO outbox_positions (name) VALUES ($1)
               ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
               RETURNING xid::text::bigint AS xid, id""",
            name,
        )
        assert row is not None
        return Position(row["xid"], row["id"])

    async def get_batch(self, after: Position, limit: int) -> list[OutboxEntry]:
        """Events after `after` in (xid, id) order, only from transactions older than every
        transaction still running: nothing can later commit before them. A row that is
        not a valid event comes as `Unreadable`, in its place."""
        rows = await self.db.fetch(
            """SELECT id, xid::text::bigint AS xid, topic, key, type, actor_id, data, occurred_at
               FROM outbox
               WHERE (xid, id) > ($1::text::xid8, $2)
                 AND xid < pg_snapshot_xmin(pg_current_snapshot())
               ORDER BY xid, id
               LIMIT $3""",
            str(after.xid),
            after.id,
            limit,
        )
        return [OutboxEntry(Position(r["xid"], r["id"]), _envelope(r)) for r in rows]

    async def update_position(self, name: str, position: Position) -> None:
        await self.db.execute(
            "UPDATE outbox_positions SET xid = $2::text::xid8, id = $3, updated_at = now() WHERE name = $1",
            name,
            str(position.xid),
            position.id,
        )

    async def delete_consumed(self, keep_seconds: float) -> int:
        """Drop events every reader is past and that are older than `keep_seconds`."""
        result = await self.db.execute(
            """DELETE FROM outbox o
               WHERE o.occurred_at < now() - make_interval(secs => $1)
                 AND NOT EXISTS (SELECT 1 FROM outbox_positions p WHERE (p.xid, p.id) < (o.xid, o.id))""",
            keep_seconds,
        )
        return int(result.split()[-1])

    async def get_lags(self, names: list[str]) -> dict[str, float]:
        """Per reader: seconds since the oldest event it has not handled yet occurred (0
        when it is up to date). A reader that never ran counts from the first event."""
        rows = await self.db.fetch(
            """SELECT n.name, COALESCE(EXTRACT(EPOCH FROM now() - o.occurred_at), 0)::float8 AS lag
               FROM unnest($1::text[]) AS n (name)
               LEFT JOIN outbox_positions p ON p.name = n.name
               LEFT JOIN LATERAL (
                   SELECT occurred_at FROM outbox
                   WHERE (xid, id) > (COALESCE(p.xid, '0'::xid8), COALESCE(p.id, 0))
                   ORDER BY xid, id LIMIT 1) o ON true""",
            names,
        )
        return {r["name"]: max(0.0, r["lag"]) for r in rows}
