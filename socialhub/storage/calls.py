"""SQL for calls and their parties."""

from __future__ import annotations

import asyncpg

from socialhub.domain.calls import ACTIVE, ENDED, RINGING, CallRecord
from socialhub.storage.database import Database
from socialhub.storage.users import summary_from_row

_SELECT = """
    SELECT c.id, c.room_id, c.media, c.state, c.end_reason, c.caller_socket_id, c.callee_socket_id,
           c.started_at, c.answered_at, c.ended_at,
           a.id AS caller_id, a.username AS caller_username, a.name AS caller_name, a.avatar_url AS caller_avatar_url,
           b.id AS callee_id, b.username AS callee_username, b.name AS callee_name, b.avatar_url AS callee_avatar_url
    FROM calls c JOIN users a ON a.id = c.caller_id JOIN users b ON b.id = c.callee_id
"""


def _call(row: asyncpg.Record) -> CallRecord:
    return CallRecord(
        id=row["id"],
        room_id=row["room_id"],
        caller=summary_from_row(row, "caller_id", "caller_"),
        callee=summary_from_row(row, "callee_id", "callee_"),
        media=row["media"],
        state=row["state"],
        end_reason=row["end_reason"],
        caller_socket_id=row["caller_socket_id"],
        callee_socket_id=row["callee_socket_id"],
        started_at=row["started_at"],
        answered_at=row["answered_at"],
        ended_at=row["ended_at"],
    )


class CallStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get_call(self, call_id: int) -> CallRecord | None:
        row = await self.db.fetchrow(_SELECT + " WHERE c.id = $1", call_id)
        return _call(row) if row else None

    async def insert_call(
        self, *, caller_id: int, callee_id: int, media: str, caller_socket_id: int, ring_seconds: float
    ) -> CallRecord:
        """A ringing call, with both parties marked busy; when either is already in a
        call, the call is stored as ended with reason busy."""
        async with self.db.transaction() as conn:
            call_id = await conn.fetchval(
                """INSERT INTO calls (caller_id, callee_id, media, state, caller_socket_id, ring_deadline)
                   VALUES ($1, $2, $3, 'ringing', $4, now() + make_interval(secs => $5)) RETURNING id""",
                caller_id,
                callee_id,
                media,
                caller_socket_id,
                ring_seconds,
            )
            taken = await conn.fetchval(
                """WITH p AS (INSERT INTO call_parties (user_id, call_id) VALUES ($1, $3), ($2, $3)
                              ON CONFLICT (user_id) DO NOTHING RETURNING 1)
                   SELECT count(*) FROM p""",
                caller_id,
                callee_id,
                call_id,
            )
            if taken != 2:
                await conn.execute("DELETE FROM call_parties WHERE call_id = $1", call_id)
                await conn.execute(
                    "UPDATE calls SET state = 'ended', end_reason = 'busy', ended_at = now() WHERE id = $1", call_id
                )
        call = await self.get_call(call_id)
        assert call is not None
        return call

    async def update_answered(self, call_id: int, callee_id: int, socket_id: int) -> CallRecord | None:
        """Ringing -> active, by the callee; the first device to answer wins."""
        row = await self.db.fetchrow(
            """UPDATE calls SET state = 'active', answered_at = now(), callee_socket_id = $3
               WHERE id = $1 AND callee_id = $2 AND state = 'ringing' RETURNING id""",
            call_id,
            callee_id,
            socket_id,
        )
        return await self.get_call(call_id) if row else None

    async def update_ended(
        self, call_id: int, reason: str, *, states: tuple[str, ...] = (RINGING, ACTIVE)
    ) -> CallRecord | None:
        """End a live call (once: a second ender gets None) and free its parties."""
        async with self.db.transaction() as conn:
            ended = await conn.fetchval(
                """UPDATE calls SET state = 'ended', end_reason = $2, ended_at = now()
                   WHERE id = $1 AND state = ANY($3::text[]) RETURNING id""",
                call_id,
                reason,
                list(states),
            )
            if ended is None:
                return None
            await conn.execute("DELETE FROM call_parties WHERE call_id = $1", call_id)
        return await self.get_call(call_id)

    async def get_overdue_rings(self, limit: int = 100) -> list[int]:
        rows = await self.db.fetch(
            "SELECT id FROM calls WHERE state = 'ringing' AND ring_deadline <= now() ORDER BY ring_deadline LIMIT $1",
            limit,
        )
        return [r["id"] for r in rows]

    async def get_live_calls(self, limit: int = 1000) -> list[CallRecord]:
        rows = await self.db.fetch(_SELECT + " WHERE c.state <> $1 ORDER BY c.id LIMIT $2", ENDED, limit)
        return [_call(r) for r in rows]

    async def get_history(self, user_id: int, before: int | None, limit: int) -> list[CallRecord]:
        rows = await self.db.fetch(
            _SELECT
            + """ WHERE (c.caller_id = $1 OR c.callee_id = $1) AND ($2::bigint IS NULL OR c.id < $2)
                  ORDER BY c.id DESC LIMIT $3""",
            user_id,
            before,
            limit,
        )
        return [_call(r) for r in rows]
