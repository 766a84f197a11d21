"""Issue 3's promise: kill the process at any point between the write and the
consumers, restart, and no event is lost and no effect is doubled.

A real `socialhub serve` (its own fresh database, in-process timelines) takes a burst
of posts from concurrent clients and is killed with SIGKILL at a random moment, several
times over. After a last restart and once the consumers have caught up, every post that
was acknowledged (and every one that was committed without its answer arriving) is in
each follower's feed, and the author has exactly one `post` notification for each.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import TEST_SECRET, fresh_database
from tests.e2e.server import Server

ROUNDS = 4
WRITERS = 4
TOTAL_BUDGET = 60.0


@pytest.fixture
async def crash_db() -> AsyncIterator[str]:
    async with fresh_database("socialhub_crash") as url:
        yield url


def server_env(database_url: str) -> dict[str, str]:
    env = {
        "SOCIALHUB_DATABASE_URL": database_url,
        "SOCIALHUB_AUTH_JWT_SECRET": TEST_SECRET,
        "SOCIALHUB_RATELIMIT_ENABLED": "false",
        "SOCIALHUB_AUTH_ARGON2_TIME_COST": "1",
        "SOCIALHUB_AUTH_ARGON2_MEMORY_KIB": "1024",
        "SOCIALHUB_AUTH_ARGON2_PARALLELISM": "1",
    }
    # Timelines in process: a restart loses them all (rebuilt from PostgreSQL).
    return {**env, "SOCIALHUB_REDIS_URL": "", "SOCIALHUB_KAFKA_BOOTSTRAP_SERVERS": ""}


async def signup(c: httpx.AsyncClient, name: str) -> dict[str, Any]:
    u = f"{name}_{secrets.token_hex(3)}"
    r = await c.post(
        "/auth/signup",
        json={"name": name, "email": f"{u}@example.test", "username": u, "password": "pass word 1"},
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return {"id": body["user"]["id"], "auth": {"Authorization": f"Bearer {body['token']}"}}


async def burst_then_kill(server: Server, author: dict[str, Any], acked: list[str], round_no: int) -> None:
    """Post from several clients at once; SIGKILL the server at a random moment."""
    killed = asyncio.Event()
    sent = 0

    async def writer(w: int) -> None:
        nonlocal sent
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as c:
            i = 0
            while not killed.is_set():
                i += 1
                sent += 1
                try:
                    r = await c.post("/posts/", json={"content": f"r{round_no} w{w} #{i}"}, headers=author["auth"])
                except httpx.HTTPError:
                    if killed.is_set():
                        return
                    raise
                assert r.status_code == 201, r.text
                acked.append(r.json()["id"])

    tasks = [asyncio.create_task(writer(w)) for w in range(WRITERS)]
    await asyncio.sleep(random.uniform(0.05, 1.2))
    killed.set()
    server.kill()
    await asyncio.gather(*tasks)
    assert sent > 0


async def caught_up(database_url: str, seconds: float) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        end = time.monotonic() + seconds
        while True:
            row = await conn.fetchrow(
                """SELECT count(*) AS readers, bool_and((p.xid, p.id) >= (o.xid, o.id)) AS done
                   FROM outbox_positions p,
                        (SELECT xid, id FROM outbox ORDER BY xid DESC, id DESC LIMIT 1) o
                   WHERE p.name IN ('feed', 'notifications')"""
            )
            if row is not None and row["readers"] == 2 and row["done"]:
                return
            assert time.monotonic() < end, "the consumers did not catch up"
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def backlog(database_url: str) -> int:
    """Events a consumer has not got to yet (after a kill: what the restart must do)."""
    conn = await asyncpg.connect(database_url)
    try:
        n: int = await conn.fetchval(
            """SELECT coalesce(max((SELECT count(*) FROM outbox o WHERE (o.xid, o.id) > (p.xid, p.id))), 0)
               FROM outbox_positions p WHERE p.name IN ('feed', 'notifications')"""
        )
        return n
    finally:
        await conn.close()


async def whole_feed(c: httpx.AsyncClient, user: dict[str, Any]) -> list[str]:
    ids: list[str] = []
    before: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 100} | ({"before": before} if before else {})
        r = await c.get("/feed", params=params, headers=user["auth"])
        assert r.status_code == 200, r.text
        page = r.json()
        ids += [p["id"] for p in page["items"]]
        if page["next"] is None:
            return ids
        before = page["next"]


async def test_killing_the_server_loses_no_event_and_doubles_no_effect(tmp_path: Path, crash_db: str) -> None:
    started = time.monotonic()
    data = tmp_path / "data"
    env = server_env(crash_db)
    server = Server(data, env).start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
            a, b, d = await signup(c, "author"), await signup(c, "fan_b"), await signup(c, "fan_c")
            for f in (b, d):
                r = await c.post(f"/users/follow/{a['id']}", headers=f["auth"])
                assert r.status_code == 200
                assert (await c.get("/feed", headers=f["auth"])).status_code == 200  # build the timeline
        acked: list[str] = []
        backlogs: list[int] = []
        for round_no in range(ROUNDS):
            if round_no:
                server = Server(data, env).start()
            await burst_then_kill(server, a, acked, round_no)
            backlogs.append(await backlog(crash_db))
            assert time.monotonic() - started < TOTAL_BUDGET * 0.7, "the rounds took too long"

        server = Server(data, env).start()
        await caught_up(crash_db, seconds=20)
        conn = await asyncpg.connect(crash_db)
        try:
            committed = {
                str(r["id"]) for r in await conn.fetch("SELECT id FROM posts WHERE author_id = $1", int(a["id"]))
            }
            events = await conn.fetch("SELECT key FROM outbox WHERE type = 'post.created'")
            post_notes = await conn.fetch(
                "SELECT post_id, actor_id FROM notifications WHERE user_id = $1 AND type = 'post'", int(a["id"])
            )
            dup_events = await conn.fetchval(
                "SELECT count(*) FROM (SELECT 1 FROM notifications GROUP BY event_id, user_id HAVING count(*) > 1) d"
            )
            others = await conn.fetchval("SELECT count(*) FROM notifications WHERE type <> 'post' AND type <> 'follow'")
        finally:
            await conn.close()

        assert len(acked) == len(set(acked)) and acked, "no post was acknowledged"
        # The kills did land between writes and consumers (events were left unhandled).
        assert max(backlogs) > 0, backlogs
        assert set(acked) <= committed, "an acknowledged post is not in the database"
        # Exactly one event per committed post: none lost with a rolled-back or killed write.
        assert sorted(r["key"] for r in events) == sorted(committed)
        noted = [str(r["post_id"]) for r in post_notes]
        assert len(noted) == len(set(noted)), "a post was notified twice"
        assert set(noted) == committed, "a post has no notification"
        assert all(str(r["actor_id"]) == a["id"] for r in post_notes)
        assert dup_events == 0 and others == 0

        async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
            for f in (b, d):
                feed = await whole_feed(c, f)
                assert len(feed) == len(set(feed)), "a post is twice in a feed"
                assert set(feed) == committed, "a post is missing from a follower's feed"
                assert feed == sorted(feed, key=int, reverse=True)
            r = await c.get("/notify/unread-count", headers=a["auth"])
            assert r.json() == {"count": len(committed) + 2}  # + the two follows
        assert server.proc is not None
        server.stop()
    finally:
        server.kill()
    assert time.monotonic() - started < TOTAL_BUDGET
