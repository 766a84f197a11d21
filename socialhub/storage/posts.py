"""SQL for posts, media, comments and likes.

Counters (likes_count, comments_count, posts_count) move in the statement that makes
the change, guarded by whether a row really changed, so they stay exact under
concurrency and retries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
import msgspec

from socialhub.domain.posts import CommentRecord, MediaRecord, NewMedia, PostRecord
from socialhub.errors import NotFound
from socialhub.storage.database import Database
from socialhub.storage.units import UnitOfWork
from socialhub.storage.users import summary_from_row

# Posts as anyone sees them (author, media, counters); `liked` is the viewer's and is
# added by the read cache. `media` is NULL for a post without any (most of them): NULL
# skips the jsonb decoder, which is Python code run per row.
POST_SELECT = """
    SELECT p.id, p.content, p.created_at, p.likes_count, p.comments_count,
           u.id AS author_id, u.username, u.name, u.avatar_url,
           (SELECT jsonb_agg(jsonb_build_object(
                        'id', m.id, 'storage_key', m.storage_key, 'content_type', m.content_type,
                        'size', m.size, 'width', m.width, 'height', m.height, 'blurhash', m.blurhash,
                        'previews', (SELECT jsonb_agg(jsonb_build_object(
                                             'key', mp.storage_key, 'width', mp.width, 'height', mp.height)
                                             ORDER BY mp.width)
                                     FROM media_previews mp WHERE mp.media_id = m.id)) ORDER BY m.position)
            FROM media m WHERE m.post_id = p.id) AS media
    FROM posts p JOIN users u ON u.id = p.author_id
