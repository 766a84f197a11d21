"""Notifications made by the consumer from outbox events, the notify routes, and the
live push on the user's pub/sub channel; real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import redis.asyncio as aioredis

from socialhub.config import Settings
from tests.conftest import REDIS_URL, Account, error_code, running_app, signup

DEADLINE = 10.0


async def wait_until(check: Callable[[], Awaitable[bool]], what: str, seconds: float = DEADLINE) -> None:
    end = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def unread(a: Account) -> int:
    r = await a.get("/notify/unread-count")
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"count"}
    count: int = r.json()["count"]
    return count


async def wait_unread(a: Account, n: int) -> None:
    async def check() -> bool:
        return await unread(a) >= n

    await wait_until(check, f"{n} unread notifications")
    # And no more than that turn up.
    await asyncio.sleep(0.2)
    assert await unread(a) == n


async def listing(a: Account, **params: Any) -> dict[str, Any]:
    r = await a.get("/notify/notifications", params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def new_post(a: Account, content: str = "hello") -> str:
    r = await a.post("/posts/", json={"content": content})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def summary(a: Account) -> dict[str, Any]:
    return {"id": a.id, "username": a.username}


async def test_each_action_notifies_once_with_type_actor_and_ids(client: httpx.AsyncClient) -> None:
    a, b = await signup(client), await signup(client)
    post_id = await new_post(a)
    # Own comment and like on own post: no notification.
    r = await a.post(f"/posts/comment/{post_id}", json={"content": "me myself"})
    assert r.status_code == 201
    assert (await a.post(f"/posts/like/{post_id}")).status_code == 200
    assert (await b.post(f"/users/follow/{a.id}")).status_code == 200
    assert (await b.post(f"/users/follow/{a.id}")).status_code == 200  # idempotent: one follow
    r = await b.post(f"/posts/comment/{post_id}", json={"content": "nice"})
    assert r.status_code == 201
    comment_id = r.json()["id"]
    for _ in range(2):  # a repeated like is one like
        assert (await b.post(f"/posts/like/{post_id}")).status_code == 200
    await wait_unread(a, 4)

    items = (await listing(a))["items"]
    assert [n["type"] for n in items] == ["like", "comment", "follow", "post"]
    assert [n["id"] for n in items] == sorted((n["id"] for n in items), key=int, reverse=True)
    like, comment, follow, post = items
    for n in items:
        assert n["read"] is False
        assert set(n["actor"]) == {"id", "username", "name", "avatar_url"}
        assert n["created_at"].endswith("Z")
        assert "room_id" not in n and "call_id" not in n
    assert post["actor"] | summary(a) == post["actor"] and post["post_id"] == post_id and "comment_id" not in post
    assert follow["actor"] | summary(b) == follow["actor"] and "post_id" not in follow and "comment_id" not in follow
    assert comment["actor"]["id"] == b.id and comment["post_id"] == post_id and comment["comment_id"] == comment_id
    assert like["actor"]["id"] == b.id and like["post_id"] == post_id and "comment_id" not in like
    assert follow["actor"]["name"] == f"User {b.username}"
    # b acted on a's post and followed a: b is notified of nothing.
    assert await unread(b) == 0 and (await listing(b))["items"] == []


async def test_listing_marks_read_and_shows_read_as_it_was(client: httpx.AsyncClient) -> None:
    a = await signup(client)
    fans = [await signup(client) for _ in range(5)]
    for f in fans:
        assert (await f.post(f"/users/follow/{a.id}")).status_code == 200
    await wait_unread(a, 5)
    first = await listing(a, limit=2)
    assert [n["read"] for n in first["items"]] == [False, False]
    assert [n["actor"]["id"] for n in first["items"]] == [fans[4].id, fans[3].id]
    assert first["next"] == first["items"][-1]["id"]
    # Only the returned ones were marked.
    assert await unread(a) == 3
    rest = await listing(a, before=first["next"], limit=10)
    assert [n["actor"]["id"] for n in rest["items"]] == [f.id for f in reversed(fans[:3])]
    assert [n["read"] for n in rest["items"]] == [False] * 3 and rest["next"] is None
    assert await unread(a) == 0
    again = await listing(a)
    assert [n["id"] for n in again["items"]] == [n["id"] for n in first["items"] + rest["items"]]
    assert all(n["read"] is True for n in again["items"])
    assert (await client.get("/notify/notifications")).status_code == 401
    assert (await client.get("/notify/unread-count")).status_code == 401


async def notification_ids(database_url: str, user: Account) -> list[str]:
    """The user's notification ids, newest first, read without marking them."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT id FROM notifications WHERE user_id = $1 ORDER BY id DESC", int(user.id))
    finally:
        await conn.close()
    return [str(r["id"]) for r in rows]


