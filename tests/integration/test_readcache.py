"""The read cache: every instance serves feed and post reads from memory, and every
change made on any instance shows on every other one at once.

Two instances share one PostgreSQL and one Redis, as behind a load balancer; the
reader reads on instance one (which fills its cache) while the writes go to instance
two, and each write must be visible on instance one within a second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest

from socialhub.config import Settings
from socialhub.domain.posts import PostRecord
from socialhub.infra.pubsub.memory import MemoryPubSub
from socialhub.services import readcache
from socialhub.services.readcache import Invalidation, PageMaker, ReadCache, ViewerState
from socialhub.storage.database import Database
from socialhub.storage.migrate import migrate
from socialhub.storage.posts import PostStore
from tests.conftest import Account, running_app, signup
from tests.private_redis import PrivateRedis

Check = Callable[[dict[str, Any]], bool]


@asynccontextmanager
async def two_instances(
    make_settings: Callable[..., Settings], **sections: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    settings = make_settings(redis=True, **sections)
    async with running_app(settings) as one, running_app(settings) as two:
        yield one, two


async def feed_of(client: httpx.AsyncClient, who: Account) -> dict[str, dict[str, Any]]:
    r = await client.get("/feed", headers=who.headers)
    assert r.status_code == 200, r.text
    return {p["id"]: p for p in r.json()["items"]}


async def until_feed(
    client: httpx.AsyncClient, who: Account, check: Callable[[dict[str, dict[str, Any]]], bool]
) -> None:
    """Poll the feed on `client` until `check` holds; fail after a second."""
    started = time.monotonic()
    while not check(await feed_of(client, who)):
        assert time.monotonic() - started < 1.0, "the other instance still serves the old state"
        await asyncio.sleep(0.01)


async def until_post(client: httpx.AsyncClient, who: Account, post_id: str, check: Check) -> dict[str, Any]:
    started = time.monotonic()
    while True:
        r = await client.get(f"/posts/{post_id}", headers=who.headers)
        if r.status_code == 200 and check(r.json()):
            return dict(r.json())
        assert time.monotonic() - started < 1.0, f"the other instance still serves the old state: {r.text}"
        await asyncio.sleep(0.01)


async def follows_with_post(one: httpx.AsyncClient) -> tuple[Account, Account, str]:
    """A reader following an author whose newest post is in the reader's feed. The
    author has posted a page full before it, so the reader's first page is made of the
    timeline alone: the kind of page an instance keeps whole."""
    author, reader = await signup(one), await signup(one)
    assert (await reader.post(f"/users/follow/{author.id}")).status_code == 200
    for i in range(20):
        assert (await author.post("/posts/", json={"content": f"earlier {i}"})).status_code == 201
    r = await author.post("/posts/", json={"content": "hello"})
    assert r.status_code == 201, r.text
    post_id: str = r.json()["id"]
    await until_feed(one, reader, lambda f: post_id in f)
    return author, reader, post_id


async def test_likes_comments_and_edits_on_one_instance_show_on_the_other(
    make_settings: Callable[..., Settings],
) -> None:
    async with two_instances(make_settings) as (one, two):
        author, reader, pid = await follows_with_post(one)
        other = await signup(two)
        assert (await feed_of(one, reader))[pid]["likes_count"] == 0  # cached on one
        assert (await two.post(f"/posts/like/{pid}", headers=other.headers)).status_code == 200
        await until_feed(one, reader, lambda f: f[pid]["likes_count"] == 1)
        await until_post(one, reader, pid, lambda p: p["likes_count"] == 1 and p["liked"] is False)

        r = await two.post(f"/posts/comment/{pid}", headers=other.headers, json={"content": "nice"})
        assert r.status_code == 201, r.text
        await until_feed(one, reader, lambda f: f[pid]["comments_count"] == 1)
        assert (await two.delete(f"/posts/comment/{r.json()['id']}", headers=other.headers)).status_code == 204
        await until_feed(one, reader, lambda f: f[pid]["comments_count"] == 0)

        assert (await two.patch(f"/posts/{pid}", headers=author.headers, json={"content": "edited"})).status_code == 200
        await until_feed(one, reader, lambda f: f[pid]["content"] == "edited")

        assert (await two.delete(f"/posts/like/{pid}", headers=other.headers)).status_code == 200
        await until_post(one, reader, pid, lambda p: p["likes_count"] == 0)

        assert (await two.delete(f"/posts/{pid}", headers=author.headers)).status_code == 204
        await until_feed(one, reader, lambda f: pid not in f)
        assert (await one.get(f"/posts/{pid}", headers=reader.headers)).status_code == 404


async def test_the_viewers_own_likes_and_follows_on_one_instance_show_on_the_other(
    make_settings: Callable[..., Settings],
) -> None:
    async with two_instances(make_settings) as (one, two):
        author, reader, pid = await follows_with_post(one)
        assert (await feed_of(one, reader))[pid]["liked"] is False
        assert (await two.post(f"/posts/like/{pid}", headers=reader.headers)).status_code == 200
        await until_feed(one, reader, lambda f: f[pid]["liked"] is True)
        await until_post(one, reader, pid, lambda p: p["liked"] is True)
        assert (await two.delete(f"/posts/like/{pid}", headers=reader.headers)).status_code == 200
        await until_feed(one, reader, lambda f: f[pid]["liked"] is False)

        assert (await two.delete(f"/users/follow/{author.id}", headers=reader.headers)).status_code == 200
        await until_feed(one, reader, lambda f: pid not in f)
        assert (await two.post(f"/users/follow/{author.id}", headers=reader.headers)).status_code == 200
        await until_feed(one, reader, lambda f: pid in f)


async def test_a_profile_edit_shows_in_the_authors_posts_on_every_instance(
    make_settings: Callable[..., Settings],
) -> None:
    async with two_instances(make_settings) as (one, two):
        author, reader, pid = await follows_with_post(one)
        assert (await feed_of(one, reader))[pid]["author"]["name"] == f"User {author.username}"
        r = await two.patch("/users/me", headers=author.headers, json={"name": "Renamed"})
        assert r.status_code == 200, r.text
        await until_feed(one, reader, lambda f: f[pid]["author"]["name"] == "Renamed")
        await until_post(one, reader, pid, lambda p: p["author"]["name"] == "Renamed")


async def test_posts_not_fanned_out_reach_followers_on_every_instance(make_settings: Callable[..., Settings]) -> None:
    """An account at the fan-out threshold posts; instance one, whose list of such
    accounts was read before, merges the post into the follower's feed at once."""
    async with two_instances(make_settings, feed={"fanout_threshold": 1}) as (one, two):
        author, reader = await signup(one), await signup(one)
        assert (await reader.post(f"/users/follow/{author.id}")).status_code == 200
        # A full timeline of the reader's own posts, so the page is not read from the
        # follow graph (which would find any post).
        own = [(await reader.post("/posts/", json={"content": str(i)})).json()["id"] for i in range(30)]
        await until_feed(one, reader, lambda f: len(f) == 20)
        assert set(await feed_of(one, reader)) <= set(own)  # one has read its list of big accounts
        r = await two.post("/posts/", headers=author.headers, json={"content": "from a big account"})
        assert r.status_code == 201, r.text
        pid = r.json()["id"]
        await until_feed(one, reader, lambda f: pid in f)


