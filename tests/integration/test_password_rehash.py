"""A login that finds a hash made at another argon2id cost stores a new one at the
configured cost (the cost can be raised without a reset)."""

from __future__ import annotations

from collections.abc import Callable

import asyncpg

from socialhub.config import Settings
from tests.conftest import running_app, signup


async def _stored_hash(database_url: str, username: str) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        return str(await conn.fetchval("SELECT password_hash FROM users WHERE username = $1", username))
    finally:
        await conn.close()


async def test_login_rehashes_at_the_configured_cost(make_settings: Callable[..., Settings], database_url: str) -> None:
    async with running_app(make_settings()) as client:  # the tests' cheap cost: t=1, m=1024
        a = await signup(client)
    before = await _stored_hash(database_url, a.username)
    assert "$m=1024,t=1,p=1$" in before
    dearer = make_settings(auth={"argon2_time_cost": 2, "argon2_memory_kib": 2048})
    async with running_app(dearer) as client:
        r = await client.post("/auth/login", json={"identifier": a.username, "password": "wrong password"})
        assert r.status_code == 401
        assert await _stored_hash(database_url, a.username) == before  # only a right password rehashes
        r = await client.post("/auth/login", json={"identifier": a.username, "password": a.password})
        assert r.status_code == 200, r.text
        after = await _stored_hash(database_url, a.username)
        assert "$m=2048,t=2,p=1$" in after and after != before
        r = await client.post("/auth/login", json={"identifier": a.email, "password": a.password})
        assert r.status_code == 200 and await _stored_hash(database_url, a.username) == after
