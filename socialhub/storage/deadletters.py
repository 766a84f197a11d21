"""SQL for dead letters: events a consumer gave up on (migrations/0007).

The readers insert them and replay those the CLI marked for retry; the CLI lists them
and marks them; the metrics sampler counts those waiting.

The event is stored as it was sent (the SPEC's JSON value), whether this version could
read it or not, and read again as a typed event when it is listed or replayed: one this
version could not read (an `Unreadable`) may well be readable by the next.
"""

from __future__ import annotations

import datetime

import asyncpg
import msgspec

from socialhub.domain.delivery import DeadLetter
from socialhub.domain.events import Envelope, Unreadable, read_event
from socialhub.storage.database import Database

# A reader that claimed a retry and died before it finished leaves the row "replaying";
# after this long another reader may claim it. Far above one replay's retries (a few
# backoffs of seconds each), so a live reader is never raced.
CLAIM_TIMEOUT_SECONDS = 600.0


_COLUMNS = "id, consumer, event_id, topic, key, event, error, attempts, first_failed_at, dead_at, status, status_at"


def _dead_letter(row: asyncpg.Record) -> DeadLetter:
    return DeadLetter(
        id=row["id"],
        consumer=row["consumer"],
        envelope=read_event(row["topic"], row["key"], row["event_id"], row["event"]),
        error=row["error"],
        attempts=row["attempts"],
        first_failed_at=row["first_failed_at"],
        dead_at=row["dead_at"],
        status=row["status"],
        status_at=row["status_at"],
    )


def _as_sent(envelope: Envelope | Unreadable) -> object:
    """The event's JSON value, for the jsonb column."""
    if isinstance(envelope, Unreadable):
        return msgspec.json.decode(envelope.value)
    return msgspec.to_builtins(envelope.event)


class DeadLetterStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def insert_dead_letter(
        self,
        consumer: str,
        envelope: Envelope | Unreadable,
        error: str,
        attempts: int,
        first_failed_at: datetime.datetime,
    ) -> int:
        """Store (or, for an event already there, update) a dead letter; its id."""
        dead_id: int = await self.db.fetchval(
            """INSERT INTO dead_letters (consumer, event_id, topic, key, event, error, attempts, first_failed_at)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                ON CONFLICT (consumer, event_id) DO UPDATE
                SET error = EXCLUDED.error, attempts = dead_letters.attempts + EXCLUDED.attempts,
                    dead_at = now(), status = 'dead', status_at = now()
                RETURNING id""",
            consumer,
            envelope.event_id,
            envelope.topic,
            envelope.key,
            _as_sent(envelope),
            error,
            attempts,
            first_failed_at,
        )
        return dead_id

    async def get_dead_letters(self, *, include_replayed: bool = False) -> list[DeadLetter]:
        """Oldest first."""
        rows = await self.db.fetch(
            f"SELECT {_COLUMNS} FROM dead_letters WHERE $1 OR status <> 'replayed' ORDER BY id", include_replayed
        )
        return [_dead_letter(r) for r in rows]

    async def get_by_ids(self, ids: list[int]) -> list[DeadLetter]:
        rows = await self.db.fetch(f"SELECT {_COLUMNS} FROM dead_letters WHERE id = ANY($1::bigint[]) ORDER BY id", ids)
        return [_dead_letter(r) for r in rows]

    async def update_retry_requested(self, ids: list[int] | None) -> list[DeadLetter]:
        """Mark dead letters for replay (all waiting ones when `ids` is None); those marked.

        A row already being replayed, or replayed, is left as it is."""
        rows = await self.db.fetch(
            f"""UPDATE dead_letters SET status = 'retry', status_at = now()
                WHERE status IN ('dead', 'retry') AND ($1::bigint[] IS NULL OR id = ANY($1::bigint[]))
                RETURNING {_COLUMNS}""",
            ids,
        )
        return sorted((_dead_letter(r) for r in rows), key=lambda d: d.id)

    async def update_claimed_retries(self, consumer: str, limit: int) -> list[DeadLetter]:
        """Take up to `limit` of `consumer`'s retry requests for this reader (one reader
        each, across instances), oldest first."""
        rows = await self.db.fetch(
            f"""UPDATE dead_letters SET status = 'replaying', status_at = now()
                WHERE id IN (
                    SELECT id FROM dead_letters
                    WHERE consumer = $1 AND (status = 'retry' OR (status = 'replaying'
                          AND status_at < now() - make_interval(secs => $3)))
                    ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)
                RETURNING {_COLUMNS}""",
            consumer,
            limit,
            CLAIM_TIMEOUT_SECONDS,
        )
        return sorted((_dead_letter(r) for r in rows), key=lambda d: d.id)

    async def update_replayed(self, dead_id: int) -> None:
        await self.db.execute(
            "UPDATE dead_letters SET status = 'replayed', status_at = now() WHERE id = $1 AND status = 'replaying'",
            dead_id,
        )

    async def update_failed_again(self, dead_id: int, error: str, attempts: int) -> None:
        await self.db.execute(
            """UPDATE dead_letters SET status = 'dead', status_at = now(), dead_at = now(), error = $2,
                      attempts = attempts + $3
               WHERE id = $1 AND status = 'replaying'""",
            dead_id,
            error,
            attempts,
        )

    async def update_released(self, dead_id: int) -> None:
        """Give a claimed retry back (the consumer's dependencies are down): asked for again later."""
        await self.db.execute(
            "UPDATE dead_letters SET status = 'retry', status_at = now() WHERE id = $1 AND status = 'replaying'",
            dead_id,
        )

    async def get_waiting_counts(self) -> dict[str, int]:
        """Dead letters not replayed yet, per consumer."""
        rows = await self.db.fetch(
            "SELECT consumer, count(*) AS n FROM dead_letters WHERE status <> 'replayed' GROUP BY consumer"
        )
        return {r["consumer"]: r["n"] for r in rows}

    async def delete_replayed(self, keep_seconds: float) -> int:
        """Drop replayed dead letters older than `keep_seconds` (kept that long for audits)."""
        result = await self.db.execute(
            "DELETE FROM dead_letters WHERE status = 'replayed' AND status_at < now() - make_interval(secs => $1)",
            keep_seconds,
        )
        return int(result.split()[-1])
