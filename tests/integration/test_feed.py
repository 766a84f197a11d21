"""The home feed (GET /feed) against real PostgreSQL, with in-process and Redis timelines.

Fan-out is asynchronous (outbox -> feed consumer), so tests either poll with a deadline
or wait until the consumers' stored positions have passed the newest outbox event.
`events_held` pauses every outbox consumer deterministically: an open transaction with
an xid keeps later events invisible to readers (they only read below the oldest running
transaction), which is how "at once" is checked without racing the consumer.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
import redis.asyncio as aioredis

from socialhub.config import Settings
from socialhub.domain import events
from socialhub.domain.events import Envelope, PostCreated, PostData
from socialhub.domain.pages import PageRequest
from socialhub.domain.users import Principal
from socialhub.infra.kv.memory import MemoryTimelines, MemoryValues
from socialhub.infra.pubsub.memory import MemoryPubSub
from socialhub.services.feed import FeedService
from socialhub.services.readcache import ReadCache
from socialhub.storage.database import Database
from socialhub.storage.migrate import migrate
from socialhub.storage.posts import PostStore
from tests.conftest import REDIS_URL, Account, running_app, signup

DEADLINE = 10.0
FANOUT_THRESHOLD = 3


class App(msgspec.Struct):
    client: httpx.AsyncClient
    settings: Settings
    database_url: str
    redis: aioredis.Redis | None

    async def timeline(self, user_id: str) -> list[int] | None:
        """The user's Redis timeline (ids, newest first), None without Redis or timeline."""
        if self.redis is None:
            return None
        key = f"{self.settings.redis.key_prefix}tl:tl:{user_id}"
        if not await self.redis.exists(key):
            return None
        members = await self.redis.zrevrange(key, 0, -1)
        return [int(m) for m in members if m != b"-"]


@pytest.fixture(params=[False, True], ids=["memory", "redis"])
async def app(
    request: pytest.FixtureRequest, make_settings: Callable[..., Settings], database_url: str
) -> AsyncIterator[App]:
    settings = make_settings(redis=request.param, feed={"fanout_threshold": FANOUT_THRESHOLD})
    r = aioredis.from_url(REDIS_URL) if request.param else None
    try:
        async with running_app(settings) as client:
            yield App(client=client, settings=settings, database_url=database_url, redis=r)
    finally:
        if r is not None:
            await r.aclose()


async def wait_until(check: Callable[[], Awaitable[bool]], what: str, seconds: float = DEADLINE) -> None:
    end = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def caught_up(database_url: str, seconds: float = DEADLINE) -> None:
    """Wait until the feed and notifications consumers are past the newest outbox event."""
    conn = await asyncpg.connect(database_url)
    try:

        async def check() -> bool:
            row = await conn.fetchrow(
                """SELECT count(*) AS readers, bool_and((p.xid, p.id) >= (o.xid, o.id)) AS done
                   FROM outbox_positions p,
                        (SELECT xid, id FROM outbox ORDER BY xid DESC, id DESC LIMIT 1) o
                   WHERE p.name IN ('feed', 'notifications')"""
            )
            assert row is not None
            return bool(row["readers"] == 2 and row["done"])

        await wait_until(check, "the consumers to catch up", seconds)
    finally:
        await conn.close()


@asynccontextmanager
async def events_held(database_url: str) -> AsyncIterator[None]:
    """No outbox event committed inside this block reaches a consumer until it ends."""
    conn = await asyncpg.connect(database_url)
    try:
        tx = conn.transaction()
        await tx.start()
        await conn.fetchval("SELECT pg_current_xact_id()")  # take an xid: readers stop below it
        try:
            yield
        finally:
            await tx.rollback()
    finally:
        await conn.close()


async def new_post(a: Account, content: str) -> str:
    r = await a.post("/posts/", json={"content": content})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def follow(a: Account, b: Account) -> None:
    r = await a.post(f"/users/follow/{b.id}")
    assert r.status_code == 200, r.text


