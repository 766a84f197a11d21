"""SQL for rooms, members and messages."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg
import msgspec

from socialhub.domain.chat import MessageRecord, RoomRecord
from socialhub.domain.users import UserSummary
from socialhub.errors import NotFound
from socialhub.storage.database import Database
from socialhub.storage.users import summary_from_row

_MESSAGE_COLUMNS = """m.id, m.room_id, m.seq, m.body, m.client_msg_id, m.created_at,
                      u.id AS sender_id, u.username, u.name, u.avatar_url"""

# Rooms with members, the caller's read position and the last message, in one query.
_ROOM_SELECT = """
    SELECT r.id, r.kind, r.name, r.created_at, r.last_seq, r.last_activity_at, me.last_read_seq,
           (SELECT jsonb_agg(jsonb_build_object('id', u.id::text, 'username', u.username, 'name', u.name,
                                                'avatar_url', u.avatar_url) ORDER BY rm.joined_at, u.id)
            FROM room_members rm JOIN users u ON u.id = rm.user_id WHERE rm.room_id = r.id) AS members,
           (SELECT jsonb_build_object('id', m.id, 'seq', m.seq, 'body', m.body, 'client_msg_id', m.client_msg_id,
                                      'created_at', m.created_at, 'sender_id', su.id, 'username', su.username,
                                      'name', su.name, 'avatar_url', su.avatar_url)
            FROM messages m JOIN users su ON su.id = m.sender_id
            WHERE m.room_id = r.id AND m.seq = r.last_seq) AS last_message
    FROM rooms r JOIN room_members me ON me.room_id = r.id AND me.user_id = $1
