"""SQL for users and follows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from socialhub.domain.users import FollowEntry, Relation, UserRecord, UserSummary
from socialhub.errors import Conflict, NotFound
from socialhub.storage.database import Database
from socialhub.storage.units import UnitOfWork

USER_COLUMNS = (
    "u.id, u.username, u.email, u.name, u.bio, u.avatar_url, u.password_hash, "
    "u.followers_count, u.following_count, u.posts_count, u.created_at"
)
# Relation of viewer $2 to user u, computed in the same query as the user.
RELATION_COLUMNS = (
    "EXISTS (SELECT 1 FROM follows f WHERE f.follower_id = $2 AND f.followee_id = u.id"
    " AND f.deleted_at IS NULL) AS rel_following, "
    "EXISTS (SELECT 1 FROM follows f WHERE f.follower_id = u.id AND f.followee_id = $2"
    " AND f.deleted_at IS NULL) AS rel_followed_by"
)


class Profile(msgspec.Struct, frozen=True):
    """A user and how the viewer relates to them."""

    user: UserRecord
    relation: Relation


class NewAvatar(msgspec.Struct, frozen=True):
    url: str
    media_key: str


class ProfileUpdate(msgspec.Struct, frozen=True):
    user: UserRecord
    replaced_avatar_key: str | None
    """The media key of the avatar a new one replaced (the caller deletes that file)."""


def user_from_row(row: asyncpg.Record) -> UserRecord:
    return UserRecord(
        id=row["id"],
        username=row["username"],
        email=row["email"],
        name=row["name"],
        bio=row["bio"],
        avatar_url=row["avatar_url"],
        password_hash=row["password_hash"],
        followers_count=row["followers_count"],
        following_count=row["following_count"],
        posts_count=row["posts_count"],
        created_at=row["created_at"],
    )


def summary_from_row(row: Mapping[str, Any], id_key: str, prefix: str = "") -> UserSummary:
    """The User summary in a row (or a jsonb object) that joined users: its id under
    `id_key`, the rest under `prefix` + username/name/avatar_url."""
    return UserSummary(
        id=str(row[id_key]),
        username=row[f"{prefix}username"],
        name=row[f"{prefix}name"],
        avatar_url=row[f"{prefix}avatar_url"],
    )


def _relation(row: asyncpg.Record) -> Relation:
    return Relation(following=row["rel_following"], followed_by=row["rel_followed_by"])


class UserStore:
    """users and follows tables."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def insert_user(self, *, username: str, email: str, name: str, password_hash: str) -> UserRecord:
        """Create a user; Conflict naming the field when the username or email is taken."""
        try:
            row = await self.db.fetchrow(
                f"""INSERT INTO users AS u (username, email, name, password_hash)
                    VALUES ($1, $2, $3, $4) RETURNING {USER_COLUMNS}""",
                username,
                email,
                name,
                password_hash,
            )
        except asyncpg.UniqueViolationError as exc:
            field = "username" if "username" in (exc.constraint_name or "") else "email"
            raise Conflict(f"that {field} is already taken", fields={field: "already taken"}) from None
        assert row is not None
        return user_from_row(row)

    async def get_user(self, user_id: int) -> UserRecord | None:
        row = await self.db.fetchrow(f"SELECT {USER_COLUMNS} FROM users u WHERE u.id = $1", user_id)
        return user_from_row(row) if row else None

    async def get_user_by_login(self, identifier: str) -> UserRecord | None:
        """By email when it holds an @, else by username; both case-insensitive."""
        column = "email" if "@" in identifier else "username"
        row = await self.db.fetchrow(
            f"SELECT {USER_COLUMNS} FROM users u WHERE lower(u.{column}) = lower($1)", identifier
        )
        return user_from_row(row) if row else None

    async def get_profile(
        self, viewer_id: int, *, user_id: int | None = None, username: str | None = None
    ) -> Profile | None:
        """A user by id or username, with the viewer's relation to them, in one round trip."""
        where = "u.id = $1" if user_id is not None else "lower(u.username) = lower($1)"
        key: Any = user_id if user_id is not None else username
        row = await self.db.fetchrow(
            f"SELECT {USER_COLUMNS}, {RELATION_COLUMNS} FROM users u WHERE {where}", key, viewer_id
        )
        return Profile(user_from_row(row), _relation(row)) if row else None

    async def update_profile(
        self,
        user_id: int,
        *,
        name: str | None,
        bio: str | None,
        avatar: NewAvatar | None = None,
    ) -> ProfileUpdate | None:
        """Change what is given; None when there is no such user."""
        row = await self.db.fetchrow(
            f"""WITH old AS (SELECT avatar_key FROM users WHERE id = $1 FOR UPDATE)
                UPDATE users u SET name = coalesce($2, u.name), bio = coalesce($3, u.bio),
                    avatar_url = coalesce($4, u.avatar_url), avatar_key = coalesce($5, u.avatar_key),
                    updated_at = now()
                FROM old WHERE u.id = $1
                RETURNING {USER_COLUMNS}, CASE WHEN $5::text IS NOT NULL THEN old.avatar_key END AS replaced_key""",
            user_id,
            name,
            bio,
            avatar.url if avatar else None,
            avatar.media_key if avatar else None,
        )
        return ProfileUpdate(user_from_row(row), row["replaced_key"]) if row else None

    async def update_password(self, uow: UnitOfWork, user_id: int, password_hash: str) -> None:
        await uow.execute(
            "UPDATE users SET password_hash = $2, updated_at = now() WHERE id = $1", user_id, password_hash
        )

    async def insert_follow(self, uow: UnitOfWork, follower_id: int, followee_id: int) -> bool:
        """Follow (or revive a soft-deleted follow). True when the state changed; NotFound
        when either user does not exist.

        The follows row lock serialises concurrent follows of one pair, so each change
        moves the counters exactly once. The two users rows are locked in primary-key
        order before they are updated (an UPDATE alone may visit them in heap order), so
        A→B and B→A at once cannot deadlock. The lock is FOR NO KEY UPDATE, what the
        UPDATE takes anyway: FOR UPDATE would also wait for the KEY SHARE locks that the
        follows row's foreign keys hold in the other transaction, and deadlock there.
        """
        try:
            changed = await self._insert_follow(uow, follower_id, followee_id)
        except asyncpg.ForeignKeyViolationError:
            raise NotFound("no such user") from None
        return bool(changed)

    async def _insert_follow(self, uow: UnitOfWork, follower_id: int, followee_id: int) -> Any:
        return await uow.fetchval(
            """WITH f AS (
                   INSERT INTO follows (follower_id, followee_id) VALUES ($1, $2)
                   ON CONFLICT (follower_id, followee_id) DO UPDATE
                       SET deleted_at = NULL, id = socialhub_id(), created_at = now()
                       WHERE follows.deleted_at IS NOT NULL
                   RETURNING 1),
               locked AS (
                   SELECT id FROM users WHERE id IN ($1, $2) AND EXISTS (SELECT 1 FROM f)
                   ORDER BY id FOR NO KEY UPDATE),
               c AS (
                   UPDATE users SET
                       following_count = following_count + (id = $1)::int,
                       followers_count = followers_count + (id = $2)::int
                   WHERE id IN (SELECT id FROM locked)
                   RETURNING 1)
               SELECT count(*) FROM c""",
            follower_id,
            followee_id,
        )

    async def delete_follow(self, uow: UnitOfWork, follower_id: int, followee_id: int) -> bool:
        """Unfollow (a soft delete). True when the state changed."""
        changed = await uow.fetchval(
            """WITH f AS (
                   UPDATE follows SET deleted_at = now()
                   WHERE follower_id = $1 AND followee_id = $2 AND deleted_at IS NULL
                   RETURNING 1),
               locked AS (
                   SELECT id FROM users WHERE id IN ($1, $2) AND EXISTS (SELECT 1 FROM f)
                   ORDER BY id FOR NO KEY UPDATE),
               c AS (
                   UPDATE users SET
                       following_count = following_count - (id = $1)::int,
                       followers_count = followers_count - (id = $2)::int
                   WHERE id IN (SELECT id FROM locked)
                   RETURNING 1)
               SELECT count(*) FROM c""",
            follower_id,
            followee_id,
        )
        return bool(changed)

    async def get_follow_list(
        self, user_id: int, viewer_id: int, *, followers: bool, before: int | None, limit: int
    ) -> list[FollowEntry]:
        """Followers (or followees) of `user_id`, newest follow first, keyed by follow id."""
        mine, theirs = ("followee_id", "follower_id") if followers else ("follower_id", "followee_id")
        rows = await self.db.fetch(
            f"""SELECT fl.id AS follow_id, {USER_COLUMNS}, {RELATION_COLUMNS}
                FROM follows fl JOIN users u ON u.id = fl.{theirs}
                WHERE fl.{mine} = $1 AND fl.deleted_at IS NULL AND ($3::bigint IS NULL OR fl.id < $3)
                ORDER BY fl.id DESC LIMIT $4""",
            user_id,
            viewer_id,
            before,
            limit,
        )
        return [FollowEntry(follow_id=r["follow_id"], user=user_from_row(r), relation=_relation(r)) for r in rows]

    async def update_last_seen(self, user_id: int, when: datetime) -> None:
        await self.db.execute("UPDATE users SET last_seen_at = $2 WHERE id = $1", user_id, when)

    async def get_last_seen(self, user_ids: Sequence[int]) -> dict[int, datetime]:
        rows = await self.db.fetch(
            "SELECT id, last_seen_at FROM users WHERE id = ANY($1::bigint[]) AND last_seen_at IS NOT NULL",
            list(user_ids),
        )
        return {r["id"]: r["last_seen_at"] for r in rows}

    async def get_existing_user_ids(self, user_ids: Sequence[int]) -> set[int]:
        """Those of `user_ids` that are users."""
        rows = await self.db.fetch("SELECT id FROM users WHERE id = ANY($1::bigint[])", list(user_ids))
        return {r["id"] for r in rows}