async def feed(a: Account, **params: Any) -> dict[str, Any]:
    r = await a.get("/feed", params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert set(body) == {"items", "next"}
    return body


async def feed_ids(a: Account, **params: Any) -> list[str]:
    return [p["id"] for p in (await feed(a, **params))["items"]]


async def all_feed_ids(a: Account, limit: int) -> list[str]:
    """Every page, following `next`; each page newest first and no id twice."""
    seen: list[str] = []
    before: str | None = None
    for _ in range(1000):
        params: dict[str, Any] = {"limit": limit}
        if before is not None:
            params["before"] = before
        page = await feed(a, **params)
        ids = [p["id"] for p in page["items"]]
        assert len(ids) <= limit
        assert ids == sorted(ids, key=int, reverse=True), "a page is not newest first"
        if seen and ids:
            assert int(ids[0]) < int(seen[-1]), "pages overlap or go back in time"
        seen += ids
        if page["next"] is None:
            break
        assert page["next"] == ids[-1]
        before = page["next"]
    assert len(seen) == len(set(seen)), "an id came twice"
    return seen


def newest_first(ids: list[str]) -> list[str]:
    return sorted(ids, key=int, reverse=True)


async def test_followed_and_own_posts_reach_the_feed_newest_first(app: App) -> None:
    c = app.client
    a, b, stranger = await signup(c), await signup(c), await signup(c)
    await follow(b, a)
    assert await feed_ids(b) == []  # b's timeline now exists: new posts are fanned out to it
    p1 = await new_post(a, "one")
    p2 = await new_post(a, "two")
    p3 = await new_post(b, "mine")
    p4 = await new_post(a, "four")
    p5 = await new_post(stranger, "not followed")
    expected = [p4, p3, p2, p1]

    async def b_sees_all() -> bool:
        return await feed_ids(b) == expected

    await wait_until(b_sees_all, "b's feed to show the followed and own posts")
    items = (await feed(b))["items"]
    assert items[0]["author"]["id"] == a.id and items[0]["author"]["username"] == a.username
    assert items[0]["content"] == "four" and items[0]["liked"] is False and items[0]["media"] == []
    assert await feed_ids(a) == [p4, p2, p1]
    assert await feed_ids(stranger) == [p5]
    await caught_up(app.database_url)
    tl = await app.timeline(b.id)
    if tl is not None:  # Redis: the posts really were fanned out into b's timeline
        assert tl == [int(i) for i in expected]


async def test_pagination_has_no_duplicates_or_gaps(app: App) -> None:
    c = app.client
    a, warm, cold, stranger = await signup(c), await signup(c), await signup(c), await signup(c)
    await follow(warm, a)
    await follow(cold, a)
    await feed_ids(warm)  # built before the posts: filled by fan-out; cold is rebuilt on first read
    await new_post(stranger, "noise")
    posts = []
    for i in range(25):
        author = warm if i % 5 == 0 else a
        posts.append(await new_post(author, f"post {i}"))
    await caught_up(app.database_url)
    expected = newest_first(posts)
    for limit in (7, 10, 100):
        assert await all_feed_ids(warm, limit) == expected, limit
    mine_and_a = newest_first([p for i, p in enumerate(posts) if i % 5 != 0])
    assert await all_feed_ids(cold, 6) == mine_and_a
    assert await all_feed_ids(cold, 20) == mine_and_a
    assert await feed_ids(warm, before=expected[3], limit=2) == expected[4:6]
    page = await feed(warm)
    assert [p["id"] for p in page["items"]] == expected[:20] and page["next"] == expected[19]
    last = await feed(warm, before=expected[19])
    assert [p["id"] for p in last["items"]] == expected[20:] and last["next"] is None


async def test_a_never_built_timeline_is_rebuilt_on_first_read(app: App) -> None:
    c = app.client
    a, a2, reader = await signup(c), await signup(c), await signup(c)
    await follow(reader, a)
    await follow(reader, a2)
    posts = [await new_post(a if i % 2 else a2, f"p{i}") for i in range(30)]
    posts += [await new_post(reader, "own")]
    await caught_up(app.database_url)
    assert await app.timeline(reader.id) is None  # fan-out never created it
    expected = newest_first(posts)
    page = await feed(reader)
    assert [p["id"] for p in page["items"]] == expected[:20]
    assert await feed_ids(reader, before=page["next"]) == expected[20:]
    tl = await app.timeline(reader.id)
    if tl is not None:
        assert tl == [int(i) for i in expected]


async def test_a_deleted_post_disappears_at_once(app: App) -> None:
    c = app.client
    a, b = await signup(c), await signup(c)
    await follow(b, a)
    await feed_ids(b)
    old = [await new_post(a, f"old {i}") for i in range(3)]
    new = [await new_post(a, f"new {i}") for i in range(30)]
    await caught_up(app.database_url)
    assert await feed_ids(b, limit=3) == newest_first(new)[:3]
    async with events_held(app.database_url):
        # The feed consumer has not seen the deletes: reads alone must hide them, and
        # the older posts behind them must still fill the page.
        r = await a.delete(f"/posts/{new[-1]}")
        assert r.status_code == 204
        assert new[-1] not in await feed_ids(b)
        assert new[-1] not in await feed_ids(a)
        assert (await b.get(f"/posts/{new[-1]}")).status_code == 404
        for p in new[:-1]:
            assert (await a.delete(f"/posts/{p}")).status_code == 204
        assert await feed_ids(b) == newest_first(old)
        assert await feed_ids(a, limit=2) == newest_first(old)[:2]
        assert await all_feed_ids(b, 2) == newest_first(old)
    await caught_up(app.database_url)
    assert await feed_ids(b) == newest_first(old)
    tl = await app.timeline(b.id)
    if tl is not None:
        assert tl == [int(i) for i in newest_first(old)]


async def test_unfollow_removes_the_authors_posts_at_once(app: App) -> None:
    c = app.client
    a, other, b = await signup(c), await signup(c), await signup(c)
    await follow(b, a)
    await follow(b, other)
    await feed_ids(b)
    kept = [await new_post(other, f"kept {i}") for i in range(3)]
    gone = [await new_post(a, f"gone {i}") for i in range(30)]
    await caught_up(app.database_url)
    assert await feed_ids(b, limit=3) == newest_first(gone)[:3]
    async with events_held(app.database_url):
        r = await b.delete(f"/users/follow/{a.id}")
        assert r.status_code == 200 and r.json() == {"following": False}
        assert await feed_ids(b) == newest_first(kept)
        assert await all_feed_ids(b, 2) == newest_first(kept)
    later = await new_post(a, "after the unfollow")
    kept.append(await new_post(other, "still followed"))
    await caught_up(app.database_url)
    ids = await feed_ids(b)
    assert ids == newest_first(kept) and later not in ids
    tl = await app.timeline(b.id)
    if tl is not None:
        assert tl == [int(i) for i in newest_first(kept)]
    # The author still sees everything of their own.
    assert set(await all_feed_ids(a, 100)) == {*gone, later}


async def test_pages_past_the_cap_come_from_postgres(app: App) -> None:
    c = app.client
    author, reader, warm = await signup(c), await signup(c), await signup(c)
    await follow(reader, author)
    await follow(warm, author)
    await feed_ids(warm)
    conn = await asyncpg.connect(app.database_url)
    try:
        rows = await conn.fetch(
            """INSERT INTO posts (author_id, content)
               SELECT $1, 'bulk ' || g FROM generate_series(1, 450) g RETURNING id""",
            int(author.id),
        )
    finally:
        await conn.close()
    bulk = newest_first([str(r["id"]) for r in rows])
    assert len(set(bulk)) == 450
    # reader's first read rebuilds a timeline of the newest 400; the rest is past the cap.
    assert await all_feed_ids(reader, 100) == bulk
    assert await all_feed_ids(reader, 33) == bulk
    assert await feed_ids(reader, limit=1000) == bulk[:100]  # limit is capped at 100
    # warm's timeline predates the rows (no events for them): the database fills in.
    assert await all_feed_ids(warm, 100) == bulk
    tl = await app.timeline(reader.id)
    if tl is not None:
        assert tl == [int(i) for i in bulk[:400]]
    newest = await new_post(author, "one more")
    await caught_up(app.database_url)
    assert await all_feed_ids(reader, 100) == [newest, *bulk]
    tl = await app.timeline(reader.id)
    if tl is not None:  # fanned out, and trimmed back to the cap
        assert tl == [int(i) for i in [newest, *bulk][:400]]


async def test_an_author_above_the_threshold_is_merged_at_read_time(app: App) -> None:
    c = app.client
    star, normal = await signup(c), await signup(c)
    fans = [await signup(c) for _ in range(FANOUT_THRESHOLD)]
    stranger = await signup(c)
    for f in fans:
        await follow(f, star)
    await follow(fans[0], normal)
    for f in (star, fans[0], fans[1]):
        await feed_ids(f)  # timelines exist, so a fan-out would land in them
    star_posts, normal_posts = [], []
    for i in range(6):
        star_posts.append(await new_post(star, f"star {i}"))
        normal_posts.append(await new_post(normal, f"normal {i}"))
    await caught_up(app.database_url)
    both = newest_first(star_posts + normal_posts)
    for limit in (4, 5, 20):
        assert await all_feed_ids(fans[0], limit) == both, limit
    assert await all_feed_ids(fans[1], 4) == newest_first(star_posts)
    assert await all_feed_ids(fans[2], 4) == newest_first(star_posts)  # cold: rebuilt without the star
    assert await feed_ids(star) == newest_first(star_posts)
    assert await feed_ids(stranger) == []
    tl0, tl1, tls = await app.timeline(fans[0].id), await app.timeline(fans[1].id), await app.timeline(star.id)
    if tl0 is not None:  # Redis: the star's posts were not fanned out, only kept in their own timeline
        assert tl0 == [int(i) for i in newest_first(normal_posts)]
        assert tl1 == []
        assert tls == [int(i) for i in newest_first(star_posts)]


async def test_nobody_sees_posts_of_people_they_do_not_follow(app: App) -> None:
    c = app.client
    a, b, c_, d = await signup(c), await signup(c), await signup(c), await signup(c)
    await follow(b, a)
    await follow(c_, b)  # follows are not transitive
    for x in (a, b, c_, d):
        await feed_ids(x)
    pa = await new_post(a, "a")
    pb = await new_post(b, "b")
    await caught_up(app.database_url)
    assert await feed_ids(a) == [pa]
    assert await feed_ids(b) == [pb, pa]
    assert await feed_ids(c_) == [pb]
    assert await feed_ids(d) == []
    assert (await c.get("/feed")).status_code == 401
    for bad in ({"limit": "0"}, {"limit": "abc"}, {"limit": "-5"}, {"before": "abc"}):
        r = await a.get("/feed", params=bad)
        assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error", bad


async def test_following_someone_brings_all_their_posts_without_gaps(app: App) -> None:
    c = app.client
    a, b = await signup(c), await signup(c)
    await feed_ids(b)
    theirs, mine = [], []
    for i in range(60):  # interleaved in time, so b's timeline spans a's older posts
        theirs.append(await new_post(a, f"a {i}"))
        mine.append(await new_post(b, f"b {i}"))
    await caught_up(app.database_url)
    assert await all_feed_ids(b, 20) == newest_first(mine)
    await follow(b, a)
    await caught_up(app.database_url)
    assert await all_feed_ids(b, 20) == newest_first(theirs + mine)


async def test_an_author_falling_below_the_threshold_keeps_their_posts_in_feeds(app: App) -> None:
    c = app.client
    star, normal = await signup(c), await signup(c)
    fans = [await signup(c) for _ in range(FANOUT_THRESHOLD)]
    for f in fans:
        await follow(f, star)
    await follow(fans[0], normal)
    await feed_ids(fans[0])
    posts = []
    for i in range(40):
        posts.append(await new_post(normal, f"normal {i}"))
        if i % 4 == 0:
            posts.append(await new_post(star, f"star {i}"))
    await caught_up(app.database_url)
    assert await all_feed_ids(fans[0], 20) == newest_first(posts)
    r = await fans[2].delete(f"/users/follow/{star.id}")
    assert r.status_code == 200
    await caught_up(app.database_url)
    # The star now has fewer followers than the threshold: their posts, never fanned
    # out, must still reach the followers they have.
    assert await all_feed_ids(fans[0], 20) == newest_first(posts)


class PausingPosts(PostStore):
    """Runs `between` right after the first rebuild query (to interleave a commit and
    the consumer with a timeline rebuild)."""

    between: Callable[[], Awaitable[None]] | None = None

    async def get_home_ids(self, viewer_id: int, limit: int) -> list[int]:
        ids = await super().get_home_ids(viewer_id, limit)
        hook, self.between = self.between, None
        if hook is not None:
            await hook()
        return ids


async def test_a_rebuild_misses_no_post_committed_late_with_a_smaller_id(database_url: str) -> None:
    """Ids are taken at insert, so a post may commit after newer ones. If it commits
    during a rebuild and the consumer handles it before the timeline exists, the
    rebuild itself must still hold it."""
    await migrate(database_url)
    db = Database()
    await db.open(database_url, min_size=1, max_size=4)
    try:
        author, reader = await insert_user(db), await insert_user(db)
        await db.execute("INSERT INTO follows (follower_id, followee_id) VALUES ($1, $2)", reader, author)
        older = [await insert_post(db, author) for _ in range(30)]
        async with db.acquire() as t1:
            tx = t1.transaction()
            await tx.start()
            late = await t1.fetchval("INSERT INTO posts (author_id, content) VALUES ($1, 'late') RETURNING id", author)
            newer = [await insert_post(db, author) for _ in range(30)]
            store = PausingPosts(db)
            pubsub = MemoryPubSub()
            await pubsub.start()
            cache = ReadCache(store, pubsub, "", max_posts=1000, max_viewers=10)
            await cache.start()
            feed = FeedService(posts=store, timelines=MemoryTimelines(), values=MemoryValues(), cache=cache)

            async def commit_and_consume() -> None:
                await tx.commit()
                data = PostData(post_id=str(late), author_id=str(author))
                event = PostCreated(id="1", occurred_at="", actor_id=str(author), data=data)
                await feed.handle(Envelope(topic=events.POSTS, key=str(late), event=event))

            store.between = commit_and_consume
            viewer = Principal(user_id=reader, session_id=0)
            seen: list[int] = []
            page = msgspec.json.decode(await feed.home(viewer, PageRequest(limit=20)))
            seen += [int(p["id"]) for p in page["items"]]
            while page["next"] is not None:
                page = msgspec.json.decode(await feed.home(viewer, PageRequest(limit=20, before=int(page["next"]))))
                seen += [int(p["id"]) for p in page["items"]]
        assert seen == sorted([*older, late, *newer], reverse=True)
    finally:
        await db.close()


async def insert_user(db: Database) -> int:
    u = "u" + secrets.token_hex(6)
    uid: int = await db.fetchval(
        "INSERT INTO users (username, email, name, password_hash) VALUES ($1, $2, $1, 'x') RETURNING id",
        u,
        f"{u}@example.test",
    )
    return uid


async def insert_post(db: Database, author: int) -> int:
    pid: int = await db.fetchval("INSERT INTO posts (author_id, content) VALUES ($1, 'x') RETURNING id", author)
    return pid