"""


class InsertedRoom(msgspec.Struct, frozen=True):
    id: int
    created: bool
    """False for the direct room the pair already had."""


class InsertedMessage(msgspec.Struct, frozen=True):
    message: MessageRecord
    created: bool
    """False for a resend: `message` is the first one with its client_msg_id."""


def message_from_row(row: asyncpg.Record) -> MessageRecord:
    return MessageRecord(
        id=row["id"],
        room_id=row["room_id"],
        seq=row["seq"],
        sender=summary_from_row(row, "sender_id"),
        body=row["body"],
        client_msg_id=row["client_msg_id"],
        created_at=row["created_at"],
    )


def _room(row: asyncpg.Record) -> RoomRecord:
    last = row["last_message"]
    last_message = None
    if last is not None:
        last_message = MessageRecord(
            id=int(last["id"]),
            room_id=row["id"],
            seq=int(last["seq"]),
            sender=summary_from_row(last, "sender_id"),
            body=last["body"],
            client_msg_id=last["client_msg_id"],
            created_at=datetime.fromisoformat(last["created_at"]),
        )
    return RoomRecord(
        id=row["id"],
        kind=row["kind"],
        name=row["name"],
        members=[UserSummary(**m) for m in (row["members"] or [])],
        created_at=row["created_at"],
        last_seq=row["last_seq"],
        last_read_seq=row["last_read_seq"],
        last_message=last_message,
    )


class ChatStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def insert_room(
        self, *, kind: str, name: str | None, creator: int, members: Sequence[int], direct_key: str | None
    ) -> InsertedRoom:
        """The room and its members, in one transaction; a direct room that exists for the
        pair is returned instead."""
        async with self.db.transaction() as conn:
            room_id = await conn.fetchval(
                """INSERT INTO rooms (kind, name, direct_key, created_by) VALUES ($1, $2, $3, $4)
                   ON CONFLICT (direct_key) DO NOTHING RETURNING id""",
                kind,
                name,
                direct_key,
                creator,
            )
            if room_id is None:
                existing: int = await conn.fetchval("SELECT id FROM rooms WHERE direct_key = $1", direct_key)
                return InsertedRoom(existing, False)
            try:
                await conn.executemany(
                    "INSERT INTO room_members (room_id, user_id) VALUES ($1, $2)", [(room_id, m) for m in members]
                )
            except asyncpg.ForeignKeyViolationError:
                raise NotFound("no such user among the members") from None
            return InsertedRoom(room_id, True)

    async def get_room(self, room_id: int, viewer_id: int) -> RoomRecord | None:
        row = await self.db.fetchrow(_ROOM_SELECT + " WHERE r.id = $2", viewer_id, room_id)
        return _room(row) if row else None

    async def get_rooms(self, viewer_id: int, before: int | None, limit: int) -> list[RoomRecord]:
        """The viewer's rooms, most recent activity first, from the one after room `before`
        (none when that room is gone)."""
        rows = await self.db.fetch(
            _ROOM_SELECT
            + """ WHERE ($2::bigint IS NULL
                         OR (r.last_activity_at, r.id) < ((SELECT b.last_activity_at FROM rooms b WHERE b.id = $2), $2))
                  ORDER BY r.last_activity_at DESC, r.id DESC LIMIT $3""",
            viewer_id,
            before,
            limit,
        )
        return [_room(r) for r in rows]

    async def get_activity(self, room_id: int) -> float | None:
        value = await self.db.fetchval("SELECT extract(epoch FROM last_activity_at) FROM rooms WHERE id = $1", room_id)
        return float(value) if value is not None else None

    async def get_is_member(self, room_id: int, user_id: int) -> bool:
        return bool(
            await self.db.fetchval(
                "SELECT EXISTS (SELECT 1 FROM room_members WHERE room_id = $1 AND user_id = $2)", room_id, user_id
            )
        )

    async def get_member_ids(self, room_id: int) -> list[int]:
        rows = await self.db.fetch("SELECT user_id FROM room_members WHERE room_id = $1", room_id)
        return [r["user_id"] for r in rows]

    async def insert_message(
        self, room_id: int, sender_id: int, body: str, client_msg_id: str
    ) -> InsertedMessage | None:
        """None when the sender is not a member.

        One autocommit statement: `socialhub_send_message` (migrations/0006) locks the
        room row, so sends in one room are serialised and seq has no gap, and a resend
        with the same client_msg_id finds the first one.
        """
        row = await self.db.fetchrow(
            "SELECT * FROM socialhub_send_message($1, $2, $3, $4)", room_id, sender_id, body, client_msg_id
        )
        if row is None:
            return None
        return InsertedMessage(message_from_row(row), bool(row["created"]))

    async def get_messages_after(self, room_id: int, after_seq: int, limit: int) -> list[MessageRecord]:
        """Messages with seq > after_seq, oldest first (replay)."""
        rows = await self.db.fetch(
            f"""SELECT {_MESSAGE_COLUMNS} FROM messages m JOIN users u ON u.id = m.sender_id
                WHERE m.room_id = $1 AND m.seq > $2 ORDER BY m.seq LIMIT $3""",
            room_id,
            after_seq,
            limit,
        )
        return [message_from_row(r) for r in rows]

    async def get_history(self, room_id: int, before: int | None, limit: int) -> list[MessageRecord]:
        """Newest first, below message id `before`."""
        rows = await self.db.fetch(
            f"""SELECT {_MESSAGE_COLUMNS} FROM messages m JOIN users u ON u.id = m.sender_id
                WHERE m.room_id = $1 AND ($2::bigint IS NULL OR m.id < $2) ORDER BY m.id DESC LIMIT $3""",
            room_id,
            before,
            limit,
        )
        return [message_from_row(r) for r in rows]

    async def get_last_seq(self, room_id: int) -> int:
        value: int | None = await self.db.fetchval("SELECT last_seq FROM rooms WHERE id = $1", room_id)
        return value or 0

    async def update_read(self, room_id: int, user_id: int, seq: int) -> int | None:
        """Move the member's read position forward (never back, never past the end);
        the new position, or None for a non-member. A member who has now read the room to
        its end has read its `message` notifications too (the badge drops with the room's
        unread count, as in Slack); one who read part of it keeps them."""
        value: int | None = await self.db.fetchval(
            """WITH moved AS (
                   UPDATE room_members rm SET last_read_seq = greatest(rm.last_read_seq, least($3, r.last_seq))
                   FROM rooms r WHERE r.id = rm.room_id AND rm.room_id = $1 AND rm.user_id = $2
                   RETURNING rm.last_read_seq, r.last_seq
               ), seen AS (
                   UPDATE notifications n SET read_at = now()
                   WHERE n.user_id = $2 AND n.room_id = $1 AND n.type = 'message' AND n.read_at IS NULL
                     AND EXISTS (SELECT 1 FROM moved WHERE moved.last_read_seq >= moved.last_seq)
               )
               SELECT last_read_seq FROM moved""",
            room_id,
            user_id,
            seq,
        )
        return value
