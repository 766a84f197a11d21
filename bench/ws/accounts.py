"""Accounts and rooms for the socket scenarios, made without the API's slow paths.

Signing up 10,000 users would mean 10,000 argon2id hashes: `users` and `sessions` rows
go in with two SQL statements instead, and the access tokens are signed with the
server's secret by `socialhub.services.tokens.TokenCodec`, exactly as the server issues
them. Rooms are made through `POST /chat/rooms`, as a client makes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
import httpx
import msgspec

from socialhub.services.tokens import TokenCodec

# Tokens signed here outlive any run (the server checks the signature and exp only).
TOKEN_TTL_S = 4 * 3600.0
# A real argon2id hash of a password nobody knows (login is never exercised here).
PASSWORD_HASH = "$argon2id$v=19$m=1024,t=1,p=1$sYpa4dqD5G7Y4oJUi2egNw$JmCZasTcYTUY608mLgnRjqQ3vo84ltEY3HcgHZh6lC8"


class Account(msgspec.Struct, frozen=True):
    user_id: str
    token: str


async def seed_accounts(db_url: str, secret: str, count: int, tag: str) -> list[Account]:
    """`count` users, each with a live session and an access token, in two statements."""
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            """
            INSERT INTO users (username, email, name, password_hash)
            SELECT 'wb' || $1 || '_' || i, 'wb' || $1 || '_' || i || '@bench.invalid', 'Bench ' || i, $2
            FROM generate_series(1, $3::int) AS i
            RETURNING id
            """,
            tag,
            PASSWORD_HASH,
            count,
        )
        sessions = await conn.fetch(
            """
            INSERT INTO sessions (user_id, expires_at, user_agent)
            SELECT u, now() + interval '1 day', 'bench ws' FROM unnest($1::bigint[]) AS u
            RETURNING id, user_id
            """,
            [r["id"] for r in rows],
        )
    finally:
        await conn.close()
    codec = TokenCodec(secret, TOKEN_TTL_S)
    return [Account(str(r["user_id"]), codec.issue(r["user_id"], r["id"])) for r in sessions]


def create_room(base_url: str, owner: Account, members: Sequence[Account], name: str | None) -> str:
    body: dict[str, Any] = {"members": [m.user_id for m in members]}
    if name:
        body["name"] = name
    r = httpx.post(f"{base_url}/chat/rooms", json=body, headers={"Authorization": f"Bearer {owner.token}"}, timeout=60)
    if r.status_code not in (200, 201):
        raise RuntimeError(f"POST /chat/rooms answered {r.status_code}: {r.text[:300]}")
    room_id: str = r.json()["id"]
    return room_id
