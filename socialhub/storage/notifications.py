"""SQL for notifications."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from socialhub.domain.notifications import NewNotification, NotificationRecord
from socialhub.storage.database import Database
from socialhub.storage.users import summary_from_row

_COLUMNS = """n.id, n.user_id, n.type, n.post_id, n.comment_id, n.room_id, n.call_id, n.created_at,
              u.id AS actor_id, u.username, u.name, u.avatar_url"""


def _record(row: asyncpg.Record, read: bool) -> NotificationRecord:
    return NotificationRecord(
        id=row["id"],
        user_id=row["user_id"],
        type=row["type"],
        actor=summary_from_row(row, "actor_id"),
        post_id=row["post_id"],
        comment_id=row["comment_id"],
        room_id=row["room_id"],
        call_id=row["call_id"],
        created_at=row["created_at"],
        read=read,
    )


class NotificationStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def insert_notification(self, n: NewNotification, event_id: int | None) -> NotificationRecord | None:
        """Insert; None when this event already notified this user."""
        row = await self.db.fetchrow(
            f"""WITH n AS (
                    INSERT INTO notifications (user_id, type, actor_id, post_id, comment_id, room_id, call_id, event_id)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                    ON CONFLICT (event_id, user_id) DO NOTHING
                    RETURNING *)
                SELECT {_COLUMNS} FROM n JOIN users u ON u.id = n.actor_id""",
            n.user_id,
            n.type,
            n.actor_id,
            n.post_id,
            n.comment_id,
            n.room_id,
            n.call_id,
            event_id,
        )
        return _record(row, False) if row else None

    async def insert_notifications(self, news: Sequence[NewNotification]) -> list[NotificationRecord]:
        """Insert them all in one statement (none belongs to an event)."""
        if not news:
            return []
        rows = await self.db.fetch(
            f"""WITH n AS (
                    INSERT INTO notifications (user_id, type, actor_id, post_id, comment_id, room_id, call_id)
                    SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[],
                                         $6::bigint[], $7::bigint[])
                    RETURNING *)
                SELECT {_COLUMNS} FROM n JOIN users u ON u.id = n.actor_id""",
            [n.user_id for n in news],
            [n.type for n in news],
            [n.actor_id for n in news],
            [n.post_id for n in news],
            [n.comment_id for n in news],
            [n.room_id for n in news],
            [n.call_id for n in news],
        )
        return [_record(row, False) for row in rows]

    async def get_page_and_mark_read(self, user_id: int, before: int | None, limit: int) -> list[NotificationRecord]:
        """Newest first; the returned ones become read, each showing `read` as it was."""
        rows = await self.db.fetch(
            f"""WITH page AS (
                    SELECT * FROM notifications
                    WHERE user_id = $1 AND ($2::bigint IS NULL OR id < $2)
                    ORDER BY id DESC LIMIT $3),
                marked AS (
                    UPDATE notifications SET read_at = now()
                    WHERE id IN (SELECT id FROM page) AND read_at IS NULL)
                SELECT {_COLUMNS}, n.read_at IS NOT NULL AS was_read
                FROM page n JOIN users u ON u.id = n.actor_id ORDER BY n.id DESC""",
            user_id,
            before,
            limit,
        )
        return [_record(r, r["was_read"]) for r in rows]

    async def get_unread_count(self, user_id: int) -> int:
        count: int = await self.db.fetchval(
            "SELECT count(*) FROM notifications WHERE user_id = $1 AND read_at IS NULL", user_id
        )
        return count

    async def update_read(self, user_id: int, ids: list[int] | None) -> None:
        """Mark these (or, with None, all) of the user's notifications read."""
        await self.db.execute(
            """UPDATE notifications SET read_at = now()
               WHERE user_id = $1 AND read_at IS NULL AND ($2::bigint[] IS NULL OR id = ANY($2::bigint[]))""",
            user_id,
            ids,
        )
