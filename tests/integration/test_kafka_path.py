"""The whole app with Kafka configured, against a real Kafka-protocol broker (tansu).

outbox -> "kafka-relay" -> Kafka topics -> consumer groups "feed" and "notifications".
Each test has a database of its own (so the relay starts at an empty outbox and every
count is exact), a broker of its own (a restart wipes tansu's in-memory storage, and
the app's consumer group names are fixed), Redis timelines (shared by two instances,
and readable here to tell a fan-out from GET /feed's read-time fallback, which finds a
followed author's posts in PostgreSQL while a timeline is short), and topics read back
with a plain aiokafka consumer. Deadlines are generous: tansu holds a JoinGroup for
about half the session timeout (5 s with the app's 10 s), and each rebalance costs one.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any, cast

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition

from socialhub.config import Settings, with_overrides
from tests.conftest import REDIS_URL, Account, fresh_database, running_app, signup
from tests.kafka_broker import TansuBroker

PARTITIONS = 3
# From a first consumer-group join (about 5 s on tansu) to a broker restart (the relay's
# and the sources' backoff, a rejoin, and a producer whose queued sends time out).
DEADLINE = 45.0
RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
async def own_database() -> AsyncIterator[str]:
    async with fresh_database("socialhub_kafka") as url:
        yield url


class Probe:
    """What the test looks at besides HTTP: the database, Redis timelines and the topics."""

    def __init__(self, settings: Settings, conn: asyncpg.Connection, redis: aioredis.Redis) -> None:
        self.settings = settings
        self.conn = conn
        self.redis = redis

    async def timeline(self, user_id: str) -> set[str]:
        """Post ids the feed consumer put into the user's Redis timeline."""
        key = f"{self.settings.redis.key_prefix}tl:tl:{user_id}"
        members = cast(list[bytes], await self.redis.zrange(key, 0, -1))
        return {str(int(m)) for m in members if m != b"-"}

    async def notifications(self) -> list[tuple[str, str, str, str | None]]:
        """Every notification as (user, type, actor, post)."""
        rows = await self.conn.fetch(
            "SELECT user_id::text, type, actor_id::text, post_id::text FROM notifications ORDER BY id"
        )
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    async def outbox(self) -> dict[str, asyncpg.Record]:
        rows = await self.conn.fetch("SELECT id::text, topic, key, type FROM outbox")
        return {r["id"]: r for r in rows}

    async def relay_position(self) -> tuple[int, int] | None:
        row = await self.conn.fetchrow(
            "SELECT xid::text::bigint AS xid, id FROM outbox_positions WHERE name = 'kafka-relay'"
        )
        return None if row is None else (row["xid"], row["id"])

    async def records(self, topic: str, count: int) -> list[Any]:
        """Every record on the Kafka topic, once at least `count` are there and no more come."""
        kc = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka.bootstrap_servers,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await kc.start()
        try:
            # Not necessarily kafka.partitions: the consumer groups may subscribe first,
            # and the broker then creates the topic with its own default.
            assert topic in await kc.topics(), f"no topic {topic}"
            kc.assign([TopicPartition(topic, p) for p in kc.partitions_for_topic(topic)])
            await kc.seek_to_beginning()
            records: list[Any] = []
            deadline = time.monotonic() + DEADLINE
            quiet_since = time.monotonic()
            # A duplicate would arrive with the rest; wait a little past the count for one.
            while len(records) < count or time.monotonic() - quiet_since < 0.5:
                assert time.monotonic() < deadline, f"{len(records)} of {count} records on {topic}"
                batch = await kc.getmany(timeout_ms=200)
                if batch:
                    quiet_since = time.monotonic()
                for part in batch.values():
                    records.extend(part)
            return records
        finally:
            await kc.stop()


@pytest.fixture
async def make_probe(own_database: str) -> AsyncIterator[Callable[[Settings], Probe]]:
    conn = await asyncpg.connect(own_database)
    r = aioredis.from_url(REDIS_URL)
    try:
        yield lambda settings: Probe(settings, conn, r)
    finally:
        await r.aclose()
        await conn.close()


def kafka_settings(make_settings: Callable[..., Settings], database_url: str, broker: TansuBroker) -> Settings:
    suffix = secrets.token_hex(3)
    return make_settings(
        redis=True,
        database={"url": database_url},
        kafka={
            "bootstrap_servers": broker.bootstrap,
            "posts_topic": f"posts-{suffix}",
            "users_topic": f"users-{suffix}",
            "partitions": PARTITIONS,
        },
    )


async def wait_until(check: Callable[[], Awaitable[bool]], what: str, seconds: float = DEADLINE) -> None:
    end = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {seconds}s waiting for {what}")
        await asyncio.sleep(0.05)


