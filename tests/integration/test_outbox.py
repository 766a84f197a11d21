"""The transactional outbox and its readers against a real PostgreSQL.

The write tests use the app (session database). The reader tests use a database of
their own, because they write synthetic events that the session's consumers must
never see.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import msgspec
import pytest

from socialhub.domain import events
from socialhub.domain.delivery import OutboxEntry, Position
from socialhub.domain.events import Envelope, NewEvent, PostCreated
from socialhub.domain.pages import PageRequest
from socialhub.domain.users import Principal
from socialhub.infra.events.base import Consumer
from socialhub.infra.events.outbox import POLL_SECONDS, OutboxSource
from socialhub.infra.kv.base import Timelines
from socialhub.infra.kv.memory import MemoryTimelines, MemoryValues
from socialhub.infra.kv.redis import RedisTimelines, RedisValues
from socialhub.infra.pubsub.memory import MemoryPubSub
from socialhub.infra.redis_client import client_from_url
from socialhub.services.feed import TIMELINE_CAP, FeedService, timeline_key
from socialhub.services.notifications import NotificationService
from socialhub.services.readcache import ReadCache
from socialhub.storage.database import Database
from socialhub.storage.deadletters import DeadLetterStore
from socialhub.storage.notifications import NotificationStore
from socialhub.storage.outbox import OutboxStore, insert_event
from socialhub.storage.posts import PostStore
from socialhub.storage.units import UnitOfWork, Units
from tests.conftest import REDIS_URL, migrated_database, pool, signup

DEADLINE = 10.0
RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


async def wait_until(check: Callable[[], Awaitable[bool]], what: str, seconds: float = DEADLINE) -> None:
    end = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def read_all(store: OutboxStore, after: Position, count: int) -> list[OutboxEntry]:
    """Read in batches from `after` until `count` events came (commit visibility lags
    while any older transaction in the cluster is still open)."""
    got: list[OutboxEntry] = []
    end = time.monotonic() + DEADLINE
    while len(got) < count:
        batch = await store.get_batch(got[-1].position if got else after, 100)
        got += batch
        if not batch:
            if time.monotonic() > end:
                raise AssertionError(f"only {len(got)} of {count} events became readable")
            await asyncio.sleep(0.02)
    return got


def _readable(entry: OutboxEntry) -> Envelope:
    assert isinstance(entry.envelope, Envelope), entry.envelope
    return entry.envelope


async def outbox_head(db: Database) -> Position:
    row = await db.fetchrow("SELECT xid::text::bigint AS xid, id FROM outbox ORDER BY xid DESC, id DESC LIMIT 1")
    return Position(row["xid"], row["id"]) if row else Position(0, 0)


# -- every write, one event --------------------------------------------------------------


@pytest.fixture
async def session_db(database_url: str) -> AsyncIterator[Database]:
    db = Database()
    await db.open(database_url, min_size=1, max_size=4)
    try:
        yield db
    finally:
        await db.close()


def wire(envelope: Envelope) -> dict[str, Any]:
    value: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(envelope.event))
    return value


async def test_every_write_stores_exactly_one_event_of_the_spec_shape(
    client: httpx.AsyncClient, session_db: Database
) -> None:
    store = OutboxStore(session_db)
    a, b = await signup(client), await signup(client)
    start = await outbox_head(session_db)

    async def ok(r: Awaitable[httpx.Response], status: int = 200) -> dict[str, Any]:
        resp = await r
        assert resp.status_code == status, resp.text
        body: dict[str, Any] = resp.json() if resp.content else {}
        return body

    post_id = (await ok(a.post("/posts/", json={"content": "hi"}), 201))["id"]
    await ok(b.post(f"/users/follow/{a.id}"))
    await ok(b.post(f"/users/follow/{a.id}"))  # no change, no event
    comment_id = (await ok(b.post(f"/posts/comment/{post_id}", json={"content": "yo"}), 201))["id"]
    await ok(b.post(f"/posts/like/{post_id}"))
    await ok(b.post(f"/posts/like/{post_id}"))  # a repeated like: no event
    await ok(b.delete(f"/posts/like/{post_id}"))  # unlike: no event type
    await ok(b.delete(f"/users/follow/{a.id}"))
    await ok(b.delete(f"/users/follow/{a.id}"))
    # Refused writes leave nothing.
    await ok(b.delete(f"/posts/{post_id}"), 403)
    await ok(b.post("/posts/like/999999999999"), 404)
    await ok(b.post("/posts/comment/999999999999", json={"content": "x"}), 404)
    await ok(b.post("/posts/", json={"content": ""}), 422)
    await ok(b.post(f"/users/follow/{b.id}"), 422)
    await ok(a.delete(f"/posts/{post_id}"), 204)

    expected = [
        ("posts", post_id, "post.created", a, {"post_id": post_id, "author_id": a.id}),
        ("users", b.id, "follow.created", b, {"follower_id": b.id, "followee_id": a.id}),
        (
            "posts",
            post_id,
            "comment.created",
            b,
            {"post_id": post_id, "comment_id": comment_id, "post_author_id": a.id},
        ),
        ("posts", post_id, "like.created", b, {"post_id": post_id, "post_author_id": a.id}),
        ("users", b.id, "unfollow.created", b, {"follower_id": b.id, "followee_id": a.id}),
        ("posts", post_id, "post.deleted", a, {"post_id": post_id, "author_id": a.id}),
    ]
    got = await read_all(store, start, len(expected))
    await asyncio.sleep(0.1)
    got += await store.get_batch(got[-1].position, 100)
    assert len(got) == len(expected), [_readable(g).event.type for g in got]
    for entry, (topic, key, type_, actor, data) in zip(got, expected, strict=True):
        envelope = _readable(entry)
        assert (envelope.topic, envelope.key, envelope.event.type) == (topic, key, type_)
        value = wire(envelope)
        assert set(value) == {"id", "type", "occurred_at", "actor_id", "data"}
        assert value["type"] == type_ and value["actor_id"] == actor.id and value["data"] == data
        assert value["id"].isdigit() and RFC3339_MS.match(value["occurred_at"]), value
    assert len({_readable(g).event.id for g in got}) == len(got)
    count = await session_db.fetchval(
        "SELECT count(*) FROM outbox WHERE actor_id = ANY($1::bigint[])", [int(a.id), int(b.id)]
    )
    assert count == len(expected)


# -- readers, on a database of their own ---------------------------------------------------


@pytest.fixture(scope="module")
async def outbox_url() -> AsyncIterator[str]:
    async with migrated_database("socialhub_outbox") as url:
        yield url


@pytest.fixture
async def db(outbox_url: str) -> AsyncIterator[Database]:
    async with pool(outbox_url, min_size=1, max_size=8) as database:
        yield database


def synthetic(n: int) -> NewEvent:
    return events.post_created(1, n)


async def emit(db: Database, *ns: int) -> list[int]:
    """Commit one transaction writing these events; their ids."""
    async with Units(db).begin() as uow:
        return [await insert_event(uow, synthetic(n)) for n in ns]


async def test_a_rolled_back_transaction_leaves_no_event(db: Database) -> None:
    store = OutboxStore(db)
    start = await outbox_head(db)
    with pytest.raises(RuntimeError):
        async with Units(db).begin() as uow:
            await insert_event(uow, synthetic(1))
            raise RuntimeError("the change failed after its event was written")
    (kept,) = await emit(db, 2)
    got = await read_all(store, start, 1)
    assert [g.position.id for g in got] == [kept]
    later = "SELECT count(*) FROM outbox WHERE (xid::text::bigint, id) > ($1, $2)"
    assert await db.fetchval(later, start.xid, start.id) == 1


async def test_an_event_committed_late_by_an_older_transaction_is_not_skipped(db: Database) -> None:
    store = OutboxStore(db)
    start = await outbox_head(db)
    async with db.acquire() as t1:
        tx1 = t1.transaction()
        await tx1.start()
        try:
            await t1.fetchval("SELECT pg_current_xact_id()")  # T1 gets the older xid
            (second,) = await emit(db, 2)  # T2 commits first
            (first,) = [await insert_event(UnitOfWork(t1), synthetic(1))]  # ... and has the smaller id
            assert first > second
            await asyncio.sleep(0.05)
            # A reader that took T2's event now would move past T1's xid and skip T1's.
            assert await store.get_batch(start, 100) == []
        except BaseException:
            await tx1.rollback()
            raise
        await tx1.commit()
    got = await read_all(store, start, 2)
    assert [g.position.id for g in got] == [first, second]
    assert got[0].position < got[1].position


class Recorder(Consumer):
    """Records what it is given; optionally fails once, or blocks, on given events."""

    def __init__(self, name: str, log: list[tuple[str, int]], tag: str = "") -> None:
        self.name = name
        self.log = log
        self.tag = tag
        self.fail_once: set[int] = set()
        self.hold: dict[int, asyncio.Event] = {}
        self.reached: dict[int, asyncio.Event] = {}

    async def handle(self, envelope: Envelope) -> None:
        assert isinstance(envelope.event, PostCreated)
        n = int(envelope.event.data.post_id)
        self.log.append((self.tag, n))
        if n in self.reached:
            self.reached[n].set()
        if n in self.hold:
            await self.hold[n].wait()
        if n in self.fail_once:
            self.fail_once.discard(n)
            raise RuntimeError(f"consumer failed on {n}")


async def run_source(source: OutboxSource) -> tuple[asyncio.Event, asyncio.Task[None]]:
    stop = asyncio.Event()
    return stop, asyncio.create_task(source.run(stop))


async def stop_source(stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    stop.set()
    await asyncio.wait_for(task, 10)


async def wait_active(source: OutboxSource) -> None:
    async def active() -> bool:
        return source.active

    await wait_until(active, "the reader to become active")


def ns_in(log: list[tuple[str, int]], wanted: set[int]) -> list[int]:
    return [n for _, n in log if n in wanted]


async def test_two_readers_of_one_consumer_handle_each_event_once(db: Database, outbox_url: str) -> None:
    name = "rec-" + secrets.token_hex(4)
    other_db = Database()  # a second instance: its own pool
    await other_db.open(outbox_url, min_size=1, max_size=4)
    log: list[tuple[str, int]] = []
    s1 = OutboxSource(OutboxStore(db), Recorder(name, log, "one"), dead_letters=DeadLetterStore(db))
    s2 = OutboxSource(OutboxStore(other_db), Recorder(name, log, "two"), dead_letters=DeadLetterStore(other_db))
    base = secrets.randbelow(10**9) * 1000
    try:
        r1 = await run_source(s1)
        await wait_active(s1)
        r2 = await run_source(s2)
        batch1 = list(range(base, base + 60))
        for i in range(0, 60, 6):
            await emit(db, *batch1[i : i + 6])

        async def all_seen() -> bool:
            return len(ns_in(log, set(batch1))) >= 60

        await wait_until(all_seen, "every event handled")
        await asyncio.sleep(0.3)
        assert s1.active and not s2.active
        assert ns_in(log, set(batch1)) == batch1  # once each, in order
        assert {tag for tag, n in log if n in set(batch1)} == {"one"}

        # The active reader goes away; the standby takes over from the stored position.
        await stop_source(*r1)
        batch2 = list(range(base + 100, base + 110))
        await emit(db, *batch2)

        async def taken_over() -> bool:
            return len(ns_in(log, set(batch2))) >= 10

        await wait_until(taken_over, "the standby to take over")
        assert s2.active
        await asyncio.sleep(0.2)
        assert ns_in(log, set(batch1 + batch2)) == batch1 + batch2
        assert {tag for tag, n in log if n in set(batch2)} == {"two"}
        await stop_source(*r2)
    finally:
        await other_db.close()


async def test_a_consumer_that_raises_gets_the_batch_again(db: Database) -> None:
    name = "rec-" + secrets.token_hex(4)
    log: list[tuple[str, int]] = []
    consumer = Recorder(name, log)
    source = OutboxSource(OutboxStore(db), consumer, dead_letters=DeadLetterStore(db))
    base = secrets.randbelow(10**9) * 1000
    ns = [base + 1, base + 2, base + 3]
    consumer.fail_once = {ns[1]}
    stop, task = await run_source(source)
    try:
        await emit(db, *ns)

        async def done() -> bool:
            return ns[2] in ns_in(log, set(ns))

        await wait_until(done, "the batch to go through after the failure")
        # The failed batch is delivered again from its start: at least once, in order.
        assert ns_in(log, set(ns)) == [ns[0], ns[1], ns[0], ns[1], ns[2]]
        eid = (await OutboxStore(db).get_position(name)).id
        assert eid == max(await db.fetchval("SELECT array_agg(id) FROM outbox WHERE key = $1", str(ns[2])))
    finally:
        await stop_source(stop, task)


async def test_a_notify_during_a_batch_is_not_lost(db: Database) -> None:
    """An event committed while the reader handles a batch is read right after it,
    not a poll interval later."""
    name = "rec-" + secrets.token_hex(4)
    log: list[tuple[str, int]] = []
    consumer = Recorder(name, log)
    source = OutboxSource(OutboxStore(db), consumer, dead_letters=DeadLetterStore(db))
    base = secrets.randbelow(10**9) * 1000
    first, second = base + 1, base + 2
    consumer.hold[first] = asyncio.Event()
    consumer.reached[first] = asyncio.Event()
    stop, task = await run_source(source)
    try:
        await wait_active(source)
        await emit(db, first)
        await asyncio.wait_for(consumer.reached[first].wait(), DEADLINE)
        await emit(db, second)  # its NOTIFY arrives while `first` is being handled
        await asyncio.sleep(0.1)
        released = time.monotonic()
        consumer.hold[first].set()

        async def seen() -> bool:
            return second in ns_in(log, {second})

        await wait_until(seen, "the second event")
        assert time.monotonic() - released < POLL_SECONDS / 2
    finally:
        await stop_source(stop, task)


# -- consumers: a second delivery is a no-op --------------------------------------------------


async def make_user(db: Database, name: str) -> int:
    u = name + secrets.token_hex(4)
    uid: int = await db.fetchval(
        "INSERT INTO users (username, email, name, password_hash) VALUES ($1, $2, $3, 'x') RETURNING id",
        u,
        f"{u}@example.test",
        u,
    )
    return uid


async def envelopes_of(db: Database, *new: NewEvent) -> list[Envelope]:
    start = await outbox_head(db)
    async with Units(db).begin() as uow:
        for e in new:
            await insert_event(uow, e)
    return [_readable(g) for g in await read_all(OutboxStore(db), start, len(new))]


async def test_an_event_delivered_twice_makes_one_notification(db: Database) -> None:
    author, fan = await make_user(db, "au"), await make_user(db, "fan")
    pubsub = MemoryPubSub()
    await pubsub.start()
    pushed: list[bytes] = []

    async def got(channel: str, payload: bytes) -> None:
        pushed.append(payload)

    sub = await pubsub.subscribe(f"user:{author}", got)
    service = NotificationService(store=NotificationStore(db), pubsub=pubsub)
    try:
        post_id = await db.fetchval("INSERT INTO posts (author_id, content) VALUES ($1, 'x') RETURNING id", author)
        follow, like = await envelopes_of(
            db, events.follow_created(fan, author), events.like_created(fan, post_id, author)
        )
        for envelope in (follow, like, follow, like):
            await service.handle(envelope)
        await service.handle_batch([like, follow])
        rows = await db.fetch("SELECT type, event_id FROM notifications WHERE user_id = $1 ORDER BY id", author)
        assert [(r["type"], r["event_id"]) for r in rows] == [
            ("follow", follow.event.event_id),
            ("like", like.event.event_id),
        ]
        await asyncio.sleep(0.1)
        assert len(pushed) == 2  # and pushed live once each
        page = await service.page(Principal(user_id=author, session_id=0), PageRequest())
        assert [n.type for n in page.items] == ["like", "follow"]
    finally:
        await sub.close()
        await pubsub.close()


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_an_event_delivered_twice_makes_one_timeline_entry(db: Database, backend: str) -> None:
    prefix = f"shtest:{secrets.token_hex(4)}:"
    client = client_from_url(REDIS_URL) if backend == "redis" else None
    timelines: Timelines = MemoryTimelines() if client is None else RedisTimelines(client, prefix)
    try:
        author, fan = await make_user(db, "au"), await make_user(db, "fan")
        async with db.transaction() as conn:
            await conn.execute("INSERT INTO follows (follower_id, followee_id) VALUES ($1, $2)", fan, author)
        posts = PostStore(db)
        cache = ReadCache(posts, MemoryPubSub(), "", max_posts=100, max_viewers=100)
        feed = FeedService(
            posts=posts,
            timelines=timelines,
            values=MemoryValues() if client is None else RedisValues(client, prefix),
            cache=cache,
        )
        await timelines.create(timeline_key(fan), [], TIMELINE_CAP, 3600)
        p1 = await db.fetchval("INSERT INTO posts (author_id, content) VALUES ($1, 'x') RETURNING id", author)
        p2 = await db.fetchval("INSERT INTO posts (author_id, content) VALUES ($1, 'y') RETURNING id", author)
        c1, c2, d1 = await envelopes_of(
            db, events.post_created(author, p1), events.post_created(author, p2), events.post_deleted(author, p1)
        )
        for envelope in (c1, c2, c1, c2):
            await feed.handle(envelope)
        assert await timelines.range(timeline_key(fan), None, 10) == [p2, p1]
        await feed.handle_batch([d1, d1])
        assert await timelines.range(timeline_key(fan), None, 10) == [p2]
    finally:
        if client is not None:
            await client.aclose()
