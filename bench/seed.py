"""A realistic data set written straight into the server's database with SQL.

Signing up thousands of users through the API costs an argon2id hash each; here users,
their sessions, follows, posts and likes are a handful of set-based statements. Ids come
from the `socialhub_id()` column defaults (migrations/0001_accounts.sql), counters are
recomputed from the rows, and access tokens are signed with the server's JWT secret by
`socialhub.services.tokens.TokenCodec`, exactly as the server issues them.
"""

from __future__ import annotations

import asyncpg
import msgspec
from argon2 import PasswordHasher, Type

from socialhub.config import AuthSettings
from socialhub.services.tokens import TokenCodec

# Tokens must outlive the longest run (the server's own access_ttl is 15 min).
TOKEN_TTL_S = 4 * 3600.0


class Account(msgspec.Struct, frozen=True):
    user_id: str
    username: str
    token: str


class DataSet(msgspec.Struct, frozen=True):
    accounts: list[Account]
    post_ids: list[str]
    follows: int
    likes: int
    password: str


class SizeSpec(msgspec.Struct, frozen=True):
    users: int = 2000
    follows_per_user: int = 50
    posts_per_user: int = 10
    likes_per_post: int = 5


def default_hasher() -> PasswordHasher:
    """argon2id at the server's default cost."""
    auth = AuthSettings()
    return PasswordHasher(
        time_cost=auth.argon2_time_cost,
        memory_cost=auth.argon2_memory_kib,
        parallelism=auth.argon2_parallelism,
        type=Type.ID,
    )


def password_hash(password: str) -> str:
    """An argon2id hash with the server's default cost, so a login verifies at full price
    and finds no reason to rehash."""
    return default_hasher().hash(password)


async def seed(db_url: str, secret: str, size: SizeSpec, tag: str, password: str) -> DataSet:
    """Users with sessions, a random follow graph, posts spread over a week, likes."""
    conn = await asyncpg.connect(db_url)
    try:
        async with conn.transaction():
            users = await conn.fetch(
                """
                INSERT INTO users (username, email, name, bio, password_hash)
                SELECT 'b' || $1 || '_' || i, 'b' || $1 || '_' || i || '@bench.invalid',
                       'Bench User ' || i, 'seeded by bench', $2
                FROM generate_series(1, $3::int) AS i
                RETURNING id, username
                """,
                tag,
                password_hash(password),
                size.users,
            )
            ids = [r["id"] for r in users]
            sessions = await conn.fetch(
                """
                INSERT INTO sessions (user_id, expires_at, user_agent)
                SELECT u, now() + interval '1 day', 'bench' FROM unnest($1::bigint[]) AS u
                RETURNING id, user_id
                """,
                ids,
            )
            # Each user follows `follows_per_user` others drawn uniformly.
            follows = await conn.fetchval(
                """
                WITH f AS (
                    INSERT INTO follows (follower_id, followee_id)
                    SELECT f, t FROM unnest($1::bigint[]) AS f
                    CROSS JOIN LATERAL (
                        SELECT t FROM unnest($1::bigint[]) AS t WHERE t <> f ORDER BY random() LIMIT $2
                    ) AS picked
                    RETURNING 1
                ) SELECT count(*) FROM f
                """,
                ids,
                size.follows_per_user,
            )
            posts = await conn.fetch(
                """
                INSERT INTO posts (author_id, content, created_at)
                SELECT u, 'Bench post ' || n || ' by ' || u || ': ' || repeat('lorem ipsum ', 1 + (n % 8)),
                       now() - random() * interval '7 days'
                FROM unnest($1::bigint[]) AS u, generate_series(1, $2::int) AS n
                RETURNING id
                """,
                ids,
                size.posts_per_user,
            )
            post_ids = [r["id"] for r in posts]
            likes = await conn.fetchval(
                """
                WITH l AS (
                    INSERT INTO likes (post_id, user_id)
                    SELECT ($1::bigint[])[1 + floor(random() * cardinality($1::bigint[]))::int],
                           ($2::bigint[])[1 + floor(random() * cardinality($2::bigint[]))::int]
                    FROM generate_series(1, $3::int)
                    ON CONFLICT DO NOTHING
                    RETURNING 1
                ) SELECT count(*) FROM l
                """,
                post_ids,
                ids,
                len(post_ids) * size.likes_per_post,
            )
            await conn.execute(
                """
                UPDATE users u SET
                    following_count = (SELECT count(*) FROM follows WHERE follower_id = u.id AND deleted_at IS NULL),
                    followers_count = (SELECT count(*) FROM follows WHERE followee_id = u.id AND deleted_at IS NULL),
                    posts_count = (SELECT count(*) FROM posts WHERE author_id = u.id)
                WHERE u.id = ANY($1::bigint[])
                """,
                ids,
            )
            await conn.execute(
                """
                UPDATE posts p SET likes_count = c.n
                FROM (SELECT post_id, count(*) AS n FROM likes WHERE post_id = ANY($1::bigint[]) GROUP BY post_id) c
                WHERE p.id = c.post_id
                """,
                post_ids,
            )
        await conn.execute("ANALYZE users; ANALYZE follows; ANALYZE posts; ANALYZE likes; ANALYZE sessions")
    finally:
        await conn.close()
    names = {r["id"]: r["username"] for r in users}
    codec = TokenCodec(secret, TOKEN_TTL_S)
    accounts = [Account(str(r["user_id"]), names[r["user_id"]], codec.issue(r["user_id"], r["id"])) for r in sessions]
    return DataSet(
        accounts=accounts,
        post_ids=[str(p) for p in post_ids],
        follows=int(follows),
        likes=int(likes),
        password=password,
    )