async def test_the_writers_own_instance_reads_its_writes_at_once(client: httpx.AsyncClient) -> None:
    author, reader = await signup(client), await signup(client)
    assert (await reader.post(f"/users/follow/{author.id}")).status_code == 200
    pid = (await author.post("/posts/", json={"content": "x"})).json()["id"]
    await until_feed(client, reader, lambda f: pid in f)
    for i in range(3):
        like = await reader.post(f"/posts/like/{pid}") if i % 2 == 0 else await reader.delete(f"/posts/like/{pid}")
        assert like.status_code == 200
        page = await feed_of(client, reader)
        assert page[pid]["liked"] is (i % 2 == 0)
        assert page[pid]["likes_count"] == (1 if i % 2 == 0 else 0)


async def test_with_the_cache_sized_zero_every_read_asks_postgresql(make_settings: Callable[..., Settings]) -> None:
    """`feed.cache_posts = 0` and `feed.cache_viewers = 0` turn the cache off: a change
    made behind the server's back (straight in PostgreSQL) shows on the next read."""
    settings = make_settings(feed={"cache_posts": 0, "cache_viewers": 0})
    async with running_app(settings) as client:
        _, reader, pid = await follows_with_post(client)
        assert (await feed_of(client, reader))[pid]["content"] == "hello"
        conn = await asyncpg.connect(settings.database.url)
        try:
            await conn.execute("UPDATE posts SET content = 'changed in SQL', likes_count = 7 WHERE id = $1", int(pid))
        finally:
            await conn.close()
        page = await feed_of(client, reader)
        assert page[pid]["content"] == "changed in SQL" and page[pid]["likes_count"] == 7
        post = (await client.get(f"/posts/{pid}", headers=reader.headers)).json()
        assert post["content"] == "changed in SQL"