async def new_post(a: Account, content: str) -> str:
    r = await a.post("/posts/", json={"content": content})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def follow(a: Account, b: Account) -> None:
    r = await a.post(f"/users/follow/{b.id}")
    assert r.status_code == 200, r.text


async def feed_ids(a: Account, client: httpx.AsyncClient | None = None) -> set[str]:
    r = await (client or a.client).get("/feed", params={"limit": 100}, headers=a.headers)
    assert r.status_code == 200, r.text
    return {p["id"] for p in r.json()["items"]}


async def reader(client: httpx.AsyncClient) -> Account:
    """A user whose timeline exists (first GET /feed) and who counts as active for fan-out."""
    a = await signup(client)
    await feed_ids(a)
    return a


def post_notes(notes: list[tuple[str, str, str, str | None]], author: Account) -> Counter[str | None]:
    return Counter(post for user, kind, _, post in notes if kind == "post" and user == author.id)


async def test_a_post_and_a_follow_go_through_kafka_to_feed_notifications_and_topics(
    make_settings: Callable[..., Settings],
    own_database: str,
    private_kafka_broker: TansuBroker,
    make_probe: Callable[[Settings], Probe],
) -> None:
    settings = kafka_settings(make_settings, own_database, private_kafka_broker)
    probe = make_probe(settings)
    async with running_app(settings) as client:
        author, fan = await reader(client), await reader(client)
        await follow(fan, author)
        post_id = await new_post(author, "through kafka")
        r = await fan.post(f"/posts/like/{post_id}")
        assert r.status_code == 200, r.text
        r = await fan.post(f"/posts/comment/{post_id}", json={"content": "seen it"})
        assert r.status_code == 201, r.text
        comment_id = r.json()["id"]

        async def in_feed() -> bool:
            return post_id in await probe.timeline(fan.id) and post_id in await feed_ids(fan)

        await wait_until(in_feed, "the post in the follower's timeline and GET /feed")

        async def four_notes() -> bool:
            return len(await probe.notifications()) >= 4

        await wait_until(four_notes, "post, follow, like and comment notifications")
        await asyncio.sleep(0.3)
        assert sorted(await probe.notifications()) == sorted(
            [
                (author.id, "post", author.id, post_id),
                (author.id, "follow", fan.id, None),
                (author.id, "like", fan.id, post_id),
                (author.id, "comment", fan.id, post_id),
            ]
        )
        r = await author.get("/notify/notifications")
        assert r.status_code == 200, r.text
        assert sorted(n["type"] for n in r.json()["items"]) == ["comment", "follow", "like", "post"]
        outbox = await probe.outbox()

    posts = await probe.records(settings.kafka.posts_topic, 3)
    users = await probe.records(settings.kafka.users_topic, 1)
    values = {json.loads(r.value)["id"]: (r.key, json.loads(r.value)) for r in posts + users}
    assert len(values) == len(posts) + len(users) == len(outbox)  # each event once, no other
    for key, value in values.values():
        assert set(value) == {"id", "type", "occurred_at", "actor_id", "data"}, value
        assert value["id"] in outbox and RFC3339_MS.match(value["occurred_at"]), value
        assert key.decode() == outbox[value["id"]]["key"]
    by_type = {value["type"]: (key, value) for key, value in values.values()}
    assert {json.loads(r.value)["type"] for r in posts} == {"post.created", "like.created", "comment.created"}
    assert {json.loads(r.value)["type"] for r in users} == {"follow.created"}

    key, value = by_type["post.created"]
    assert key == post_id.encode()
    assert (value["actor_id"], value["data"]) == (author.id, {"post_id": post_id, "author_id": author.id})
    key, value = by_type["comment.created"]
    assert key == post_id.encode() and value["actor_id"] == fan.id
    assert value["data"] == {"post_id": post_id, "comment_id": comment_id, "post_author_id": author.id}
    key, value = by_type["like.created"]
    assert key == post_id.encode() and value["data"] == {"post_id": post_id, "post_author_id": author.id}
    key, value = by_type["follow.created"]
    assert key == fan.id.encode()  # the follower
    assert (value["actor_id"], value["data"]) == (fan.id, {"follower_id": fan.id, "followee_id": author.id})


