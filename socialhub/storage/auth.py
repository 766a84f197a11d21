"""SQL for sessions, refresh tokens and password resets."""

from __future__ import annotations

import enum
from datetime import datetime

import asyncpg
import msgspec

from socialhub.domain.users import PasswordReset, SessionRecord
from socialhub.storage.database import Database
from socialhub.storage.units import UnitOfWork


class RefreshOutcome(enum.Enum):
    ROTATED = "rotated"
    REPLAYED = "replayed"  # a spent token came back: the session is now revoked
    INVALID = "invalid"  # unknown, expired, or its session is revoked or expired


class Rotation(msgspec.Struct, frozen=True):
    outcome: RefreshOutcome
    session: SessionRecord | None
    """The token's session, when the token was found."""


def _session(row: asyncpg.Record) -> SessionRecord:
    return SessionRecord(
        id=row["id"], user_id=row["user_id"], expires_at=row["expires_at"], revoked_at=row["revoked_at"]
    )


class AuthStore:
    """sessions, refresh_tokens and password_resets tables."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def insert_session(
        self,
        *,
        user_id: int,
        refresh_hash: bytes,
        expires_at: datetime,
        user_agent: str,
        ip: str,
    ) -> int:
        """A new session with its first refresh token; returns the session id."""
        session_id: int = await self.db.fetchval(
            """WITH s AS (
                   INSERT INTO sessions (user_id, expires_at, user_agent, ip) VALUES ($1, $2, $3, $4)
                   RETURNING id, expires_at)
               INSERT INTO refresh_tokens (token_hash, session_id, expires_at)
               SELECT $5, s.id, s.expires_at FROM s RETURNING session_id""",
            user_id,
            expires_at,
            user_agent[:400],
            ip[:64],
            refresh_hash,
        )
        return session_id

    async def get_session(self, session_id: int) -> SessionRecord | None:
        row = await self.db.fetchrow(
            "SELECT id, user_id, expires_at, revoked_at FROM sessions WHERE id = $1", session_id
        )
        return _session(row) if row else None

    async def update_refresh_token(self, old_hash: bytes, new_hash: bytes, expires_at: datetime) -> Rotation:
        """Spend `old_hash` and issue `new_hash` in one transaction.

        A token already spent is a replay: whoever holds it may be a thief, so the
        whole session is revoked (OAuth 2.0 Security BCP, refresh token rotation).
        """
        async with self.db.transaction() as conn:
            row = await conn.fetchrow(
                """SELECT t.used_at, t.expires_at AS token_expires_at,
                          s.id, s.user_id, s.expires_at, s.revoked_at, now() AS now
                   FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id
                   WHERE t.token_hash = $1 FOR UPDATE OF t, s""",
                old_hash,
            )
            if row is None:
                return Rotation(RefreshOutcome.INVALID, None)
            session = _session(row)
            now = row["now"]  # the transaction's time, as now() in the statements below
            if session.revoked_at is not None or session.expires_at <= now:
                return Rotation(RefreshOutcome.INVALID, session)
            if row["used_at"] is not None:
                await conn.execute(
                    "UPDATE sessions SET revoked_at = now(), revoke_reason = 'refresh_replay' WHERE id = $1",
                    session.id,
                )
                return Rotation(RefreshOutcome.REPLAYED, session)
            if row["token_expires_at"] <= now:
                return Rotation(RefreshOutcome.INVALID, session)
            await conn.execute("UPDATE refresh_tokens SET used_at = now() WHERE token_hash = $1", old_hash)
            await conn.execute(
                "INSERT INTO refresh_tokens (token_hash, session_id, expires_at) VALUES ($1, $2, $3)",
                new_hash,
                session.id,
                expires_at,
            )
            # Sliding expiry: an active device stays signed in.
            await conn.execute(
                "UPDATE sessions SET expires_at = $2, last_used_at = now() WHERE id = $1", session.id, expires_at
            )
            return Rotation(RefreshOutcome.ROTATED, session)

    async def update_session_revoked(self, session_id: int, reason: str) -> bool:
        """Whether it was live until now."""
        result = await self.db.execute(
            "UPDATE sessions SET revoked_at = now(), revoke_reason = $2 WHERE id = $1 AND revoked_at IS NULL",
            session_id,
            reason,
        )
        return result.endswith(" 1")

    async def update_user_sessions_revoked(self, uow: UnitOfWork, user_id: int, reason: str) -> list[int]:
        """The ids of the sessions this ended."""
        rows = await uow.fetch(
            """UPDATE sessions SET revoked_at = now(), revoke_reason = $2
               WHERE user_id = $1 AND revoked_at IS NULL RETURNING id""",
            user_id,
            reason,
        )
        return [r["id"] for r in rows]

    async def upsert_password_reset(self, uow: UnitOfWork, user_id: int, otp_hash: bytes, expires_at: datetime) -> None:
        """A new code replaces the user's previous one (and its try counter): an upsert,
        the table holds one row per user. The row stays locked until the unit ends."""
        await uow.execute(
            """INSERT INTO password_resets (user_id, otp_hash, expires_at) VALUES ($1, $2, $3)
               ON CONFLICT (user_id) DO UPDATE SET otp_hash = $2, expires_at = $3, attempts = 0,
                   spent_at = NULL, created_at = now()""",
            user_id,
            otp_hash,
            expires_at,
        )

    async def get_password_reset_for_update(self, uow: UnitOfWork, user_id: int) -> PasswordReset | None:
        row = await uow.fetchrow(
            """SELECT user_id, otp_hash, expires_at, attempts, spent_at FROM password_resets
               WHERE user_id = $1 FOR UPDATE""",
            user_id,
        )
        if row is None:
            return None
        return PasswordReset(
            user_id=row["user_id"],
            otp_hash=bytes(row["otp_hash"]),
            expires_at=row["expires_at"],
            attempts=row["attempts"],
            spent_at=row["spent_at"],
        )

    async def update_password_reset(self, uow: UnitOfWork, user_id: int, *, attempts: int, spent: bool) -> None:
        await uow.execute(
            """UPDATE password_resets SET attempts = $2,
                   spent_at = CASE WHEN $3 THEN now() ELSE spent_at END
               WHERE user_id = $1""",
            user_id,
            attempts,
            spent,
        )