async def test_likes_below_the_cached_window_are_asked_of_postgresql(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readcache, "LIKED_WINDOW", 3)
    author, reader = await signup(client), await signup(client)
    assert (await reader.post(f"/users/follow/{author.id}")).status_code == 200
    ids = [(await author.post("/posts/", json={"content": str(i)})).json()["id"] for i in range(6)]
    for pid in ids[::2]:  # the oldest, and two newer ones
        assert (await reader.post(f"/posts/like/{pid}")).status_code == 200
    await until_feed(client, reader, lambda f: len(f) == 6)
    page = await feed_of(client, reader)
    assert {pid for pid, p in page.items() if p["liked"]} == set(ids[::2])


async def until_ready(client: httpx.AsyncClient, status: int) -> None:
    started = time.monotonic()
    while (await client.get("/readyz")).status_code != status:
        assert time.monotonic() - started < 10, f"/readyz never answered {status}"
        await asyncio.sleep(0.05)


async def test_while_redis_is_down_reads_skip_the_cache_and_it_starts_empty_when_back(
    make_settings: Callable[..., Settings], private_redis: PrivateRedis
) -> None:
    """A change announced while an instance cannot hear it must not leave that
    instance serving what it cached before."""
    settings = make_settings(redis=private_redis.url)
    async with running_app(settings) as one, running_app(settings) as two:
        author, reader, pid = await follows_with_post(one)
        other = await signup(two)
        await until_post(one, reader, pid, lambda p: p["likes_count"] == 0)  # cached on one
        private_redis.kill()
        await until_ready(one, 503)
        await until_ready(two, 503)
        # Committed; its announcement cannot reach instance one.
        assert (await two.post(f"/posts/like/{pid}", headers=other.headers)).status_code == 200
        await until_post(one, reader, pid, lambda p: p["likes_count"] == 1)
        assert (
            await two.patch(f"/posts/{pid}", headers=author.headers, json={"content": "while down"})
        ).status_code == 200
        await until_post(one, reader, pid, lambda p: p["content"] == "while down")

        private_redis.start()  # empty: timelines are rebuilt, the caches start over
        await until_ready(one, 200)
        await until_feed(one, reader, lambda f: f[pid]["likes_count"] == 1 and f[pid]["content"] == "while down")
        assert (await two.delete(f"/posts/like/{pid}", headers=other.headers)).status_code == 200
        await until_feed(one, reader, lambda f: f[pid]["likes_count"] == 0)


# -- the cache itself -------------------------------------------------------------------