async def test_posts_written_while_the_broker_is_down_reach_every_feed_once_it_is_back(
    make_settings: Callable[..., Settings],
    own_database: str,
    private_kafka_broker: TansuBroker,
    make_probe: Callable[[Settings], Probe],
) -> None:
    broker = private_kafka_broker
    # Short retries: an outage must delay events, never dead-letter them, however soon
    # a reader would give up on an event that fails on its own.
    fast_retries = {"retry_attempts": 2, "retry_backoff": "10ms", "retry_backoff_max": "20ms"}
    settings = with_overrides(kafka_settings(make_settings, own_database, broker), events=fast_retries)
    probe = make_probe(settings)
    async with running_app(settings) as client:
        author = await reader(client)
        fans = [await reader(client) for _ in range(3)]
        for fan in fans:
            await follow(fan, author)
        first = await new_post(author, "before the outage")

        async def everywhere(post_ids: list[str]) -> bool:
            for fan in fans:
                if not set(post_ids) <= await probe.timeline(fan.id):
                    return False
            return set(post_ids) <= set(post_notes(await probe.notifications(), author))

        # Everything so far is consumed: a restarted tansu comes back empty, so an event
        # still unread at the stop would be lost with it (Apache Kafka keeps its log).
        await wait_until(lambda: everywhere([first]), "the first post everywhere")
        relay_before = await probe.relay_position()

        await asyncio.to_thread(broker.stop)
        down = [await new_post(author, f"during the outage {i}") for i in range(8)]  # 201 each: the outbox takes them
        await asyncio.sleep(1.0)
        assert await probe.relay_position() == relay_before  # nothing went out
        for fan in fans:
            assert not set(down) & await probe.timeline(fan.id)

        await asyncio.to_thread(broker.start)
        after = await new_post(author, "after the outage")
        every = [first, *down, after]
        await wait_until(lambda: everywhere(every), "every post in every follower's timeline")
        await asyncio.sleep(0.5)  # a duplicate would show up now
        for fan in fans:
            assert set(every) <= await feed_ids(fan)
        notes = await probe.notifications()
        assert post_notes(notes, author) == Counter(every)  # each post's notification exactly once
        follows = Counter(actor for user, kind, actor, _ in notes if kind == "follow" and user == author.id)
        assert follows == Counter(f.id for f in fans)
        assert len(notes) == len(every) + len(fans)
        assert await probe.conn.fetchval("SELECT count(*) FROM dead_letters") == 0


async def test_two_instances_with_relays_publish_every_event_once_and_duplicate_no_effect(
    make_settings: Callable[..., Settings],
    own_database: str,
    private_kafka_broker: TansuBroker,
    make_probe: Callable[[Settings], Probe],
) -> None:
    settings = kafka_settings(make_settings, own_database, private_kafka_broker)
    probe = make_probe(settings)
    async with AsyncExitStack() as stack:
        # Instance one has a stack of its own, so that it can stop while two goes on.
        one_stack = AsyncExitStack()
        stack.push_async_exit(one_stack)
        one = await one_stack.enter_async_context(running_app(settings))
        two = await stack.enter_async_context(running_app(settings))
        instances = [one, two]

        authors = [await reader(one), await reader(two)]
        fans = [await reader(instances[i % 2]) for i in range(4)]
        for i, fan in enumerate(fans):
            for author in authors:
                await follow(on(fan, instances[(i + 1) % 2]), author)
        posts = [await new_post(on(authors[i % 2], instances[i // 2 % 2]), f"post {i}") for i in range(6)]

        async def everywhere(post_ids: list[str]) -> bool:
            for fan in fans:
                if not set(post_ids) <= await probe.timeline(fan.id):
                    return False
            notes = await probe.notifications()
            return {post for _, kind, _, post in notes if kind == "post"} >= set(post_ids)

        await wait_until(lambda: everywhere(posts), "every post in every timeline, with both instances up")
        for fan in fans:
            for instance in instances:
                assert set(posts) <= await feed_ids(fan, instance)

        # The first instance (whose relay took the lock first) stops; two's relay and
        # consumer-group members take over.
        await one_stack.aclose()
        late = [await new_post(on(authors[i % 2], two), f"late post {i}") for i in range(4)]
        await wait_until(lambda: everywhere(posts + late), "the posts written after instance one stopped")
        await asyncio.sleep(0.5)  # a duplicate would show up now
    notes = await probe.notifications()
    assert Counter(post for _, kind, _, post in notes if kind == "post") == Counter(posts + late)
    follows = Counter((user, actor) for user, kind, actor, _ in notes if kind == "follow")
    assert follows == Counter((a.id, f.id) for a in authors for f in fans)
    assert len(notes) == len(posts) + len(late) + len(follows)

    outbox = await probe.outbox()
    published = [
        json.loads(r.value)["id"]
        for topic, n in ((settings.kafka.posts_topic, len(posts + late)), (settings.kafka.users_topic, len(follows)))
        for r in await probe.records(topic, n)
    ]
    # Two relays, one outbox: every event went out, and (both stopping cleanly) only once.
    assert Counter(published) == Counter(list(outbox))


def on(a: Account, client: httpx.AsyncClient) -> Account:
    """The same signed-in user, talking to another instance."""
    body = {"username": a.username, "email": a.email, "password": a.password}
    return Account(client, body, {"user": {"id": a.id}, "token": a.token, "refresh_token": a.refresh_token})