async def test_mark_read_by_ids_and_all(client: httpx.AsyncClient, database_url: str) -> None:
    a, b = await signup(client), await signup(client)
    fans = [await signup(client) for _ in range(4)]
    for f in fans:
        assert (await f.post(f"/users/follow/{a.id}")).status_code == 200
    assert (await a.post(f"/users/follow/{b.id}")).status_code == 200
    await wait_unread(a, 4)
    await wait_unread(b, 1)
    ids = await notification_ids(database_url, a)
    (b_id,) = await notification_ids(database_url, b)

    r = await a.post("/notify/read", json={"ids": [ids[1], ids[3], b_id]})
    assert r.status_code == 204 and r.content == b""
    assert await unread(a) == 2
    assert await unread(b) == 1  # someone else's id is ignored, not marked
    assert [n["read"] for n in (await listing(a))["items"]] == [False, True, False, True]

    for f in fans[:2]:  # two more, then all at once
        assert (await f.delete(f"/users/follow/{a.id}")).status_code == 200
        assert (await f.post(f"/users/follow/{a.id}")).status_code == 200
    await wait_unread(a, 2)
    r = await a.post("/notify/read", json={"all": True})
    assert r.status_code == 204
    assert await unread(a) == 0 and await unread(b) == 1
    r = await a.post("/notify/read", json={"ids": []})
    assert r.status_code == 204

    for bad in (
        {},
        {"all": False},
        {"ids": ["abc"]},
        {"ids": ["-1"]},
        {"ids": "x"},
        {"ids": [1.5]},
        {"all": "yes"},
        [],
    ):
        r = await a.post("/notify/read", json=bad)
        assert r.status_code == 422 and error_code(r) == "validation_error", bad
    r = await client.post(
        "/notify/read", content=b"{not json", headers={**a.headers, "Content-Type": "application/json"}
    )
    assert r.status_code == 400 and error_code(r) == "bad_request"
    assert (await client.post("/notify/read", json={"all": True})).status_code == 401
    assert await unread(b) == 1


async def test_events_replayed_after_a_restart_notify_once(
    make_settings: Callable[..., Settings], database_url: str
) -> None:
    """A reader restarts from its stored position; rewound, it replays events, which
    must change nothing."""
    settings = make_settings()
    async with running_app(settings) as client:
        a, b = await signup(client), await signup(client)
        post_id = await new_post(a)
        assert (await b.post(f"/users/follow/{a.id}")).status_code == 200
        assert (await b.post(f"/posts/like/{post_id}")).status_code == 200
        await wait_unread(a, 3)
    conn = await asyncpg.connect(database_url)
    try:
        rewound = await conn.execute(
            """UPDATE outbox_positions p SET xid = o.xid, id = o.id - 1
               FROM (SELECT xid, id FROM outbox WHERE type = 'post.created' AND key = $1) o
               WHERE p.name = 'notifications'""",
            post_id,
        )
        assert rewound == "UPDATE 1"
        async with running_app(settings) as client:
            a.client = client

            async def replayed() -> bool:
                row = await conn.fetchrow(
                    """SELECT (p.xid, p.id) >= (o.xid, o.id) AS done FROM outbox_positions p,
                         (SELECT xid, id FROM outbox ORDER BY xid DESC, id DESC LIMIT 1) o
                       WHERE p.name = 'notifications'"""
                )
                return bool(row and row["done"])

            await wait_until(replayed, "the replay")
            assert await unread(a) == 3
            assert [n["type"] for n in (await listing(a))["items"]] == ["like", "follow", "post"]
    finally:
        await conn.close()


async def test_a_follow_is_pushed_live_on_the_users_channel(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(redis=True)
    async with running_app(settings) as client:
        a, b = await signup(client), await signup(client)
        r = aioredis.from_url(REDIS_URL)
        ps = r.pubsub()
        try:
            # The app's channel `user:<id>` is `<key_prefix>user:<id>` on the Redis wire.
            await ps.subscribe(f"{settings.redis.key_prefix}user:{a.id}")
            assert (await b.post(f"/users/follow/{a.id}")).status_code == 200
            end = time.monotonic() + DEADLINE
            message = None
            while message is None and time.monotonic() < end:
                message = await ps.get_message(ignore_subscribe_messages=True, timeout=0.5)
            assert message is not None, "no live notification"
            envelope = json.loads(message["data"])  # socialhub.domain.live.UserEvent: for every socket
            assert envelope["only_socket"] == 0 and envelope["exclude_socket"] == 0
            frame = envelope["frame"]
            assert frame["type"] == "notification" and set(frame) == {"type", "notification"}
            n = frame["notification"]
            assert n["type"] == "follow" and n["read"] is False
            assert n["actor"]["id"] == b.id and n["actor"]["username"] == b.username
            listed = (await listing(a))["items"]
            assert [x["id"] for x in listed] == [n["id"]]
            # Nothing else on the channel (one notification, one push).
            assert await ps.get_message(ignore_subscribe_messages=True, timeout=0.3) is None
        finally:
            await ps.aclose()
            await r.aclose()


async def test_mark_read_names_what_is_missing(client: httpx.AsyncClient) -> None:
    a = await signup(client)
    for body in ({}, {"all": False}, {"ids": None}):
        r = await a.post("/notify/read", json=body)
        assert r.status_code == 422, body
        assert r.json()["error"] == {
            "code": "validation_error",
            "message": "give ids or all: true",
            "fields": {"ids": "required unless all is true"},
        }, body