class PausingPosts(PostStore):
    """Holds a fill's read until told to go on, so a change can land in between."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.between: Callable[[], Awaitable[None]] | None = None

    async def get_post_records(self, ids: Any) -> list[PostRecord]:
        records = await super().get_post_records(ids)
        hook, self.between = self.between, None
        if hook is not None:
            await hook()
        return records


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    await migrate(database_url)
    database = Database()
    await database.open(database_url, min_size=1, max_size=4)
    yield database
    await database.close()


@asynccontextmanager
async def started_cache(store: PostStore, **limits: int) -> AsyncIterator[ReadCache]:
    pubsub = MemoryPubSub()
    await pubsub.start()
    cache = ReadCache(store, pubsub, "", max_posts=limits.get("max_posts", 100), max_viewers=10)
    await cache.start()
    try:
        yield cache
    finally:
        await cache.stop()
        await pubsub.close()


async def a_post(db: Database, content: str = "old") -> tuple[int, int]:
    uid = await db.fetchval(
        "INSERT INTO users (username, email, name, password_hash) VALUES "
        "('u' || socialhub_id(), socialhub_id() || '@example.test', 'n', 'x') RETURNING id"
    )
    pid = await db.fetchval("INSERT INTO posts (author_id, content) VALUES ($1, $2) RETURNING id", uid, content)
    return uid, pid


async def test_a_fill_that_read_before_a_change_does_not_store_what_it_read(db: Database) -> None:
    store = PausingPosts(db)
    async with started_cache(store) as cache:
        uid, pid = await a_post(db)
        viewer = await cache.viewer(uid)

        async def change() -> None:
            await db.execute("UPDATE posts SET content = 'new' WHERE id = $1", pid)
            await cache.changed(Invalidation(posts=[pid]))

        store.between = change
        first = await cache.posts([pid], viewer)
        assert first[pid].content == "old"  # what it read, handed to this one reader
        assert (await cache.posts([pid], viewer))[pid].content == "new"

        async def rename() -> None:
            await db.execute("UPDATE users SET name = 'renamed' WHERE id = $1", uid)
            await cache.changed(Invalidation(authors=[uid]))

        await cache.changed(Invalidation(posts=[pid]))
        store.between = rename
        assert (await cache.posts([pid], viewer))[pid].author.name == "n"
        assert (await cache.posts([pid], viewer))[pid].author.name == "renamed"


async def test_a_broker_reset_empties_the_cache(db: Database) -> None:
    async with started_cache(PostStore(db)) as cache:
        uid, pid = await a_post(db)
        viewer = await cache.viewer(uid)
        await cache.posts([pid], viewer)
        # A change announced while this instance was cut off from the broker:
        await db.execute("UPDATE posts SET content = 'missed' WHERE id = $1", pid)
        assert (await cache.posts([pid], viewer))[pid].content == "old"
        await cache._on_reset()  # what the pub/sub port calls when it is back
        assert (await cache.posts([pid], viewer))[pid].content == "missed"


async def test_the_cache_holds_at_most_its_size(db: Database) -> None:
    async with started_cache(PostStore(db), max_posts=5) as cache:
        made = [await a_post(db) for _ in range(12)]
        viewer = await cache.viewer(made[0][0])
        found = await cache.posts([pid for _, pid in made], viewer)
        assert len(found) == 12
        assert len(cache._posts) == 5
        assert sum(len(v) for v in cache._by_author.values()) == 5


# -- first feed pages, kept whole ----------------------------------------------------------


class Pages:
    """Makes first pages for `ReadCache.first_page`, as the feed does: from the cached
    posts, with a hook that runs while a page is being made."""

    def __init__(self, cache: ReadCache) -> None:
        self.cache = cache
        self.made = 0
        self.between: Callable[[], Awaitable[None]] | None = None

    def maker(self, ids: list[int], viewer: ViewerState, *, keep: bool = True) -> PageMaker:
        async def make() -> tuple[bytes, list[int] | None]:
            self.made += 1
            found = await self.cache.rendered(ids, viewer)
            hook, self.between = self.between, None
            if hook is not None:
                await hook()
            return b"[" + b",".join(found[i] for i in ids if i in found) + b"]", ids if keep else None

        return make


async def test_a_first_page_is_kept_until_a_post_it_shows_changes(db: Database) -> None:
    async with started_cache(PostStore(db)) as cache:
        uid, pid = await a_post(db)
        viewer = await cache.viewer(uid)
        pages = Pages(cache)
        first = bytes(await cache.first_page(uid, 20, [pid], viewer, pages.maker([pid], viewer)))
        assert b'"old"' in first
        assert bytes(await cache.first_page(uid, 20, [pid], viewer, pages.maker([pid], viewer))) == first
        assert pages.made == 1  # the second read was the kept page
        await db.execute("UPDATE posts SET content = 'new' WHERE id = $1", pid)
        await cache.changed(Invalidation(posts=[pid]))
        await asyncio.sleep(0.01)  # the cache hears its own announcement too
        assert b'"new"' in bytes(await cache.first_page(uid, 20, [pid], viewer, pages.maker([pid], viewer)))
        assert pages.made == 2
        # Other timeline ids, another size, or a page that says it is not to be kept: made afresh.
        await cache.first_page(uid, 20, [pid, 1], viewer, pages.maker([pid], viewer))
        assert pages.made == 3
        await cache.first_page(uid, 10, [pid, 1], viewer, pages.maker([pid], viewer))
        assert pages.made == 4
        await cache.first_page(uid, 20, [pid], viewer, pages.maker([pid], viewer, keep=False))
        await cache.first_page(uid, 20, [pid], viewer, pages.maker([pid], viewer))
        assert pages.made == 6
        # Cut off from the announcements (as while the broker is down): nothing kept is
        # served and nothing is kept.
        await cache.stop()
        await cache.first_page(uid, 20, [pid], viewer, pages.maker([pid], viewer))
        await cache.first_page(uid, 20, [pid], viewer, pages.maker([pid], viewer))
        assert pages.made == 8


async def test_a_first_page_made_while_what_it_shows_changed_is_not_kept(db: Database) -> None:
    """The post (or its author) changes while the page is being made, and another reader
    fills the cache again with the new state before the page is done: the page, made of
    what was read before, must not be kept."""
    async with started_cache(PostStore(db)) as cache:
        uid, pid = await a_post(db)
        viewer = await cache.viewer(uid)
        pages = Pages(cache)
        for change, new in [(Invalidation(posts=[pid]), b'"edited"'), (Invalidation(authors=[uid]), b'"renamed"')]:

            async def change_and_refill(change: Invalidation = change) -> None:
                await db.execute("UPDATE posts SET content = 'edited' WHERE id = $1", pid)
                await db.execute("UPDATE users SET name = 'renamed' WHERE id = $1", uid)
                await cache.changed(change)
                await asyncio.sleep(0.01)  # the cache hears its own announcement too
                await cache.posts([pid], viewer)

            pages.between = change_and_refill
            stale = bytes(await cache.first_page(uid, 20, [pid], viewer, pages.maker([pid], viewer)))
            assert new not in stale
            assert new in bytes(await cache.first_page(uid, 20, [pid], viewer, pages.maker([pid], viewer)))
            await db.execute("UPDATE posts SET content = 'old' WHERE id = $1", pid)
            await db.execute("UPDATE users SET name = 'n' WHERE id = $1", uid)
            await cache.changed(Invalidation(posts=[pid], authors=[uid]))


async def test_a_first_page_made_while_the_viewer_changed_is_not_kept(db: Database) -> None:
    async with started_cache(PostStore(db)) as cache:
        uid, pid = await a_post(db)
        viewer = await cache.viewer(uid)
        pages = Pages(cache)

        async def unfollow_everyone() -> None:
            await cache.changed(Invalidation(viewers=[uid]))

        pages.between = unfollow_everyone
        await cache.first_page(uid, 20, [pid], viewer, pages.maker([pid], viewer))
        # A request that read the viewer's state before the change, still running:
        await cache.first_page(uid, 20, [pid], viewer, pages.maker([pid], viewer))
        assert pages.made == 2