"""
# The viewer's and followed authors' posts straight from the follow graph.
_FROM_GRAPH = """p.author_id IN (SELECT $1::bigint UNION ALL SELECT f.followee_id FROM follows f
                                 WHERE f.follower_id = $1 AND f.deleted_at IS NULL)"""


class InsertedPost(msgspec.Struct, frozen=True):
    id: int
    created: bool
    """False when the author's idempotency key was used already: `id` is that post's."""
    fanned_out: bool


class ViewerRecord(msgspec.Struct, frozen=True):
    followee_ids: list[int]
    liked_post_ids: list[int]
    """The newest first."""


class InsertedComment(msgspec.Struct, frozen=True):
    comment: CommentRecord
    post_author_id: int


class CommentOwners(msgspec.Struct, frozen=True):
    author_id: int
    post_id: int
    post_author_id: int


class LikeChange(msgspec.Struct, frozen=True):
    changed: bool
    """False when the like was already there (or, to unlike, was not)."""
    likes_count: int
    post_author_id: int


def post_from_row(row: asyncpg.Record) -> PostRecord:
    return PostRecord(
        id=row["id"],
        author=summary_from_row(row, "author_id"),
        content=row["content"],
        media=[msgspec.convert(m, MediaRecord) for m in row["media"]] if row["media"] is not None else [],
        created_at=row["created_at"],
        likes_count=row["likes_count"],
        comments_count=row["comments_count"],
    )


def _comment(row: asyncpg.Record) -> CommentRecord:
    return CommentRecord(
        id=row["id"],
        post_id=row["post_id"],
        author=summary_from_row(row, "author_id"),
        content=row["content"],
        created_at=row["created_at"],
    )


class PostStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- posts ------------------------------------------------------------------

    async def insert_post(
        self,
        uow: UnitOfWork,
        author_id: int,
        content: str,
        idempotency_key: str | None,
        fanout_threshold: int,
    ) -> InsertedPost:
        """The new post, or the author's post with this idempotency key. A concurrent first
        request with the same key makes this wait for its commit. The post is fanned out
        unless its author has `fanout_threshold` followers or more."""
        row = await uow.fetchrow(
            """INSERT INTO posts (author_id, content, idempotency_key, fanned_out)
               VALUES ($1, $2, $3, (SELECT followers_count < $4 FROM users WHERE id = $1))
               ON CONFLICT (author_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
               RETURNING id, fanned_out""",
            author_id,
            content,
            idempotency_key,
            fanout_threshold,
        )
        if row is not None:
            await uow.execute("UPDATE users SET posts_count = posts_count + 1 WHERE id = $1", author_id)
            return InsertedPost(row["id"], True, row["fanned_out"])
        existing = await uow.fetchrow(
            "SELECT id, fanned_out FROM posts WHERE author_id = $1 AND idempotency_key = $2",
            author_id,
            idempotency_key,
        )
        assert existing is not None  # the row the insert conflicted with
        return InsertedPost(existing["id"], False, existing["fanned_out"])

    async def get_post_by_key(self, author_id: int, idempotency_key: str) -> int | None:
        found: int | None = await self.db.fetchval(
            "SELECT id FROM posts WHERE author_id = $1 AND idempotency_key = $2", author_id, idempotency_key
        )
        return found

    async def insert_media(self, uow: UnitOfWork, post_id: int, owner_id: int, files: Sequence[NewMedia]) -> None:
        await uow.executemany(
            """INSERT INTO media (post_id, owner_id, storage_key, content_type, size, width, height, position,
                                  blurhash, previews_pending)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)""",
            [
                (post_id, owner_id, f.storage_key, f.content_type, f.size, f.width, f.height, i, f.blurhash,
                 f.previews_pending)
                for i, f in enumerate(files)
            ],
        )  # fmt: skip
        previews = [(p.storage_key, f.storage_key, p.width, p.height) for f in files for p in f.previews]
        if previews:
            await uow.executemany(
                """INSERT INTO media_previews (storage_key, media_id, width, height)
                   SELECT $1, id, $3, $4 FROM media WHERE storage_key = $2""",
                previews,
            )

    async def get_known_media_keys(self, keys: Sequence[str]) -> set[str]:
        """Which of these storage keys a row refers to (media of a post, their previews, or an avatar)."""
        rows = await self.db.fetch(
            """SELECT storage_key AS k FROM media WHERE storage_key = ANY($1::text[])
               UNION SELECT storage_key FROM media_previews WHERE storage_key = ANY($1::text[])
               UNION SELECT avatar_key FROM users WHERE avatar_key = ANY($1::text[])""",
            list(keys),
        )
        return {r["k"] for r in rows}

    async def get_post_records(self, ids: Sequence[int]) -> list[PostRecord]:
        """The posts among `ids` that exist."""
        rows = await self.db.fetch(POST_SELECT + " WHERE p.id = ANY($1::bigint[])", list(ids))
        return [post_from_row(r) for r in rows]

    async def get_user_post_ids(self, author_id: int, before: int | None, limit: int) -> list[int]:
        rows = await self.db.fetch(
            "SELECT id FROM posts WHERE author_id = $1 AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
            author_id,
            before,
            limit,
        )
        return [r["id"] for r in rows]

    async def get_home_graph_ids(self, viewer_id: int, before: int | None, limit: int) -> list[int]:
        """The newest post ids of the viewer and of everyone they follow now, straight from
        the follow graph (a page past the timeline's end)."""
        rows = await self.db.fetch(
            f"""SELECT p.id FROM posts p WHERE {_FROM_GRAPH} AND ($2::bigint IS NULL OR p.id < $2)
                ORDER BY p.id DESC LIMIT $3""",
            viewer_id,
            before,
            limit,
        )
        return [r["id"] for r in rows]

    async def get_not_fanned_out_ids(self, author_ids: Sequence[int], before: int | None, limit: int) -> list[int]:
        """The newest posts of these authors that were never fanned out."""
        rows = await self.db.fetch(
            """SELECT id FROM posts WHERE author_id = ANY($1::bigint[]) AND NOT fanned_out
                 AND ($2::bigint IS NULL OR id < $2)
               ORDER BY id DESC LIMIT $3""",
            list(author_ids),
            before,
            limit,
        )
        return [r["id"] for r in rows]

    async def get_big_authors(self) -> list[int]:
        """Every account with a post that was not fanned out (a loose index scan of the
        partial index: one probe per such account)."""
        rows = await self.db.fetch(
            """WITH RECURSIVE a AS (
                   (SELECT author_id FROM posts WHERE NOT fanned_out ORDER BY author_id LIMIT 1)
                   UNION ALL
                   SELECT (SELECT p.author_id FROM posts p WHERE NOT p.fanned_out AND p.author_id > a.author_id
                           ORDER BY p.author_id LIMIT 1)
                   FROM a WHERE a.author_id IS NOT NULL)
               SELECT author_id FROM a WHERE author_id IS NOT NULL"""
        )
        return [r["author_id"] for r in rows]

    async def get_viewer(self, user_id: int, liked_window: int) -> ViewerRecord:
        """Whom the user follows and the ids of the newest `liked_window` posts they liked,
        in one round trip."""
        row = await self.db.fetchrow(
            """SELECT ARRAY(SELECT followee_id FROM follows WHERE follower_id = $1 AND deleted_at IS NULL) AS f,
                      ARRAY(SELECT post_id FROM likes WHERE user_id = $1 ORDER BY post_id DESC LIMIT $2) AS l""",
            user_id,
            liked_window,
        )
        assert row is not None
        return ViewerRecord(list(row["f"]), list(row["l"]))

    async def get_liked_among(self, user_id: int, post_ids: Sequence[int]) -> list[int]:
        rows = await self.db.fetch(
            "SELECT post_id FROM likes WHERE user_id = $1 AND post_id = ANY($2::bigint[])", user_id, list(post_ids)
        )
        return [r["post_id"] for r in rows]

    async def get_home_ids(self, viewer_id: int, limit: int) -> list[int]:
        """Newest post ids for rebuilding a timeline: own posts, and followed authors'
        posts that are fanned out."""
        rows = await self.db.fetch(
            """SELECT p.id FROM posts p
               WHERE p.author_id = $1
                  OR (p.fanned_out AND p.author_id IN (SELECT f.followee_id FROM follows f
                                                       WHERE f.follower_id = $1 AND f.deleted_at IS NULL))
               ORDER BY p.id DESC LIMIT $2""",
            viewer_id,
            limit,
        )
        return [r["id"] for r in rows]

    async def get_recent_post_ids(self, author_id: int, limit: int, *, fanned_out_only: bool = False) -> list[int]:
        rows = await self.db.fetch(
            """SELECT id FROM posts WHERE author_id = $1 AND (fanned_out OR NOT $3)
               ORDER BY id DESC LIMIT $2""",
            author_id,
            limit,
            fanned_out_only,
        )
        return [r["id"] for r in rows]

    async def get_fanned_out(self, post_id: int) -> bool | None:
        """Whether the post goes to followers' timelines; None when it is gone."""
        value: bool | None = await self.db.fetchval("SELECT fanned_out FROM posts WHERE id = $1", post_id)
        return value

    async def get_post_author(self, post_id: int) -> int | None:
        author: int | None = await self.db.fetchval("SELECT author_id FROM posts WHERE id = $1", post_id)
        return author

    async def update_post(self, post_id: int, author_id: int, content: str) -> bool:
        result = await self.db.execute(
            "UPDATE posts SET content = $3, updated_at = now() WHERE id = $1 AND author_id = $2",
            post_id,
            author_id,
            content,
        )
        return result.endswith(" 1")

    async def delete_post(self, uow: UnitOfWork, post_id: int, author_id: int) -> list[str] | None:
        """Delete the author's post; the storage keys of its media and their previews, or None
        when there was no such post."""
        keys = await uow.fetch(
            """SELECT storage_key FROM media WHERE post_id = $1
               UNION ALL SELECT mp.storage_key FROM media_previews mp JOIN media m ON m.id = mp.media_id
                         WHERE m.post_id = $1""",
            post_id,
        )
        deleted = await uow.fetchval(
            """WITH d AS (DELETE FROM posts WHERE id = $1 AND author_id = $2 RETURNING author_id)
               UPDATE users SET posts_count = posts_count - 1 WHERE id = (SELECT author_id FROM d) RETURNING 1""",
            post_id,
            author_id,
        )
        return [r["storage_key"] for r in keys] if deleted else None

    async def get_follower_ids(self, user_id: int, active_within_seconds: float, after: int, limit: int) -> list[int]:
        """Followers seen within the window, by id, for fan-out in chunks."""
        rows = await self.db.fetch(
            """SELECT f.follower_id FROM follows f JOIN users u ON u.id = f.follower_id
               WHERE f.followee_id = $1 AND f.deleted_at IS NULL AND f.follower_id > $2
                 AND u.last_active_at > now() - make_interval(secs => $3)
               ORDER BY f.follower_id LIMIT $4""",
            user_id,
            after,
            active_within_seconds,
            limit,
        )
        return [r["follower_id"] for r in rows]

    async def update_last_active(self, user_id: int) -> None:
        await self.db.execute("UPDATE users SET last_active_at = now() WHERE id = $1", user_id)

    # -- comments ---------------------------------------------------------------

    async def insert_comment(self, uow: UnitOfWork, post_id: int, author_id: int, content: str) -> InsertedComment:
        """NotFound when the post is gone."""
        try:
            row = await uow.fetchrow(
                """WITH p AS (UPDATE posts SET comments_count = comments_count + 1 WHERE id = $1
                              RETURNING author_id AS post_author_id),
                        c AS (INSERT INTO comments (post_id, author_id, content)
                              SELECT $1, $2, $3 FROM p RETURNING id, post_id, author_id, content, created_at)
                   SELECT c.id, c.post_id, c.content, c.created_at, u.id AS author_id, u.username, u.name,
                          u.avatar_url, (SELECT post_author_id FROM p) AS post_author_id
                   FROM c JOIN users u ON u.id = c.author_id""",
                post_id,
                author_id,
                content,
            )
        except asyncpg.ForeignKeyViolationError:
            raise NotFound("no such post") from None
        if row is None:
            raise NotFound("no such post")
        return InsertedComment(_comment(row), row["post_author_id"])

    async def get_comments(self, post_id: int, after: int | None, limit: int) -> list[CommentRecord]:
        rows = await self.db.fetch(
            """SELECT c.id, c.post_id, c.content, c.created_at, u.id AS author_id, u.username, u.name, u.avatar_url
               FROM comments c JOIN users u ON u.id = c.author_id
               WHERE c.post_id = $1 AND ($2::bigint IS NULL OR c.id > $2)
               ORDER BY c.id LIMIT $3""",
            post_id,
            after,
            limit,
        )
        return [_comment(r) for r in rows]

    async def get_comment_owners(self, comment_id: int) -> CommentOwners | None:
        row = await self.db.fetchrow(
            """SELECT c.author_id, c.post_id, p.author_id AS post_author_id
               FROM comments c JOIN posts p ON p.id = c.post_id WHERE c.id = $1""",
            comment_id,
        )
        return CommentOwners(row["author_id"], row["post_id"], row["post_author_id"]) if row else None

    async def update_comment(self, comment_id: int, author_id: int, content: str) -> CommentRecord | None:
        row = await self.db.fetchrow(
            """WITH c AS (UPDATE comments SET content = $3, updated_at = now()
                          WHERE id = $1 AND author_id = $2 RETURNING id, post_id, author_id, content, created_at)
               SELECT c.id, c.post_id, c.content, c.created_at, u.id AS author_id, u.username, u.name, u.avatar_url
               FROM c JOIN users u ON u.id = c.author_id""",
            comment_id,
            author_id,
            content,
        )
        return _comment(row) if row else None

    async def delete_comment(self, comment_id: int) -> bool:
        deleted = await self.db.fetchval(
            """WITH d AS (DELETE FROM comments WHERE id = $1 RETURNING post_id)
               UPDATE posts SET comments_count = comments_count - 1 WHERE id = (SELECT post_id FROM d) RETURNING 1""",
            comment_id,
        )
        return bool(deleted)

    # -- likes ------------------------------------------------------------------

    async def insert_like(self, uow: UnitOfWork, post_id: int, user_id: int) -> LikeChange:
        """NotFound when the post is gone."""
        return await self._like(uow, post_id, user_id, like=True)

    async def delete_like(self, post_id: int, user_id: int) -> LikeChange:
        """As `insert_like`, in a statement of its own: an unlike writes no event."""
        return await self._like(self.db, post_id, user_id, like=False)

    async def _like(self, on: Database | UnitOfWork, post_id: int, user_id: int, *, like: bool) -> LikeChange:
        change = (
            """INSERT INTO likes (post_id, user_id) SELECT $1, $2 WHERE EXISTS (SELECT 1 FROM posts WHERE id = $1)
               ON CONFLICT DO NOTHING RETURNING 1"""
            if like
            else "DELETE FROM likes WHERE post_id = $1 AND user_id = $2 RETURNING 1"
        )
        sign = "+" if like else "-"
        try:
            row: Any = await on.fetchrow(
                f"""WITH l AS ({change}),
                        p AS (UPDATE posts SET likes_count = likes_count {sign} (SELECT count(*) FROM l)::int
                              WHERE id = $1 RETURNING likes_count, author_id)
                    SELECT p.likes_count, p.author_id, (SELECT count(*) FROM l) AS changed FROM p""",
                post_id,
                user_id,
            )
        except asyncpg.ForeignKeyViolationError:
            raise NotFound("no such post") from None
        if row is None:
            raise NotFound("no such post")
        return LikeChange(bool(row["changed"]), row["likes_count"], row["author_id"])
