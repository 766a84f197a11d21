"""SQL for the outbox and its readers' positions.

A row holds the event's parts (topic, key, type, actor_id, data as JSON); read back, they
are put together into the SPEC's value and read as a typed event (`events.read_event`),
so a row this version cannot read (written by a newer one, or by hand) comes out as an
`Unreadable` for the dead-letter machinery instead of failing the reader.
"""

from __future__ import annotations

import asyncpg
import msgspec

from socialhub.domain.events import Envelope, NewEvent, Unreadable, read_event
from socialhub.domain.time import rfc3339
from socialhub.storage.database import Database
from socialhub.storage.units import UnitOfWork

OUTBOX_CHANNEL = "socialhub_outbox"  # NOTIFY channel, see migrations/0002


class Position(msgspec.Struct, frozen=True, order=True):
    """Where a reader is: the last event it has handled. Ordered as the outbox is read,
    by transaction id, then event id."""

    xid: int
    id: int


class OutboxEntry(msgspec.Struct, frozen=True):
    position: Position
    envelope: Envelope | Unreadable


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


class OutboxStore:
    """The outbox table read in commit-safe order, and reader positions."""

    def __init__(self, db: Database) -> None:
        self.db = db

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
